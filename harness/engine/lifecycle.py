"""Train one run: the whole life of a run under its lock.

``train_run`` takes the run's lock, or skips a run another process holds; loads
the data and split, builds the model, resumes from ``checkpoint.pt`` if there is
one, runs the remaining epochs of the remaining stages (``harness.engine.loop``),
evaluates (``harness.engine.evaluate``) and writes the record. An exception is
recorded in ``failed.json`` and returned as a failed result, so a launcher goes on
with the other runs.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import config_for
from harness.data import (
    load_dataset,
    load_or_store_split,
)
from harness.engine import distributed
from harness.engine.batches import steps_per_epoch
from harness.engine.checkpoint import (
    atomic_torch_save,
    checkpoint_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from harness.engine.context import Context, resolve_device
from harness.engine.cost import trains
from harness.engine.evaluate import also_evaluated, final_metrics, val_crops
from harness.engine.loggers import open_run_log, steps_done
from harness.engine.loop import run_stage
from harness.engine.provenance import Clock, provenance
from harness.errors import UsageError
from harness.lock import RunLock, holder_text
from harness.method import Stage, get_method
from harness.models import build_encoder, classifier_of
from harness.plan import RunSpec
from harness.seeding import seed_everything
from harness.store import RunRecord, run_record


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
    cfg = config_for(cfg, spec.method)  # the method's per_method keys merged in
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


def configure_cpu_math(threads: int, flush_denormal: bool) -> bool:
    """Set this process's CPU math for one run: ``threads`` intra-op threads, and
    subnormal floats flushed to zero or not. Both are set on every run, so runs that
    share a process (``launcher=inprocess``) never inherit each other's. Returns
    whether the CPU flushes them now. The flush is a flag of the calling thread only,
    so ``flush_denormal`` asks for ``threads=1`` (``harness.config``).

    Why flush: weights that weight decay drives toward zero, and Adam's moments of
    near-zero gradients, pass through the subnormal range (below 1.2e-38 in fp32),
    where x86 CPUs multiply by microcode assist, many times slower. A Fashion-MNIST
    Mean Teacher run with 18% of a classifier layer's weights subnormal took 150 to
    166 s an epoch where a seed beside it took 53 (``benchmarks/bench_denormals.py``
    times such weights). Why not by default: once subnormals appear, a flushed run's
    numbers part from an unflushed one's (a Fashion-MNIST baseline's val error was the
    same to step 1,500 both ways and differed from step 2,000, where the unflushed
    run's epochs began to slow from 9 s to 89 s), and earlier CPU results must stay
    reproducible. CPU only: CUDA math is untouched.
    """
    torch.set_num_threads(threads)
    return torch.set_flush_denormal(flush_denormal) and flush_denormal


def _train_run(
    spec: RunSpec,
    cfg: DictConfig,
    record: RunRecord,
    device: torch.device,
    place: distributed.World,
) -> dict[str, Any]:
    cpu = device.type == "cpu"
    flushing = configure_cpu_math(cfg.threads, cfg.flush_denormal and cpu)
    if cfg.flush_denormal and cpu and not flushing:
        raise UsageError(
            "flush_denormal=true, but this CPU cannot flush subnormal floats "
            "(torch.set_flush_denormal returned False); valid here: flush_denormal=false"
        )
    method = get_method(spec.method)(cfg)
    batch_sizes = {
        "optim.batch_size": cfg.optim.batch_size,
        "optim.unlabeled_batch_size": method.unlabeled_batch_size(),
    }
    for key, size in batch_sizes.items():
        if place.active and size < place.size:
            raise UsageError(
                f"{key}={size} cannot be shared by {place.size} "
                f"processes; valid: at least {place.size}"
            )
    dataset = load_dataset(cfg.data)
    split = load_or_store_split(
        Path(cfg.results),
        dataset,
        spec.labels,
        spec.split_seed,
        store=place.is_main,
        holdout=cfg.data.holdout,
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
        stored["attempts"] = [*stored.get("attempts", []), provenance(device, place, flushing)]
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
        method.unlabeled_batch_size(),
    )
    seed_everything("init", spec.train_seed)
    encoder = build_encoder(
        cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop, cfg.model.dropout
    )
    model = method.build_model(encoder, dataset).to(device)
    if ctx.cuda:
        model = model.to(memory_format=torch.channels_last)
    stages = method.stages()
    checkpoint = load_checkpoint(record)
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
    by_name = {stage.name: stage for stage in stages}
    # the stages this run trains itself (not copied from a file or another run): the
    # last of them is the one that ends with the final model (eval.bn_recompute)
    trained = [
        i
        for i, stage in enumerate(stages)
        if cfg.schedule[stage.name].epochs > 0 and trains(cfg, spec, stage)
    ]
    taken = steps_done(history, lambda name: steps_per_epoch(ctx, by_name[name]))
    with open_run_log(record.path, list(cfg.logger), taken, main) as log:
        for index, stage in enumerate(stages):
            if index < start_stage:
                continue
            source = _stage_source(ctx, stage)
            if source is not None:
                classifier_of(model).load_state_dict(load_weights(source, map_location=device))
            else:
                resume = checkpoint if index == start_stage and start_epoch > 0 else None
                final = index == max(trained, default=-1)
                run_stage(
                    ctx, record, model, method, index, stage, resume, history, clock, log, final
                )
            if main:
                atomic_torch_save(model.state_dict(), record.stage_file(stage.name))
                save_checkpoint(
                    record,
                    checkpoint_state(
                        model, method, index + 1, 0, None, None, history, clock.total()
                    ),
                )
    metrics = final_metrics(ctx, method.eval_model(model), record)
    metrics |= also_evaluated(ctx, method.also_evaluate(model))
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
        **({"holdout": int(len(split.holdout))} if len(split.holdout) else {}),
        "split_hash": split.content_hash,
        "epochs": len(history),
    }
    record.write_metrics(metrics)
    return metrics


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
