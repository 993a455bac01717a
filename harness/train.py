"""Train one run: its method's stages, epoch by epoch, checkpointed and resumable.

``train_run`` is the whole life of a run (load data and split, build the model,
resume from ``checkpoint.pt`` if there is one, run the remaining epochs of the
remaining stages, evaluate, write the record); ``train_one_epoch`` is one pass.
After every epoch the checkpoint holds the model, optimizer, scheduler, method
state, every RNG state and the history rows, written atomically; the data order
and augmentation of an epoch are seeded from (train seed, stage, epoch). A run
killed at any moment and started again therefore ends bit-identical on CPU.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import math
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import distributed
from harness.data import (
    Dataset,
    Split,
    augment_batch,
    center_crop_batches,
    cycled_batches,
    epoch_batches,
    load_batches,
    load_dataset,
    load_or_store_split,
    normalize,
)
from harness.errors import UsageError
from harness.evaluate import TOPK, error_rates, predict_topk
from harness.lock import RunLock, holder_text
from harness.method import Batch, Method, Stage, get_method
from harness.models import VGG, build_encoder
from harness.plan import RunSpec
from harness.seeding import rng_state, seed_everything, set_rng_state, torch_generator
from harness.store import (
    RunRecord,
    atomic_torch_save,
    load_weights,
    run_record,
    targets_key,
    topk_key,
)

CHECKPOINT_VERSION = 2


def resolve_device(name: str) -> torch.device:
    """cpu or cuda; under DDP, this process's own GPU (``LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device")
    if name == "cuda":
        return torch.device("cuda", distributed.init_from_env(cuda=True).local_rank)
    distributed.init_from_env(cuda=False)
    return torch.device(name)


@dataclass
class Context:
    """What every step of one run needs: settings, data, split, device."""

    cfg: DictConfig
    spec: RunSpec
    dataset: Dataset
    split: Split
    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    place: distributed.World = distributed.World()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def draws_pool(self, stage: Stage) -> bool:
        """Whether ``stage`` draws a second batch from the unlabeled pool. With every
        image labeled (the paper's ImageNet setting) there is no pool: a stage that
        uses it reconstructs the labeled batch itself, as in the paper, and reads as
        many images per step as the baseline."""
        return stage.unlabeled and len(self.split.unlabeled) > 0

    def prepare(
        self, images: torch.Tensor, generator: torch.Generator, full: int | None = None
    ) -> torch.Tensor:
        """uint8 batch (this rank's shard of a ``full``-image batch) -> augmented,
        normalized float batch on the device."""
        images = images.to(self.device, non_blocking=True)
        images = augment_batch(
            images,
            self.cfg.data.crop,
            self.cfg.data.hflip,
            generator,
            full=full,
            rank=self.place.rank,
            world=self.place.size,
        )
        images = normalize(images, self.mean, self.std)
        if self.cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def steps_per_epoch(ctx: Context, stage: Stage) -> int:
    """``schedule.<stage>.steps`` if set, else one pass over the stage's data (the pool,
    for stages that draw from it). A set ``steps`` makes stages of different methods equally
    long: the baseline's labeled-only fine-tune as long as the decoders' joint one."""
    steps = ctx.cfg.schedule[stage.name].steps
    if steps > 0:
        return steps
    if ctx.draws_pool(stage):
        return math.ceil(len(ctx.split.unlabeled) / ctx.cfg.optim.unlabeled_batch_size)
    return math.ceil(len(ctx.split.labeled) / ctx.cfg.optim.batch_size)


def _epoch_indices(
    ctx: Context, indices: np.ndarray, batch_size: int, stage: Stage, epoch: int
) -> list[np.ndarray]:
    """An epoch's batches of ``indices``: a shuffled pass, or exactly ``steps`` batches
    cycled over fresh permutations when the stage sets ``steps``."""
    seed = ctx.spec.train_seed
    steps = ctx.cfg.schedule[stage.name].steps
    if steps > 0:
        cycled = cycled_batches(indices, batch_size, seed, stage.name, epoch)
        batches = list(itertools.islice(cycled, steps))
    else:
        batches = epoch_batches(indices, batch_size, seed, stage.name, epoch)
    return distributed.trim_for_world(batches, ctx.place)


@dataclass
class ImagesRead:
    """Images a stage loaded in one epoch, by role (``history.csv``): the record that
    every method of a comparison did the same work per step."""

    labeled: int = 0
    unlabeled: int = 0


def stage_batches(
    ctx: Context, method: Method, stage: Stage, epoch: int, read: ImagesRead | None = None
) -> Iterator[Batch]:
    """The batches of one epoch of ``stage``, a pure function of (seed, stage, epoch).

    A stage that draws from the unlabeled pool iterates over the pool and cycles
    the labeled subset beside it; unlabeled labels never leave this function.
    Without a pool (every image labeled) such a stage gets the labeled batch alone.
    Under DDP each rank loads its shard of every batch (``distributed.shard``) and
    the batch carries the share that weights its gradient. ``read`` counts the
    images loaded (whole batches, over all ranks).
    """
    seed = ctx.spec.train_seed
    generator = torch_generator("augment", seed, stage.name, epoch)
    train, cfg = ctx.dataset.train, ctx.cfg
    read = read if read is not None else ImagesRead()

    def load(batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shards = [distributed.shard(b, ctx.place) for b in batches]
        return load_batches(train, shards, cfg.data.resize, cfg.data.num_workers, ctx.cuda)

    def share(full: np.ndarray) -> float:
        return ctx.place.size * len(distributed.shard(full, ctx.place)) / len(full)

    if not ctx.draws_pool(stage):
        batches = _epoch_indices(ctx, ctx.split.labeled, cfg.optim.batch_size, stage, epoch)
        for full, (x, y) in zip(batches, load(batches), strict=True):
            read.labeled += len(full)
            x = ctx.prepare(x, generator, len(full))
            if stage.labeled:
                yield Batch(x=x, y=y.to(ctx.device, non_blocking=True), share=share(full))
            else:  # a pool-only stage without a pool: the labeled images, labels hidden
                rest = [ctx.prepare(x, generator, len(full)) for _ in range(method.views - 1)]
                yield Batch(u=[x, *rest], share=share(full))
        return
    pool = _epoch_indices(ctx, ctx.split.unlabeled, cfg.optim.unlabeled_batch_size, stage, epoch)
    labeled = None
    if stage.labeled:
        cycled = cycled_batches(
            ctx.split.labeled, cfg.optim.batch_size, seed, stage.name, epoch, "x"
        )
        labeled = load(list(itertools.islice(cycled, len(pool))))
    for full, (u, _hidden_labels) in zip(pool, load(pool), strict=True):
        read.unlabeled += len(full)
        views = [ctx.prepare(u, generator, len(full)) for _ in range(method.views)]
        batch = Batch(u=views, share=share(full))
        if labeled is not None:
            x, y = next(labeled)
            read.labeled += cfg.optim.batch_size
            x = ctx.prepare(x, generator, cfg.optim.batch_size)
            batch.x, batch.y = x, y.to(ctx.device, non_blocking=True)
        yield batch
    if labeled is not None:
        next(labeled, None)  # runs the stream to its end, which frees an FFCV loader


class StageLoss(torch.nn.Module):
    """A method's loss in one stage as a module's forward, so DistributedDataParallel can
    wrap it: methods call the model's parts (encoder, decoder) directly, which DDP
    would not see if it wrapped the model alone."""

    def __init__(self, model: torch.nn.Module, method: Method, stage: Stage):
        super().__init__()
        self.model, self.method, self.stage = model, method, stage

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.method.loss(self.model, self.stage, batch)


class NonFiniteLoss(RuntimeError):
    """A loss term went NaN or infinite: the run fails at once (a run that trained on
    NaN would otherwise end "done" with chance-level error). ``details`` goes into
    ``failed.json``."""

    def __init__(self, step: int, terms: dict[str, float]):
        # "nan", "inf" as text: failed.json stays valid JSON
        shown_terms = {k: v if math.isfinite(v) else str(v) for k, v in terms.items()}
        self.details: dict[str, Any] = {"step": step, "loss": shown_terms}
        shown = ", ".join(f"{k}={v!r}" for k, v in terms.items())
        super().__init__(f"non-finite loss at step {step}: {shown}")


def _finite_flag(loss: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Whether ``loss`` is finite, as a CPU tensor filled asynchronously on CUDA, and
    the event that says when it is filled (None on the CPU)."""
    finite = torch.isfinite(loss.detach())
    if finite.device.type != "cuda":
        return finite, None
    finite = finite.to("cpu", non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return finite, event


def _check_finite(pending: tuple[int, dict[str, torch.Tensor], torch.Tensor, Any] | None) -> None:
    """Raise if the loss of an earlier step (``pending``: step, terms, finite flag and
    its event) was not finite. The flag is read a step late, waiting only for the
    work queued before it, so the check never drains a GPU's queue."""
    if pending is None:
        return
    step, terms, finite, event = pending
    if event is not None:
        event.synchronize()
    if not bool(finite):
        raise NonFiniteLoss(step, {k: float(v) for k, v in terms.items()})


def train_one_epoch(
    model: torch.nn.Module,
    method: Method,
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Iterator[Batch],
    *,
    amp: bool,
    grad_clip: float,
    progress: tqdm | None = None,
    loss_module: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns the mean of each loss term (this rank's).
    Raises ``NonFiniteLoss`` (numbering steps from 1) where a loss is NaN or infinite."""
    loss_module = loss_module or StageLoss(model, method, stage)
    model.train()
    logged: list[dict[str, torch.Tensor]] = []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device_type = next(model.parameters()).device.type
    pending = None
    for step, batch in enumerate(batches, start=1):
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if amp else nullcontext()
        with autocast:
            terms = loss_module(batch)
        loss = sum(terms.values())
        detached = {key: value.detach() for key, value in terms.items()}
        finite, event = _finite_flag(loss)
        _check_finite(pending)
        pending = (step, detached, finite, event)
        if batch.share != 1.0:
            loss = loss * batch.share
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        method.after_step(model, stage)
        logged.append(detached)
        if progress is not None:
            progress.update(1)
    _check_finite(pending)
    # reduced once per epoch: no device sync (and no extra op) per step
    return {
        key: torch.stack([t[key] for t in logged]).float().mean().item()
        for key in (logged[0] if logged else {})
    }


def make_optimizer(cfg: DictConfig, params: Any, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optim.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )


def make_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: cosine from 1 to 0 over the stage, or constant."""
    if cfg.optim.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )


def set_trainable(model: torch.nn.Module, method: Method, stage: Stage) -> list[torch.nn.Parameter]:
    """Freeze everything but the stage's parameter group; return that group."""
    trainable = list(method.parameters(model, stage))
    chosen = {id(p) for p in trainable}
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    return trainable


def evaluate_split(ctx: Context, classifier: VGG, part: str, dense: bool) -> np.ndarray:
    """Top-k of every image of ``part``, in order; under DDP each rank predicts every
    world-th image and the rows are gathered, so each image counts exactly once."""
    images = ctx.dataset.train if part == "train" else ctx.dataset.val
    indices = ctx.split.labeled if part == "train" else np.arange(len(images))
    cfg = ctx.cfg
    local = predict_topk(
        classifier,
        images,
        distributed.shard(indices, ctx.place),
        dense=dense,
        crop=cfg.data.crop,
        resize=cfg.data.resize,
        k=TOPK,
        batch_size=cfg.eval.batch_size,
        mean=ctx.mean,
        std=ctx.std,
        device=ctx.device,
        num_workers=cfg.data.num_workers,
        channels_last=ctx.cuda,
    )
    return distributed.gather_rows(local, len(indices), ctx.place)


def final_metrics(ctx: Context, classifier: VGG, record: RunRecord) -> dict[str, float]:
    """Top-1/top-k error on train (the labeled subset) and val, single crop, and on val
    dense.

    Every evaluation's per-example top-k goes to ``predictions.npz`` with the
    targets, so the report can pair a method with the baseline image by image.
    """
    metrics: dict[str, float] = {}
    targets = {
        "val": ctx.dataset.val.targets,
        "train": ctx.dataset.train.targets[ctx.split.labeled],
    }
    arrays = {targets_key(part): targets[part] for part in ("train", "val")}
    # the paper's table: single crop on train and val, dense on val only (a dense pass
    # over the training set would cost a whole epoch on ImageNet for nothing reported)
    for dense, part in ((False, "train"), (False, "val"), (True, "val")):
        prefix = "dense_" if dense else ""
        topk = evaluate_split(ctx, classifier, part, dense)
        top1, top5 = error_rates(topk, targets[part])
        metrics[f"{prefix}top1_{part}"] = top1
        metrics[f"{prefix}top5_{part}"] = top5
        arrays[topk_key(part, dense)] = topk
    if ctx.place.is_main:
        record.write_predictions(arrays)
    return metrics


def _checkpoint(model, method, stage_index, epoch, optimizer, scheduler, history, seconds) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "stage_index": stage_index,
        "epoch": epoch,
        "seconds": seconds,  # training time of all attempts up to this checkpoint
        "model": model.state_dict(),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "rng": rng_state(cuda=next(model.parameters()).is_cuda),
        "history": history,
    }


@dataclass(frozen=True)
class RunResult:
    """How one call of ``train_run`` ended: ``done`` (now or before), ``failed`` (the
    error is in the run's ``failed.json``) or ``skipped`` (another process holds it)."""

    status: str
    metrics: dict[str, Any]
    message: str = ""


def train_run(spec: RunSpec, cfg: DictConfig) -> RunResult:
    """Run (or resume, or skip) one run under its lock.

    A run another process holds is skipped with a message naming the holder. An
    exception is recorded in the run's ``failed.json`` (error, traceback, and for a
    non-finite loss the stage, epoch, step and loss terms) and returned as a failed
    result, so a launcher can go on with the other runs; under DDP it is raised
    again (the job ends: ranks that went on could no longer agree on their
    collectives). An interrupt is not a failure (the run resumes): it propagates.
    """
    record = run_record(cfg.results, spec.suite, spec.run_id)
    if record.is_done() and not distributed.world_size_from_env() > 1:
        return RunResult("done", record.read_metrics(), "already done")
    device = resolve_device(cfg.device)  # joins the process group under DDP
    place = distributed.world()
    lock = RunLock(record.path)
    try:
        # rank 0 decides for all: every rank must take the same path
        state = "train"
        if place.is_main:
            if record.is_done():
                state = "done"
            elif not lock.acquire():
                state = "held"
            elif record.is_done():  # finished by another process just before we locked
                state = "done"
        state = distributed.broadcast_choice(state, ("train", "done", "held"), place)
        if state == "done":
            return RunResult("done", record.read_metrics(), "already done")
        if state == "held":
            return RunResult(
                "skipped",
                {},
                f"run {spec.run_id} ({spec.describe()}) skipped: "
                f"{holder_text(lock.holder)} is training it",
            )
        try:
            return RunResult("done", _train_run(spec, cfg, record, device, place))
        except Exception as error:  # an interrupt is not a failure: the run resumes
            if place.is_main:
                record.write_failure(error, traceback.format_exc())
            if place.active:
                # ranks may fail apart (a NaN in one shard, a write only rank 0 makes):
                # a rank that went on would pair its next collective with another run's.
                # End the process; torchrun / srun --kill-on-bad-exit end the others
                raise
            return RunResult(
                "failed",
                {},
                f"run {spec.run_id} ({spec.describe()}) failed: {type(error).__name__}: "
                f"{error} (traceback: {record.failure_file})",
            )
    finally:
        lock.release()


def provenance(device: torch.device, place: distributed.World) -> dict:
    """Where and with what one attempt ran (``config.yaml``'s ``attempts``)."""
    cuda = device.type == "cuda"
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "harness": _harness_version(),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "world_size": place.size,
        "slurm_job": os.environ.get("SLURM_JOB_ID") or None,
    }


def _harness_version() -> str:
    try:
        return importlib.metadata.version("ssl-harness")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    """The commit of the checkout the harness runs from (None outside one), with
    ``-dirty`` where tracked files differ from it."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        top, _, head = commit.stdout.strip().partition("\n")
        # an installed copy may lie inside some other checkout (a venv in a repo)
        if commit.returncode != 0 or Path(top).resolve() != source:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty.stdout.strip() else "")


def _train_run(
    spec: RunSpec,
    cfg: DictConfig,
    record: RunRecord,
    device: torch.device,
    place: distributed.World,
) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    for key in ("batch_size", "unlabeled_batch_size"):
        if place.active and cfg.optim[key] < place.size:
            raise UsageError(
                f"optim.{key}={cfg.optim[key]} cannot be shared by {place.size} "
                f"processes; valid: at least {place.size}"
            )
    dataset = load_dataset(cfg.data)
    split = load_or_store_split(
        Path(cfg.results), dataset, spec.labels, spec.split_seed, store=place.is_main
    )
    main = place.is_main
    if record.config_file.exists():
        stored = record.read_config()
        recorded = stored.get("split_hash")
        if recorded != split.content_hash:
            raise UsageError(
                f"run {spec.run_id} was started on split {recorded}, but the split is now "
                f"{split.content_hash} (did the data change?); refusing to resume on other images"
            )
    else:
        stored = {
            "run": spec.__dict__ | {"reuses": [list(pair) for pair in spec.reuses]},
            "split_hash": split.content_hash,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "attempts": [],
        }
    if main:
        stored["attempts"] = [*stored.get("attempts", []), provenance(device, place)]
        record.write_config(stored)
    ctx = Context(
        cfg,
        spec,
        dataset,
        split,
        device,
        torch.tensor(dataset.mean, device=device),
        torch.tensor(dataset.std, device=device),
        place,
    )
    method = get_method(spec.method)(cfg)
    seed_everything("init", spec.train_seed)
    encoder = build_encoder(
        cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop, cfg.model.dropout
    )
    model = method.build_model(encoder, dataset).to(device)
    if ctx.cuda:
        model = model.to(memory_format=torch.channels_last)
    stages = method.stages()
    checkpoint = record.load_checkpoint()
    history: list[dict[str, Any]] = []
    start_stage, start_epoch = 0, 0
    clock = Clock()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        method.load_state_dict(checkpoint["method"])
        history = checkpoint["history"]
        start_stage, start_epoch = checkpoint["stage_index"], checkpoint["epoch"]
        clock = Clock(checkpoint.get("seconds", 0.0))
        names = [stage.name for stage in stages]
        where = (
            f"stage {names[start_stage]} after epoch {start_epoch}"
            if start_stage < len(names)
            else "the final evaluation"
        )
        if main:
            print(f"run {spec.run_id}: resuming from its checkpoint at {where}", file=sys.stderr)
            # killed between checkpoint and CSV: the CSV may lack the last row
            record.write_history(history)
    for index, stage in enumerate(stages):
        if index < start_stage:
            continue
        source = _stage_source(ctx, stage)
        if source is not None:
            _classifier(model).load_state_dict(load_weights(source, map_location=device))
        else:
            resume = checkpoint if index == start_stage and start_epoch > 0 else None
            _run_stage(ctx, record, model, method, index, stage, resume, history, clock)
        if main:
            atomic_torch_save(model.state_dict(), record.stage_file(stage.name))
            record.save_checkpoint(
                _checkpoint(model, method, index + 1, 0, None, None, history, clock.total())
            )
    metrics = final_metrics(ctx, _classifier(model), record)
    metrics |= method.val_report(
        model,
        val_crops(ctx),
        record.path if main else None,
        reduce=lambda sums: distributed.sum_over_ranks(sums, place),
    )
    if not main:
        return metrics
    metrics |= {
        "seconds": round(clock.total(), 3),
        "labeled": int(len(split.labeled)),
        "unlabeled": int(len(split.unlabeled)),
        "split_hash": split.content_hash,
        "epochs": len(history),
    }
    record.write_metrics(metrics)
    return metrics


class Clock:
    """Seconds a run has trained and evaluated, over all its attempts: the checkpoint
    carries the total so far; a killed attempt loses only its unfinished epoch."""

    def __init__(self, before: float = 0.0):
        self.before, self.start = before, time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start


def _stage_source(ctx: Context, stage: Stage) -> Path | None:
    """The weights file a stage is taken from instead of trained, if any.

    ``model.pretrained`` for the stage that initializes the classifier (step 1),
    else the same stage of the run named in ``spec.reuses`` (which the plan ran first).
    """
    if stage.initializes and ctx.cfg.model.pretrained:
        return Path(ctx.cfg.model.pretrained)
    source_id = dict(ctx.spec.reuses).get(stage.name)
    if source_id is None:
        return None
    path = run_record(ctx.cfg.results, ctx.spec.suite, source_id).stage_file(stage.name)
    if not path.is_file():
        raise UsageError(
            f"run {ctx.spec.run_id} ({ctx.spec.describe()}) starts stage {stage.name!r} from "
            f"run {source_id}, which has not finished it ({path} is missing)"
        )
    return path


def val_crops(ctx: Context) -> Iterator[torch.Tensor]:
    """The val set as normalized center crops, in eval-sized batches, on the device:
    under DDP this rank's contiguous block of it (rank 0's holds the first images)."""
    cfg, val = ctx.cfg, ctx.dataset.val
    for x in center_crop_batches(
        val,
        distributed.block(np.arange(len(val)), ctx.place),
        cfg.eval.batch_size,
        cfg.data.resize,
        cfg.data.crop,
        ctx.mean,
        ctx.std,
        ctx.device,
        cfg.data.num_workers,
    ):
        yield x.contiguous(memory_format=torch.channels_last) if ctx.cuda else x


def _run_stage(
    ctx: Context,
    record: RunRecord,
    model: torch.nn.Module,
    method: Method,
    index: int,
    stage: Stage,
    resume: dict[str, Any] | None,
    history: list[dict[str, Any]],
    clock: Clock,
) -> None:
    cfg, spec = ctx.cfg, ctx.spec
    schedule = cfg.schedule[stage.name]
    if schedule.epochs == 0:
        return
    params = set_trainable(model, method, stage)
    optimizer = make_optimizer(cfg, params, schedule.lr)
    per_epoch = steps_per_epoch(ctx, stage)
    scheduler = make_scheduler(cfg, optimizer, per_epoch * schedule.epochs)
    first_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        first_epoch = resume["epoch"]
    classifier = _classifier(model)
    # a stage that trains only other parts (a decoder) cannot change val error
    classifier_trains = any(p.requires_grad for p in classifier.parameters())
    loss_module: torch.nn.Module = StageLoss(model, method, stage)
    if ctx.place.active:
        devices = [ctx.device.index] if ctx.cuda else None
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=devices)
    main = ctx.place.is_main
    bar = tqdm(
        total=per_epoch * schedule.epochs,
        initial=per_epoch * first_epoch,
        desc=f"{spec.describe()} [{stage.name}]",
        unit="step",
        leave=False,
        disable=not cfg.progress or not main,
        dynamic_ncols=True,
    )
    for epoch in range(first_epoch, schedule.epochs):
        # Global RNG streams (dropout, a method's own draws) restart from a seed of
        # (run, stage, epoch): an epoch computes the same whatever ran before it.
        # Under DDP each rank draws its own dropout masks.
        rank = (ctx.place.rank,) if ctx.place.active else ()
        seed_everything("epoch", spec.train_seed, stage.name, epoch, *rank)
        tic = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        read = ImagesRead()
        try:
            terms = train_one_epoch(
                model,
                method,
                stage,
                optimizer,
                scheduler,
                stage_batches(ctx, method, stage, epoch, read),
                amp=ctx.cuda,
                grad_clip=cfg.optim.grad_clip,
                progress=bar,
                loss_module=loss_module,
            )
        except NonFiniteLoss as error:
            error.details = {"stage": stage.name, "epoch": epoch + 1, **error.details}
            raise
        terms = distributed.mean_over_ranks(terms, ctx.place)
        row: dict[str, Any] = {"stage": stage.name, "epoch": epoch + 1, "lr": lr}
        row |= {"images_labeled": read.labeled, "images_unlabeled": read.unlabeled}
        row |= {f"loss_{key}": value for key, value in terms.items()}
        last = epoch + 1 == schedule.epochs
        every = schedule.eval_every or cfg.eval.every
        if classifier_trains and ((epoch + 1) % every == 0 or last):
            top1, top5 = error_rates(
                evaluate_split(ctx, classifier, "val", dense=False), ctx.dataset.val.targets
            )
            row |= {"top1_val": top1, "top5_val": top5}
            bar.set_postfix(loss=f"{sum(terms.values()):.3f}", val_top1=f"{top1:.1f}")
        row["seconds"] = round(time.perf_counter() - tic, 3)
        history.append(row)
        if main:
            record.save_checkpoint(
                _checkpoint(
                    model, method, index, epoch + 1, optimizer, scheduler, history, clock.total()
                )
            )
            record.write_history(history)
    bar.close()


def _classifier(model: torch.nn.Module) -> VGG:
    """The encoder+head inside a method's model (the model itself for the baseline)."""
    if isinstance(model, VGG):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, VGG):
        raise TypeError("a method's model must be a VGG or expose it as `.encoder`")
    return encoder
