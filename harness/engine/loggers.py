"""What a run writes for people to look at while it trains, beside ``history.csv``.

``history.csv`` (one row per epoch, written by the loop) is always written: the
report reads it. ``logger`` adds writers to it; today the one is ``tensorboard``:
event files under ``<run folder>/tensorboard/`` with, per step, every loss term
(``loss/<term>``), their sum (``loss/total``), the learning rate (``train/lr``) and
each scalar the method reports with ``Method.log_scalar`` (``method/<name>``);
per evaluation the val errors (``val/top1_error``, ``val/top5_error``, in percent,
as ``top1_val``/``top5_val`` in history.csv).

Steps are numbered from 1 over the whole run (stages follow each other on one
axis); history.csv's ``step`` column is the step at the end of each epoch. The loop
keeps a step's values as detached tensors (``StepScalars``) and they are written
once per epoch with one ``.tolist()``: logging adds no device sync per step. They
are flushed before each epoch's checkpoint, so the event files hold at least what
the checkpoint does; a resumed run opens its writer with ``purge_step`` at its
first new step, so TensorBoard drops what a killed attempt wrote past its
checkpoint and the curves hold no step twice. Only rank 0 writes; under DDP the
per-step values are rank 0's shard of each batch (history.csv's epoch means are
over all ranks): logging adds no collective either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_FOLDER = "tensorboard"


class StepScalars:
    """One epoch's per-step scalars as the loop records them: the learning rate and
    wall time of each step (host numbers) and its tagged values (detached tensors,
    still on the device, never read one by one)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.walltimes: list[float] = []
        self.values: dict[str, list[tuple[int, torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.lrs)

    def add(
        self, lr: float, terms: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]
    ) -> None:
        """Record one step: ``terms`` are its loss terms, ``extras`` what the method
        logged beside them (``Method.log_scalar``)."""
        index = len(self.lrs)
        self.lrs.append(lr)
        self.walltimes.append(time.time())
        tagged = {f"loss/{key}": value for key, value in terms.items()}
        tagged |= {f"method/{key}": value for key, value in extras.items()}
        for tag, value in tagged.items():
            self.values.setdefault(tag, []).append((index, value))

    def resolved(self) -> dict[str, list[tuple[int, float]]]:
        """Every tag's (step index in the epoch, value), read from the device at once
        (one ``.tolist()``), with ``loss/total``: the sum of the loss terms."""
        tags = list(self.values)
        if not tags:
            return {}
        device = self.values[tags[0]][0][1].device
        stacked = [
            torch.stack([value.reshape(()) for _, value in self.values[tag]]).to(
                device, torch.float32
            )
            for tag in tags
        ]
        flat = torch.cat(stacked).tolist()
        out: dict[str, list[tuple[int, float]]] = {}
        start = 0
        for tag in tags:
            indices = [index for index, _ in self.values[tag]]
            out[tag] = list(zip(indices, flat[start : start + len(indices)], strict=True))
            start += len(indices)
        totals: dict[int, float] = {}
        for tag in tags:
            if tag.startswith("loss/"):
                for index, value in out[tag]:
                    totals[index] = totals.get(index, 0.0) + value
        if totals:
            out["loss/total"] = sorted(totals.items())
        return out


class RunLog:
    """The run's step counter and its writers beyond history.csv (none for
    ``logger=[csv]``, or on a rank other than 0). The counter runs on every rank,
    since history rows carry it."""

    def __init__(self, step: int = 0, writer: SummaryWriter | None = None):
        self.step, self.writer = step, writer

    def train_steps(self, steps: StepScalars) -> None:
        """Write one epoch's steps (numbered on from ``self.step``) and advance it."""
        if self.writer is not None and len(steps):
            first = self.step + 1
            for index, lr in enumerate(steps.lrs):
                self.writer.add_scalar("train/lr", lr, first + index, steps.walltimes[index])
            for tag, values in steps.resolved().items():
                for index, value in values:
                    self.writer.add_scalar(tag, value, first + index, steps.walltimes[index])
        self.step += len(steps)

    def evaluation(self, top1: float, top5: float) -> None:
        """Val errors measured after the last step so far."""
        if self.writer is not None:
            self.writer.add_scalar("val/top1_error", top1, self.step)
            self.writer.add_scalar("val/top5_error", top5, self.step)

    def flush(self) -> None:
        """Put what was written on disk: called before a checkpoint, so the event
        files never lag behind it (a resume purges what is ahead of it)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def steps_done(history: list[dict[str, Any]], per_epoch: Callable[[str], int]) -> int:
    """Steps the run has taken, from its checkpointed history rows: the last row's
    ``step``; a checkpoint written before rows had one counts ``per_epoch(stage)``
    steps for each of its rows."""
    if not history:
        return 0
    if "step" in history[-1]:
        return int(history[-1]["step"])
    return sum(per_epoch(row["stage"]) for row in history)


@contextmanager
def open_run_log(
    folder: Path, loggers: list[str] | tuple[str, ...], step: int, main: bool
) -> Iterator[RunLog]:
    """The run's ``RunLog`` from ``step`` (steps already taken) on; TensorBoard's
    writer where ``tensorboard`` is among ``loggers`` and this is rank 0, closed
    (flushed) on the way out, also after an error."""
    writer = _tensorboard_writer(folder, step) if main and "tensorboard" in loggers else None
    log = RunLog(step, writer)
    try:
        yield log
    finally:
        log.close()


def _tensorboard_writer(folder: Path, step: int) -> SummaryWriter:
    """A writer into ``folder/tensorboard``. Where an earlier attempt wrote there,
    ``purge_step`` is the first step this one takes: TensorBoard then discards the
    steps from that one on that the earlier attempt wrote (past its checkpoint)."""
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

    log_dir = folder / TENSORBOARD_FOLDER
    earlier = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
    return SummaryWriter(log_dir=str(log_dir), purge_step=step + 1 if earlier else None)
