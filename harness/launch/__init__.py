"""Launchers: how a plan's runs get executed.

A launcher takes the plan (dependencies first) and the config, and says whether
the runs ended here (``harness.run`` then writes and prints the report and a
done / failed / skipped line from the store, ``tally``). A run that fails never
stops the others: its error is in its ``failed.json``, and only the runs that
start from it are skipped. ``inprocess`` runs them one after another in this process;
``local_parallel`` runs up to ``parallel`` at once in worker processes through
submitit's local executor; ``slurm`` submits them as array jobs and returns
(or, with ``wait=true``, waits). Every launcher runs the same job body,
``harness.launch.jobs.RunJob`` (``harness.engine.lifecycle.train_run``).
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from harness.errors import UsageError
from harness.launch import inprocess, local, slurm
from harness.launch.base import LAUNCHERS, Outcome, register_launcher, tally
from harness.launch.jobs import needs_submitit

__all__ = [
    "LAUNCHERS",
    "Outcome",
    "inprocess",
    "local",
    "prepare",
    "register_launcher",
    "slurm",
    "tally",
]


def prepare(cfg: DictConfig) -> None:
    """Launcher checks that need the outside world (SLURM's commands, its partitions),
    made before any work; raises UsageError."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and cfg.launcher != "inprocess":
        raise UsageError(
            f"launcher={cfg.launcher} under torchrun: each of its processes would launch the "
            "whole plan; under torchrun use launcher=inprocess (SLURM starts DDP ranks itself "
            "with launcher=slurm and slurm.gpus_per_node)"
        )
    if cfg.launcher == "slurm":
        if cfg.device == "auto":  # it would resolve here, on the submitting machine
            raise UsageError("launcher=slurm needs device=cpu or device=cuda, not auto")
        if cfg.device == "cuda" and cfg.slurm.gpus_per_node < 1:
            raise UsageError("device=cuda with launcher=slurm needs slurm.gpus_per_node >= 1")
        slurm.check_cluster(cfg)
    elif cfg.launcher == "local_parallel":
        needs_submitit("launcher=local_parallel")
