"""``python -m harness.status [suite=NAME] [key=value ...]``: where every run stands.

Takes the same keys as ``harness.run`` (the same keys name the same runs) and
prints one row per planned run: its state, SLURM job, how often SLURM requeued
it, how far it got, and for a failed run its error. States come from the store
first (``metrics.json``: done; ``failed.json``: failed) and from SLURM for the
runs the ledger says were submitted (``squeue`` for queued/running, ``sacct``
for requeues and for jobs that ended without a word from the run: out of
memory, cancelled, out of time too often). Reads only; never submits.

| state | meaning |
|---|---|
| planned | not started, not submitted |
| queued | its SLURM job waits (dependency, resources, or a requeue's begin time) |
| running | its SLURM job runs, or a process holds its lock (``<run>/lock``) |
| incomplete | started (a checkpoint exists) but nothing runs it now: run it again |
| failed | the run raised (``failed.json``) or its job ended without finishing it |
| done | ``metrics.json`` is written |
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig
from tabulate import tabulate

from harness.cli import run_command
from harness.config import load_config, suite_command
from harness.errors import UsageError
from harness.launch.slurm import (
    RUNNING_STATES,
    SlurmUnavailable,
    array_id,
    job_history,
    live_jobs,
    log_files,
    read_ledger,
    slurm_dir,
)
from harness.lock import holder_text, is_held, read_holder
from harness.plan import RunSpec, make_plan
from harness.report.published import cells_without_runs
from harness.store import RunRecord, run_record

STATES = ("planned", "queued", "running", "incomplete", "failed", "done")


@dataclass(frozen=True)
class RunState:
    spec: RunSpec
    state: str
    job: str = ""
    requeued: int = 0
    progress: str = ""
    detail: str = ""  # the error's last line, or why a job waits
    error: str = ""  # the error's last lines, for failed runs
    log: str = ""  # the job's stderr log


def run_states(cfg: DictConfig, plan: list[RunSpec]) -> list[RunState]:
    folder = slurm_dir(cfg)
    submitted = read_ledger(folder)["runs"]
    ledger = {s.run_id: submitted[s.run_id] for s in plan if s.run_id in submitted}
    jobs = [entry["job"] for entry in ledger.values()]
    try:
        live = live_jobs(jobs)
        history = job_history(jobs)
    except SlurmUnavailable as error:
        raise UsageError(
            f"{len(jobs)} runs of this plan were submitted to SLURM (ledger {folder}/jobs.json), "
            f"but SLURM does not answer ({error}); is SLURM_CONF set?"
        ) from None
    return [_state(cfg, spec, ledger.get(spec.run_id), live, history) for spec in plan]


def _state(
    cfg: DictConfig,
    spec: RunSpec,
    submission: dict | None,
    live: dict[str, tuple[str, str]],
    history: dict[str, list[str]],
) -> RunState:
    record = run_record(cfg.results, spec.suite, spec.run_id)
    job = submission["job"] if submission else ""
    # sacct -D: one record per attempt; every one but the last ended in a requeue, and a
    # REQUEUED last one waits to start again (sacct may not list that attempt yet)
    # a held array cancelled before any task started is one record under the array's
    # id for a moment (sacct lists "12", later "12_[0-1]"): it holds for every task
    attempts = history.get(job) or history.get(array_id(job), [])
    requeued = sum(state == "REQUEUED" or i < len(attempts) - 1 for i, state in enumerate(attempts))
    log = str(log_files(slurm_dir(cfg), job)[1]) if job else ""
    common = {
        "spec": spec,
        "job": job,
        "requeued": requeued,
        "log": log,
        "progress": _progress(cfg, record),
    }
    if record.is_done():
        return RunState(state="done", **common)
    if job in live:
        state, reason = live[job]
        name = "running" if state in RUNNING_STATES else "queued"
        return RunState(state=name, detail="" if reason == "None" else reason, **common)
    if is_held(record.path):  # a process trains it now (inprocess, local_parallel, torchrun)
        holder = f"held by {holder_text(read_holder(record.path))}"
        return RunState(state="running", detail=holder, **common)
    ended = attempts[-1] if attempts else "COMPLETED"
    failure = record.failure_file
    # an error recorded before the job's submission belongs to an earlier attempt
    stale = bool(submission) and failure.is_file() and failure.stat().st_mtime < _epoch(submission)
    if failure.is_file() and not (stale and ended != "COMPLETED"):
        error, trace = _failure(record)
        return RunState(state="failed", detail=error, error=trace, **common)
    if job and ended not in ("COMPLETED", "PENDING", "RUNNING"):
        # SLURM ended the job without the run writing a word: read its log
        detail = f"SLURM: {ended}"
        error = "\n".join(filter(None, [detail, _log_tail(Path(log))]))
        return RunState(state="failed", detail=detail, error=error, **common)
    if record.checkpoint_file.is_file():
        return RunState(state="incomplete", **common)
    return RunState(state="planned", **common)


def _epoch(submission: dict) -> float:
    return datetime.fromisoformat(submission["submitted"]).timestamp()


def _failure(record: RunRecord, lines: int = 3) -> tuple[str, str]:
    """The recorded error's first line, and the last lines of its traceback."""
    try:
        failure = json.loads(record.failure_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return f"failed.json unreadable: {error}", ""
    error = (failure.get("error") or "?").splitlines()[0]
    trace = [line for line in failure.get("traceback", "").splitlines() if line.strip()]
    return error, "\n".join(trace[-lines:]) or error


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line for line in text[-lines:] if line.strip())


def _progress(cfg: DictConfig, record: RunRecord) -> str:
    """The last epoch in ``history.csv``: "stage epoch/epochs"."""
    try:
        with open(record.history_file, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return ""
    if not rows:
        return ""
    stage, epoch = rows[-1]["stage"], rows[-1]["epoch"]
    epochs = cfg.schedule[stage].epochs if stage in cfg.schedule else "?"
    return f"{stage} {epoch}/{epochs}"


def render(states: list[RunState]) -> str:
    rows = [
        [
            s.spec.run_id,
            s.spec.method,
            s.spec.labels,
            s.spec.train_seed,
            s.state,
            s.job,
            s.requeued or "",
            s.progress,
            s.detail[:70],
        ]
        for s in states
    ]
    header = ["run", "method", "labels", "seed", "state", "job", "requeued", "progress", "detail"]
    table = tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)
    counts = {name: sum(s.state == name for s in states) for name in STATES}
    lines = [table, "", ", ".join(f"{n} {name}" for name, n in counts.items() if n)]
    for s in states:
        if s.state == "failed":
            lines += ["", f"failed: {s.spec.run_id} ({s.spec.describe()}), job {s.job or '-'}"]
            if s.log:
                lines.append(f"  log: {s.log}")
            lines += [f"  {line}" for line in s.error.splitlines()]
    return "\n".join(lines)


COMMAND = suite_command(
    "harness.status",
    "Where each run of a suite's plan stands (done, running, failed, queued on "
    "SLURM, ...), with the epoch it reached and the first lines of its error; the same keys "
    "as harness.run give the same runs. Reads only; writes nothing.",
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, _main, argv)


def _main(argv: list[str]) -> int:
    cfg = load_config(argv)
    states = run_states(cfg, make_plan(cfg))
    print(render(states))
    gaps = published_gaps(cfg, states)
    if gaps:
        print("\npublished cells with no done run yet:")
        print("\n".join(f"  {line}" for line in gaps))
    return 0


def published_gaps(cfg: DictConfig, states: list[RunState]) -> list[str]:
    """The suite's published cells (``published:``) that no done run of this plan
    answers yet."""
    planned = Counter((s.spec.method, s.spec.labels) for s in states)
    done = Counter((s.spec.method, s.spec.labels) for s in states if s.state == "done")
    return cells_without_runs(cfg.published, planned, done)


if __name__ == "__main__":
    sys.exit(main())
