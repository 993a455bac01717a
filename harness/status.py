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
| running | its SLURM job runs |
| incomplete | started (a checkpoint exists) but nothing runs it now: run it again |
| failed | the run raised (``failed.json``) or its job ended without finishing it |
| done | ``metrics.json`` is written |
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from tabulate import tabulate

from harness.config import load_config
from harness.errors import UsageError
from harness.plan import RunSpec, make_plan
from harness.slurm import (
    RUNNING_STATES,
    job_history,
    live_jobs,
    log_files,
    read_ledger,
    slurm_dir,
)
from harness.store import RunRecord, run_record

STATES = ("planned", "queued", "running", "incomplete", "failed", "done")
# sacct states of an attempt that SLURM ended and started again
REQUEUE_STATES = frozenset({"REQUEUED", "PREEMPTED", "NODE_FAIL"})


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
    jobs = {s.run_id: submitted[s.run_id]["job"] for s in plan if s.run_id in submitted}
    live = live_jobs(list(jobs.values())) if jobs else {}
    history = job_history(list(jobs.values())) if jobs else {}
    states = []
    for spec in plan:
        record = run_record(cfg.results, spec.suite, spec.run_id)
        job = jobs.get(spec.run_id, "")
        attempts = history.get(job, [])
        requeued = sum(state in REQUEUE_STATES for state in attempts)
        log = str(log_files(folder, job)[1]) if job else ""
        common = {"spec": spec, "job": job, "requeued": requeued, "log": log}
        progress = _progress(cfg, record)
        if record.is_done():
            states.append(RunState(state="done", progress=progress, **common))
        elif job in live:
            state, reason = live[job]
            name = "running" if state in RUNNING_STATES else "queued"
            detail = "" if reason in ("None", "") else reason
            states.append(RunState(state=name, progress=progress, detail=detail, **common))
        elif record.failure_file.is_file():
            error, trace = _failure(record)
            states.append(
                RunState(state="failed", progress=progress, detail=error, error=trace, **common)
            )
        elif job and attempts and attempts[-1] not in ("COMPLETED", "PENDING", "RUNNING"):
            # SLURM ended the job without the run writing a word: read its log
            error = _log_tail(Path(log))
            detail = f"SLURM: {attempts[-1]}"
            states.append(
                RunState(
                    state="failed",
                    progress=progress,
                    detail=detail,
                    error="\n".join(filter(None, [detail, error])),
                    **common,
                )
            )
        elif record.checkpoint_file.is_file():
            states.append(RunState(state="incomplete", progress=progress, **common))
        else:
            states.append(RunState(state="planned", **common))
    return states


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(argv)
        plan = make_plan(cfg)
        states = run_states(cfg, plan)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(states))
    return 0


if __name__ == "__main__":
    sys.exit(main())
