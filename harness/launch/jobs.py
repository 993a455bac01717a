"""What a launcher hands to a worker process: one run, or the report, as a picklable callable.

submitit pickles these into its job folder and calls them in the worker. ``RunJob``
is *checkpointable* in submitit's sense: when SLURM announces the end of a job's
time (or a preemption) with SIGUSR2, submitit calls ``checkpoint`` and requeues
what it returns. A run's state is already on disk (the trainer checkpoints every
epoch, atomically), so requeueing the same callable is all it takes: the next
attempt resumes from the last finished epoch and, an epoch's data order and RNG
being a function of (seed, stage, epoch), ends with the same numbers. At most the
epoch in progress is computed twice.

The config travels as a plain dict (not a DictConfig): it pickles small and fast,
which matters at a thousand tasks per array.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.engine.lifecycle import train_run
from harness.errors import UsageError
from harness.plan import RunSpec
from harness.plugins import use_plugins


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The config a worker runs with: the results root made absolute (a job may start
    in another folder). ``threads`` is the suite's, not the job's core count: CPU
    results depend on it, and a run id must give the same numbers under every
    launcher."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain["results"] = str(Path(cfg.results).resolve())
    plain["progress"] = False  # a bar in a log file is noise
    return plain


def _load(config: dict[str, Any]) -> DictConfig:
    """A job's config, the user's plugin modules imported (a fresh process has not)."""
    use_plugins(config.get("plugins", ()))
    cfg = OmegaConf.create(config)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _tasks(submitit: Any) -> int:
    """Processes of this job (1 where it runs outside submitit)."""
    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:
        return 1


@dataclass(frozen=True)
class RunJob:
    """Train (or resume, or skip) one run: the body of one array task."""

    spec: RunSpec
    config: dict[str, Any]

    def __call__(self) -> dict[str, Any]:
        """The run's metrics; a failed run raises (SLURM then marks the task failed;
        the error is in the run's ``failed.json``), a run another process holds
        returns nothing."""
        import submitit  # an optional extra ([slurm]): imported where a job needs it

        if _tasks(submitit) > 1:
            # one DDP rank per task: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT for
            # torch's env:// init; every task sees all the node's GPUs (cuda:LOCAL_RANK)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        print(f"run {self.spec.run_id}: {self.spec.describe()} (pid {os.getpid()})", flush=True)
        result = train_run(self.spec, _load(self.config))
        if result.message:
            print(result.message, flush=True)
        if result.status == "failed":
            raise RuntimeError(result.message)
        return result.metrics

    def checkpoint(self) -> Any:
        """Called by submitit on SIGUSR2 (time limit or preemption): requeue the same run;
        it resumes from ``checkpoint.pt``."""
        import submitit  # an optional extra ([slurm]): imported where a job needs it

        return submitit.helpers.DelayedSubmission(self)


@dataclass(frozen=True)
class ReportJob:
    """Write the suite's report once every run job has ended (the aggregation job)."""

    plan: tuple[RunSpec, ...]
    config: dict[str, Any]

    def __call__(self) -> str:
        from harness.report import build_report  # the report job's own import

        return str(build_report(_load(self.config), list(self.plan)).folder)


def waves(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """``specs`` grouped so that every run comes one wave after the latest run it
    depends on *among specs*; dependencies outside (done, or queued earlier) do not
    delay a run. ``specs`` is in plan order: dependencies first."""
    wave_of: dict[str, int] = {}
    grouped: list[list[RunSpec]] = []
    for spec in specs:
        inside = [wave_of[run] for run in spec.depends_on if run in wave_of]
        wave = 1 + max(inside) if inside else 0
        wave_of[spec.run_id] = wave
        if wave == len(grouped):
            grouped.append([])
        grouped[wave].append(spec)
    return grouped


def chunks(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """``specs`` cut into arrays of at most ``size`` tasks (SLURM's MaxArraySize)."""
    return [specs[start : start + size] for start in range(0, len(specs), size)]


def plan_arrays(
    specs: list[RunSpec], queued: set[str], size: int
) -> list[tuple[int, list[RunSpec]]]:
    """The arrays to submit for ``specs``, as (wave, runs): per wave, runs that wait on
    the same runs ``queued`` by an earlier submission share arrays (a dependency
    holds a whole array, so a fresh run must not share one with a run that waits),
    cut at ``size`` tasks."""
    arrays = []
    for wave, members in enumerate(waves(specs)):
        groups: dict[tuple[str, ...], list[RunSpec]] = {}
        for spec in members:
            key = tuple(sorted(queued.intersection(spec.depends_on)))
            groups.setdefault(key, []).append(spec)
        arrays += [(wave, chunk) for group in groups.values() for chunk in chunks(group, size)]
    return arrays


def needs_submitit(what: str) -> None:
    """submitit is an optional extra: say how to install it (exit 2) where it is missing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError(f"{what} needs submitit: pip install -e '.[slurm]'") from None
