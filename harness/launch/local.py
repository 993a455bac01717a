"""``launcher=local_parallel``: up to ``parallel`` runs at once, one worker process each
(submitit's LocalExecutor)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from harness.launch.base import Outcome, register_launcher, say, say_skipped
from harness.launch.jobs import RunJob, job_config
from harness.plan import RunSpec
from harness.store import run_record


@register_launcher("local_parallel")
def launch_local_parallel(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    """Up to ``parallel`` runs at once, each in its own process (submitit's
    LocalExecutor starts whatever it is given at once, so the queue is kept here).
    A run starts when the runs it depends on are done; if one of them ended
    otherwise, it is skipped with a line that names it. A worker's failure is in the
    run's ``failed.json`` and its log under ``<results>/<suite>/local/``."""
    import submitit  # an optional extra ([slurm]); run.validate has checked it is there

    folder = Path(cfg.results) / cfg.suite / "local"
    executor = submitit.LocalExecutor(folder=folder / "%j")
    executor.update_parameters(timeout_min=60 * 24 * 365)  # no time limit on one's own machine
    # submitit hides every GPU from a worker unless given some: one each, in turn
    gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
    config = job_config(cfg)
    waiting = [s for s in plan if not run_record(cfg.results, s.suite, s.run_id).is_done()]
    running: dict[str, Any] = {}
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
                    say(message)
        unfinished = {s.run_id for s in waiting} | set(running)
        for spec in list(waiting):
            if len(running) >= cfg.parallel:
                break
            blocked = ended_badly.intersection(spec.depends_on)
            if blocked:
                say_skipped(spec, min(blocked), "did not finish")
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
