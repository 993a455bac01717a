"""Launchers: how a plan's runs get executed.

A launcher takes the plan (dependencies first) and the config, and says whether
the runs ended here (``harness.run`` then writes and prints the report and a
done / failed / skipped line from the store, ``tally``). A run that fails never
stops the others: its error is in its ``failed.json``, and only the runs that
start from it are skipped. ``inprocess`` runs them one after another in this process;
``local_parallel`` runs up to ``parallel`` at once in worker processes through
submitit's local executor; ``slurm`` submits them as array jobs and returns
(or, with ``wait=true``, waits). Every launcher runs the same job body,
``harness.jobs.RunJob`` (``harness.train.train_run``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from harness.distributed import is_main_process
from harness.plan import RunSpec
from harness.store import run_record


@dataclass(frozen=True)
class Outcome:
    finished: bool  # the runs ended here (not only submitted): report now


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
    """One run after another in this process. A failed run, or one another process
    holds, is reported in one line and the plan goes on; the runs that start from it
    are skipped (they would fail for want of its weights)."""
    from harness.train import train_run  # the trainer is heavy; load it only to run

    ended: dict[str, str] = {}
    bar = tqdm(
        plan, desc=f"suite {cfg.suite}", unit="run", disable=not cfg.progress, dynamic_ncols=True
    )
    for spec in bar:
        waits_on = [run for run in spec.depends_on if ended.get(run, "done") != "done"]
        if waits_on:
            ended[spec.run_id] = "skipped"
            _say_skipped(spec, waits_on[0], ended[waits_on[0]])
            continue
        result = train_run(spec, cfg)
        ended[spec.run_id] = result.status
        if result.status != "done":
            _say(result.message)
    return Outcome(finished=True)


def _say(message: str) -> None:
    """One line on stderr (rank 0 only), above any progress bar."""
    if is_main_process():
        tqdm.write(message, file=sys.stderr)


def _say_skipped(spec: RunSpec, source: str, how: str) -> None:
    """The line for a run skipped because the run it starts from ended ``how``."""
    _say(f"run {spec.run_id} ({spec.describe()}) skipped: it starts from run {source}, which {how}")


def tally(plan: list[RunSpec], cfg: DictConfig) -> dict[str, int]:
    """done / failed / skipped counts of the plan, from the store: skipped is every run
    neither done nor failed (another process holds it, or it starts from a run that
    did not finish)."""
    counts = dict.fromkeys(("done", "failed", "skipped"), 0)
    for spec in plan:
        record = run_record(cfg.results, spec.suite, spec.run_id)
        if record.is_done():
            counts["done"] += 1
        elif record.failure_file.is_file():
            counts["failed"] += 1
        else:
            counts["skipped"] += 1
    return counts


@register_launcher("local_parallel")
def launch_local_parallel(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    """Up to ``parallel`` runs at once, each in its own process (submitit's
    LocalExecutor starts whatever it is given at once, so the queue is kept here).
    A run starts when the runs it depends on are done; if one of them ended
    otherwise, it is skipped with a line that names it. A worker's failure is in the
    run's ``failed.json`` and its log under ``<results>/<suite>/local/``."""
    import submitit
    import torch

    from harness.jobs import RunJob, job_config

    folder = Path(cfg.results) / cfg.suite / "local"
    executor = submitit.LocalExecutor(folder=folder / "%j")
    executor.update_parameters(timeout_min=60 * 24 * 365)  # no time limit on one's own machine
    # submitit hides every GPU from a worker unless given some: one each, in turn
    gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
    config = job_config(cfg)
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
    ended_badly: set[str] = set()
    while waiting or running:
        for run_id, job in list(running.items()):
            if job.done():
                del running[run_id]
                bar.update(1)
                message = _job_problem(job)
                if message:  # failed, or another process holds the run
                    ended_badly.add(run_id)
                    _say(message)
        unfinished = {s.run_id for s in waiting} | set(running)
        for spec in list(waiting):
            if len(running) >= cfg.parallel:
                break
            blocked = ended_badly.intersection(spec.depends_on)
            if blocked:
                _say_skipped(spec, min(blocked), "did not finish")
                ended_badly.add(spec.run_id)
                waiting.remove(spec)
                bar.update(1)
            elif not unfinished.intersection(spec.depends_on):
                if gpus:
                    executor.update_parameters(gpus_per_node=1, visible_gpus=[started % gpus])
                running[spec.run_id] = executor.submit(RunJob(spec, config))
                waiting.remove(spec)
                started += 1
        time.sleep(0.2)
    bar.close()
    return Outcome(finished=True)


def _job_problem(job: Any) -> str:
    """Empty for a worker that finished its run; else one line on why not: the line
    ``train_run`` printed (failed, or held by another process), else the worker's error."""
    try:
        if job.state == "FINISHED" and job.result():
            return ""
        reason = f"worker {job.job_id} ended without finishing its run"
    except Exception as error:  # noqa: BLE001 - a worker's error, shown in one line
        reason = (str(error).strip().splitlines() or [f"worker {job.job_id} failed"])[0]
    said = [
        line
        for line in (job.stdout() or "").splitlines()
        if line.startswith("run ") and (" failed: " in line or " skipped: " in line)
    ]
    return said[-1] if said else reason


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
    return Outcome(finished=True)
