"""The training loop: one stage epoch by epoch (``run_stage``), one epoch step by step
(``train_one_epoch``), and the optimizer, schedule and frozen parts they use.

After every epoch the checkpoint holds the model, optimizer, scheduler, method
state, every RNG state and the history rows, written atomically; the data order
and augmentation of an epoch are seeded from (train seed, stage, epoch), and the
global RNGs restart from a seed of (run, stage, epoch). A run killed at any
moment and started again therefore ends bit-identical on CPU. A loss term that is
NaN or infinite fails the run at once (``NonFiniteLoss``).

Each step's loss terms, learning rate and the scalars the method logs
(``Method.log_scalar``) are kept as they are (``StepScalars``) and handed to the
run's ``RunLog`` once per epoch (``harness.engine.loggers``): per-step curves
without a device sync per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from harness.engine import distributed
from harness.engine.batches import ImagesRead, stage_batches, steps_per_epoch
from harness.engine.batchnorm import recompute_statistics
from harness.engine.checkpoint import checkpoint_state, save_checkpoint
from harness.engine.context import Context
from harness.engine.evaluate import error_rates, evaluate_split, part_targets
from harness.engine.loggers import RunLog, StepScalars
from harness.engine.provenance import Clock
from harness.method import Batch, Method, Stage
from harness.models import classifier_of
from harness.seeding import seed_everything, set_rng_state
from harness.store import RunRecord


class StageLoss(torch.nn.Module):
    """A method's loss in one stage as a module's forward, so DistributedDataParallel can
    wrap it: methods call the model's parts (its encoder, a head of their own) directly, which DDP
    would not see if it wrapped the model alone."""

    def __init__(self, model: torch.nn.Module, method: Method, stage: Stage):
        super().__init__()
        self.model, self.method, self.stage = model, method, stage

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.method.loss(self.model, self.stage, batch)


def step_module(
    model: torch.nn.Module,
    method: Method,
    stage: Stage,
    *,
    place: distributed.World | None = None,
    device: torch.device | None = None,
    compile: bool = False,
) -> torch.nn.Module:
    """The module whose forward is one training step's loss terms: ``StageLoss``, in
    DistributedDataParallel under several processes, and ``torch.compile``d where
    ``compile`` is set (the suite's ``compile`` key).

    Only this wrapper is compiled, never ``model``: a compiled module's ``state_dict``
    keys carry an ``_orig_mod.`` prefix, so compiling the model would make checkpoints
    and stage files of compiled runs unreadable by plain ones; this way they hold the
    same keys either way, evaluation runs the model as it is, and the method's own
    loss code (its own heads' terms, a consistency cost) is compiled with the network.
    """
    module: torch.nn.Module = StageLoss(model, method, stage)
    if place is not None and place.active:
        on_cuda = device is not None and device.type == "cuda"
        devices = [device.index] if on_cuda else None
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=devices)
    if compile:
        # each stage compiles afresh: its trained parameters and its loss differ from the
        # last stage's, and dynamo caches per code object (StageLoss.forward), so the
        # stages of the runs sharing a process (launcher=inprocess) would pile up
        # recompiles past dynamo's limit and silently fall back to eager
        torch.compiler.reset()
        module = torch.compile(module)
    return module


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
    steps: StepScalars | None = None,
    first_step: int = 0,
    total_steps: int | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns the mean of each loss term (this rank's).
    Raises ``NonFiniteLoss`` (numbering steps from 1) where a loss is NaN or infinite.
    ``steps``, if given, receives every step's terms, learning rate and the scalars
    the method logged (detached, unread: no sync). Each batch is told its step in
    the stage (``first_step`` + its index) and the stage's ``total_steps``, for a
    method's ramps; ``amp`` autocasts to bf16 unless the method's precision is fp32."""
    if loss_module is None:  # not `or`: a compiled module refuses len(), hence bool()
        loss_module = StageLoss(model, method, stage)
    model.train()
    logged: list[dict[str, torch.Tensor]] = []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device_type = next(model.parameters()).device.type
    pending = None
    amp = amp and method.precision == "bf16"
    method.pop_scalars()  # logged outside a step (at evaluation): not this epoch's
    for step, batch in enumerate(batches, start=1):
        batch.step = first_step + step - 1
        if total_steps is not None:
            batch.total_steps = total_steps
        lr = optimizer.param_groups[0]["lr"]  # this step's, before the scheduler moves it
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
        method.after_step(model, stage, batch)
        extras = method.pop_scalars()
        logged.append(detached)
        if steps is not None:
            steps.add(lr, detached, extras)
        if progress is not None:
            progress.update(1)
    _check_finite(pending)
    # reduced once per epoch: no device sync (and no extra op) per step
    return {
        key: torch.stack([t[key] for t in logged]).float().mean().item()
        for key in (logged[0] if logged else {})
    }


def make_optimizer(cfg: DictConfig, params: Any, lr: float) -> torch.optim.Optimizer:
    """The stage's optimizer over the trainable ``params``. With ``optim.decay_on=weights``
    weight decay reaches only the parameters of two or more dimensions (conv and linear
    weights): decaying batch-norm scales and biases toward zero is what the FixMatch
    reference avoids (it decays 'kernel' variables only)."""
    params = [p for p in params if p.requires_grad]
    decay = cfg.optim.weight_decay
    groups: list[dict[str, Any]] = [{"params": params, "weight_decay": decay}]
    if cfg.optim.decay_on == "weights":
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups = [group for group in groups if group["params"]] or groups[:1]
    if cfg.optim.name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(
        groups, lr=lr, momentum=cfg.optim.momentum, nesterov=bool(cfg.optim.nesterov)
    )


def make_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, per_epoch: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: cosine from 1 to 0 over the stage, cos(7πk/16K) at step k
    of K (``cosine_7_16``, FixMatch's), constant, constant and then linear to 0 over
    the last third (``linear_last_third``), or ``optim.lr_decay`` to the power of the
    epochs done (``exponential``: the rate multiplied by it after each epoch), which
    needs the stage's steps ``per_epoch``."""
    if cfg.optim.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.optim.lr_schedule == "exponential":
        if per_epoch < 1:
            raise ValueError(f"lr_schedule=exponential needs the steps per epoch, got {per_epoch}")
        decay = cfg.optim.lr_decay
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: decay ** (step // per_epoch)
        )
    total = max(total_steps, 1)
    if cfg.optim.lr_schedule == "cosine_7_16":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: math.cos(7 * math.pi * min(step, total) / (16 * total))
        )
    if cfg.optim.lr_schedule == "linear_last_third":
        decay = max(total // 3, 1)  # the last third's steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, max(0.0, (total - step) / decay))
        )
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


def run_stage(
    ctx: Context,
    record: RunRecord,
    model: torch.nn.Module,
    method: Method,
    index: int,
    stage: Stage,
    resume: dict[str, Any] | None,
    history: list[dict[str, Any]],
    clock: Clock,
    log: RunLog,
    final: bool = False,
) -> None:
    """Train ``stage`` epoch by epoch (from ``resume``'s epoch on), appending a row per
    epoch to ``history``, and to ``log`` its steps and val errors; after each epoch,
    rank 0 writes the checkpoint and history.csv. In the run's ``final`` trained stage,
    ``eval.bn_recompute`` recomputes the batch-norm statistics after the last epoch's
    steps, before its evaluation and checkpoint: the final model is the one the
    history's last evaluation and the report's error columns read."""
    cfg, spec = ctx.cfg, ctx.spec
    schedule = cfg.schedule[stage.name]
    if schedule.epochs == 0:
        return
    params = set_trainable(model, method, stage)
    optimizer = make_optimizer(cfg, params, schedule.lr)
    per_epoch = steps_per_epoch(ctx, stage)
    scheduler = make_scheduler(cfg, optimizer, per_epoch * schedule.epochs, per_epoch)
    first_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        first_epoch = resume["epoch"]
    # a stage that trains only other parts (a method's own head) cannot change val error
    classifier_trains = any(p.requires_grad for p in classifier_of(model).parameters())
    loss_module = step_module(
        model, method, stage, place=ctx.place, device=ctx.device, compile=cfg.compile
    )
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
        steps = StepScalars()
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
                steps=steps,
                first_step=epoch * per_epoch,
                total_steps=per_epoch * schedule.epochs,
            )
        except NonFiniteLoss as error:
            error.details = {"stage": stage.name, "epoch": epoch + 1, **error.details}
            raise
        last = epoch + 1 == schedule.epochs
        if final and last and cfg.eval.bn_recompute:
            recompute_statistics(ctx, method.eval_model(model), method)
        terms = distributed.mean_over_ranks(terms, ctx.place)
        log.train_steps(steps)
        # step: the run's steps so far (all stages), the x axis of its TensorBoard curves
        row: dict[str, Any] = {"stage": stage.name, "epoch": epoch + 1, "step": log.step}
        row["lr"] = lr
        row |= {"images_labeled": read.labeled, "images_unlabeled": read.unlabeled}
        row |= {f"loss_{key}": value for key, value in terms.items()}
        every = schedule.eval_every or cfg.eval.every
        if classifier_trains and ((epoch + 1) % every == 0 or last):
            top1, top5 = error_rates(
                evaluate_split(ctx, method.eval_model(model), "val", dense=False),
                part_targets(ctx, "val"),
            )
            row |= {"top1_val": top1, "top5_val": top5}
            log.evaluation(top1, top5)
            bar.set_postfix(loss=f"{sum(terms.values()):.3f}", val_top1=f"{top1:.1f}")
        row["seconds"] = round(time.perf_counter() - tic, 3)
        history.append(row)
        if main:
            log.flush()  # before the checkpoint: the event files never lag behind it
            save_checkpoint(
                record,
                checkpoint_state(
                    model, method, index, epoch + 1, optimizer, scheduler, history, clock.total()
                ),
            )
            record.write_history(history)
    bar.close()
