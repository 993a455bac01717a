"""Launchers: how a plan's runs get executed.

A launcher takes the plan (dependencies first) and the config, and says whether
the runs ended here (``harness.run`` then writes and prints the report) and how
many failed. ``inprocess`` runs them one after another in this process;
``local_parallel`` runs up to ``parallel`` at once in worker processes through
submitit's local executor; ``slurm`` submits them as array jobs and returns
(or, with ``wait=true``, waits). Every launcher runs the same job body,
``harness.jobs.RunJob`` (``harness.train.train_run``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from harness.plan import RunSpec
from harness.store import run_record


@dataclass(frozen=True)
class Outcome:
    finished: bool  # the runs ended here (not only submitted): report now
    failed: int = 0


Launcher = Callable[[list[RunSpec], DictConfig], Outcome]
LAUNCHERS: dict[str, Launcher] = {}


def register_launcher(name: str) -> Callable[[Launcher], Launcher]:
    def add(launcher: Launcher) -> Launcher:
        LAUNCHERS[name] = launcher
        return launcher

    return add


def prepare(cfg: DictConfig) -> None:
    """Launcher checks that need the outside world (SLURM's commands, its partitions),
    made before any work; raises UsageError."""
    from harness.errors import UsageError
    from harness.jobs import needs_submitit

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and cfg.launcher != "inprocess":
        raise UsageError(
            f"launcher={cfg.launcher} under torchrun: each of its processes would launch the "
            "whole plan; under torchrun use launcher=inprocess (SLURM starts DDP ranks itself "
            "with launcher=slurm and slurm.gpus_per_node)"
        )
    if cfg.launcher == "slurm":
        from harness.slurm import check_cluster

        if cfg.device == "auto":  # it would resolve here, on the submitting machine
            raise UsageError("launcher=slurm needs device=cpu or device=cuda, not auto")
        if cfg.device == "cuda" and cfg.slurm.gpus_per_node < 1:
            raise UsageError("device=cuda with launcher=slurm needs slurm.gpus_per_node >= 1")
        check_cluster(cfg)
    elif cfg.launcher == "local_parallel":
        needs_submitit("launcher=local_parallel")


@register_launcher("inprocess")
def launch_inprocess(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    from harness.train import train_run  # the trainer is heavy; load it only to run

    for spec in tqdm(
        plan, desc=f"suite {cfg.suite}", unit="run", disable=not cfg.progress, dynamic_ncols=True
    ):
        train_run(spec, cfg)
    return Outcome(finished=True)


@register_launcher("local_parallel")
def launch_local_parallel(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    """Up to ``parallel`` runs at once, each in its own process (submitit's
    LocalExecutor starts whatever it is given at once, so the queue is kept here).
    A run starts when the runs it depends on have ended; if one of them failed, it
    fails at once with an error that names it."""
    import submitit
    import torch

    from harness.jobs import RunJob, job_config

    folder = Path(cfg.results) / cfg.suite / "local"
    executor = submitit.LocalExecutor(folder=folder / "%j")
    executor.update_parameters(timeout_min=60 * 24 * 365)  # no time limit on one's own machine
    # submitit hides every GPU from a worker unless given some: one each, in turn
    gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
    cores = len(os.sched_getaffinity(0))
    config = job_config(cfg, threads=max(1, cores // cfg.parallel))
    waiting = [s for s in plan if not run_record(cfg.results, s.suite, s.run_id).is_done()]
    running: dict[str, submitit.LocalJob] = {}
    bar = tqdm(
        total=len(plan),
        initial=len(plan) - len(waiting),
        desc=f"suite {cfg.suite}",
        unit="run",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    started = 0
    while waiting or running:
        for run_id, job in list(running.items()):
            if job.done():
                del running[run_id]
                bar.update(1)
        unfinished = {s.run_id for s in waiting} | set(running)
        for spec in list(waiting):
            if len(running) >= cfg.parallel:
                break
            if not unfinished.intersection(spec.depends_on):
                if gpus:
                    executor.update_parameters(gpus_per_node=1, visible_gpus=[started % gpus])
                running[spec.run_id] = executor.submit(RunJob(spec, config))
                waiting.remove(spec)
                started += 1
        time.sleep(0.2)
    bar.close()
    return Outcome(finished=True, failed=_not_done(plan, cfg))


def _not_done(plan: list[RunSpec], cfg: DictConfig) -> int:
    return sum(not run_record(cfg.results, s.suite, s.run_id).is_done() for s in plan)


@register_launcher("slurm")
def launch_slurm(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    from harness import slurm

    submission = slurm.submit(plan, cfg)  # run.validate has run slurm.check_cluster
    slurm.print_submission(submission, cfg)
    if not submission.arrays and not submission.queued:
        return Outcome(finished=True)  # every run is done: report here
    if not cfg.wait:
        return Outcome(finished=False)
    slurm.wait(plan, cfg, submission)
    return Outcome(finished=True, failed=_not_done(plan, cfg))
