"""Submit a plan to SLURM as submitit array jobs, and ask SLURM what became of them.

One array job per *wave* (all runs whose dependencies are outside the wave: step-1
runs first, then the runs that start from them), cut below the cluster's
MaxArraySize; every wave after the first waits for the arrays holding its
dependencies (``afterany``), then one report job waits for all of them. A wave
waits with ``afterany``, not ``afterok``: ``afterok`` on an array waits for *every*
task, so one failed baseline would leave every later run pending forever. A run
whose source run failed instead fails at once with an error naming that run.

The ledger ``results/<suite>/slurm/jobs.json`` maps each submitted run to its job
id; it is what keeps a resubmission from submitting a run that is still queued or
running (checked against ``squeue``), and what ``harness.status`` reads. Submission
holds ``slurm/.lock``, so two concurrent submissions of a suite cannot both submit
a run. submitit's job folders (pickles and logs) are ``slurm/<job id>/``.
"""

from __future__ import annotations

import fcntl
import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from harness.errors import UsageError, unknown
from harness.launch.base import Outcome, register_launcher
from harness.launch.jobs import ReportJob, RunJob, job_config, needs_submitit, plan_arrays
from harness.plan import RunSpec
from harness.store import atomic_write_text, run_record

# squeue states of a job that will still run (or is running): not to be submitted again
LIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "STAGE_OUT",
        "SIGNALING",
    }
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})
COMMANDS = ("sbatch", "squeue", "srun", "sinfo", "scontrol")


def slurm_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results) / cfg.suite / "slurm"


# ---------------------------------------------------------------- the cluster


class SlurmUnavailable(RuntimeError):
    """A SLURM command could not be run or failed (slurmctld down, SLURM_CONF unset)."""


def _slurm(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmUnavailable(f"{args[0]}: {error}") from None


def array_id(job: str) -> str:
    """``"12_3"`` -> ``"12"``: the array (or plain job) a job id belongs to."""
    return job.split("_")[0]


def check_cluster(cfg: DictConfig) -> None:
    """Everything ``launcher=slurm`` needs, checked before any work: SLURM's commands,
    submitit, the partition, and that SLURM accepts the job settings
    (``sbatch --test-only``: memory, GPUs, time, account, qos, extra flags)."""
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        raise UsageError(
            f"launcher=slurm needs SLURM's commands on PATH (missing: {', '.join(missing)}); "
            "valid here: launcher=inprocess or launcher=local_parallel"
        )
    needs_submitit("launcher=slurm")
    try:
        listed = _slurm("sinfo", "-h", "-o", "%P")
        if listed.returncode != 0:
            raise SlurmUnavailable(listed.stderr.strip())
        partitions = [name.rstrip("*") for name in listed.stdout.split()]
        if cfg.slurm.partition and cfg.slurm.partition not in partitions:
            raise unknown("slurm.partition", cfg.slurm.partition, partitions)
        flags = [_flag(key, value) for key, value in _job_params(cfg).items() if key in SBATCH]
        flags += [_flag(key, value) for key, value in cfg.slurm.additional.items()]
        tried = _slurm("sbatch", "--test-only", *flags, "--wrap", "true")
        cluster_size = max_array_size()
    except SlurmUnavailable as error:
        raise UsageError(f"launcher=slurm: SLURM does not answer ({error})") from None
    if tried.returncode != 0:
        refusal = " ".join(tried.stderr.split())
        raise UsageError(f"SLURM refuses these job settings ({' '.join(flags)}): {refusal}")
    if cfg.slurm.max_array_size > cluster_size:
        raise UsageError(
            f"slurm.max_array_size={cfg.slurm.max_array_size} exceeds the cluster's "
            f"MaxArraySize ({cluster_size}); valid: 1 to {cluster_size}, or 0 for the cluster's"
        )


@functools.cache
def max_array_size() -> int:
    """The cluster's MaxArraySize: the most tasks one array may hold."""
    shown = _slurm("scontrol", "show", "config")
    for line in shown.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return max(1, int(value.strip()))
    return 1001  # SLURM's default


def live_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` of those of ``job_ids`` (or of their arrays) that
    squeue still lists, one line per array task; one squeue call."""
    arrays = sorted({array_id(job) for job in job_ids})
    if not arrays:
        return {}
    shown = _slurm("squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T|%r")
    if shown.returncode != 0:
        if "Invalid job id" in shown.stderr:  # all of them have left the queue
            return {}
        raise SlurmUnavailable(f"squeue: {shown.stderr.strip()}")
    jobs = {}
    for line in shown.stdout.splitlines():
        job, state, reason = line.split("|", 2)
        if state in LIVE_STATES:
            jobs[job] = (state, reason)
    return jobs


def job_history(job_ids: list[str]) -> dict[str, list[str]]:
    """``{job id: [state of each attempt]}`` from accounting (``sacct -D``: a requeued
    job has one REQUEUED or PREEMPTED record per earlier attempt); ``{}`` where
    accounting is not available."""
    arrays = sorted({array_id(job) for job in job_ids})
    if not arrays or shutil.which("sacct") is None:
        return {}
    shown = _slurm("sacct", "-n", "-D", "-X", "-P", "-o", "JobID,State", "-j", ",".join(arrays))
    history: dict[str, list[str]] = {}
    if shown.returncode != 0:
        return history
    for line in shown.stdout.splitlines():
        job, _, state = line.partition("|")
        for task in array_tasks(job):
            history.setdefault(task, []).append(state.split()[0] if state else "UNKNOWN")
    return history


def array_tasks(job: str) -> list[str]:
    """``"12_[0-2,5%4]"`` (an array's tasks that never started, as sacct lists them)
    -> ``["12_0", "12_1", "12_2", "12_5"]``; any other id -> ``[job]``."""
    array, sep, ranges = job.partition("_[")
    if not sep:
        return [job]
    tasks = []
    for part in ranges.rstrip("]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        tasks += [f"{array}_{i}" for i in range(int(first), int(last or first) + 1)]
    return tasks


# ---------------------------------------------------------------- the ledger


def read_ledger(folder: Path) -> dict[str, Any]:
    path = folder / "jobs.json"
    if not path.is_file():
        return {"runs": {}, "reports": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is damaged ({error}); move it away to start afresh") from None


def write_ledger(folder: Path, ledger: dict[str, Any]) -> None:
    atomic_write_text(folder / "jobs.json", json.dumps(ledger, indent=1, sort_keys=True) + "\n")


@contextmanager
def ledger_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:  # "a": never touches the file's mtime
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_files(folder: Path, job_id: str) -> tuple[Path, Path]:
    """submitit's stdout and stderr of a job's first task."""
    return (
        folder / job_id / f"{job_id}_0_log.out",
        folder / job_id / f"{job_id}_0_log.err",
    )


# ---------------------------------------------------------------- submission


@dataclass
class Submission:
    """What one ``harness.run launcher=slurm`` did."""

    done: int = 0  # runs already finished: skipped
    queued: dict[str, str] = field(default_factory=dict)  # run id -> its live job, kept
    arrays: list[dict[str, Any]] = field(default_factory=list)  # wave, job, tasks, after
    report_job: str | None = None
    sbatch_calls: int = 0

    @property
    def submitted(self) -> int:
        return sum(array["tasks"] for array in self.arrays)

    def job_ids(self) -> list[str]:
        """Every job this suite now waits on: new arrays, kept runs, the report job."""
        jobs = [a["job"] for a in self.arrays] + list(self.queued.values())
        return jobs + ([self.report_job] if self.report_job else [])


# submitit parameters that are sbatch flags of the same name (for `sbatch --test-only`)
SBATCH = frozenset(
    {"time", "nodes", "ntasks_per_node", "cpus_per_task", "mem", "gpus_per_node"}
    | {"partition", "account", "qos", "constraint"}
)


def _job_params(cfg: DictConfig) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one run's job."""
    slurm = cfg.slurm
    tasks_per_node = slurm.tasks_per_node or max(1, slurm.gpus_per_node)
    params = {
        "job_name": cfg.suite,
        "time": slurm.time_min,
        "nodes": slurm.nodes,
        # one DDP process per GPU (harness.launch.jobs.RunJob sets up the process group)
        "ntasks_per_node": tasks_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "mem": _megabytes(slurm.mem_gb),
        "array_parallelism": slurm.array_parallelism,
        "signal_delay_s": slurm.signal_delay_s,
        "gpus_per_node": slurm.gpus_per_node or None,
        "partition": slurm.partition or None,
        "account": slurm.account or None,
        "qos": slurm.qos or None,
        "constraint": slurm.constraint or None,
        "setup": list(slurm.setup) or None,
        "additional_parameters": dict(slurm.additional) or None,
        # a DDP rank that dies makes srun end the job's other tasks at once, rather
        # than leave them blocked in a collective until the process group times out
        "srun_args": ["--kill-on-bad-exit=1"] if slurm.nodes * tasks_per_node > 1 else None,
    }
    return {key: value for key, value in params.items() if value is not None}


def _flag(key: str, value: Any) -> str:
    """One sbatch flag, written as submitit writes it into the job script."""
    name = key.replace("_", "-")
    return f"--{name}" if value is True else f"--{name}={value}"


def _executor(cfg: DictConfig, folder: Path, **overrides: Any) -> Any:
    import submitit

    executor = submitit.SlurmExecutor(
        folder=folder / "%j", max_num_timeout=cfg.slurm.max_num_timeout
    )
    params = _job_params(cfg) | overrides
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def _megabytes(gigabytes: float) -> str:
    return f"{round(gigabytes * 1024)}M"


def _after(job_ids: list[str]) -> str | None:
    return "afterany:" + ":".join(job_ids) if job_ids else None


def submit(plan: list[RunSpec], cfg: DictConfig) -> Submission:
    """Submit every run of ``plan`` that is neither done nor queued/running, in waves,
    and a report job after them (``check_cluster`` has passed)."""
    folder = slurm_dir(cfg)
    outcome = Submission()
    config = job_config(cfg)
    with ledger_lock(folder):
        ledger = read_ledger(folder)
        known = ledger["runs"]
        live = live_jobs(
            [known[s.run_id]["job"] for s in plan if s.run_id in known] + ledger["reports"]
        )
        todo = []
        for spec in plan:
            if run_record(cfg.results, spec.suite, spec.run_id).is_done():
                outcome.done += 1
            elif spec.run_id in known and known[spec.run_id]["job"] in live:
                outcome.queued[spec.run_id] = known[spec.run_id]["job"]
            else:
                todo.append(spec)
        array_of: dict[str, str] = {}  # run id -> array (or job) id submitted now
        size = (cfg.slurm.max_array_size or max_array_size()) if todo else 1
        for wave, chunk in plan_arrays(todo, set(outcome.queued), size):
            after = _dependencies(chunk, array_of, outcome.queued)
            executor = _executor(
                cfg, folder, job_name=f"{cfg.suite}-wave{wave}", dependency=_after(after)
            )
            with executor.batch():
                jobs = [executor.submit(RunJob(spec, config)) for spec in chunk]
            outcome.sbatch_calls += 1
            array = array_id(jobs[0].job_id)
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            for spec, job in zip(chunk, jobs, strict=True):
                array_of[spec.run_id] = array
                known[spec.run_id] = {"job": job.job_id, "wave": wave, "submitted": stamp}
            outcome.arrays.append({"wave": wave, "job": array, "tasks": len(chunk), "after": after})
            write_ledger(folder, ledger)  # after every sbatch: a crash loses no job id
        # a report after the new jobs; or, if only earlier ones remain, after those
        # unless an earlier report job still waits for them
        if outcome.arrays or (outcome.queued and not set(ledger["reports"]) & set(live)):
            after = sorted({a["job"] for a in outcome.arrays} | set(outcome.queued.values()))
            executor = _executor(
                cfg,
                folder,
                job_name=f"{cfg.suite}-report",
                dependency=_after(after),
                cpus_per_task=1,
                ntasks_per_node=1,
                mem=_megabytes(cfg.slurm.report_mem_gb),
                gpus_per_node=None,
                srun_args=None,
            )
            outcome.report_job = executor.submit(ReportJob(tuple(plan), config)).job_id
            outcome.sbatch_calls += 1
            ledger["reports"].append(outcome.report_job)
            write_ledger(folder, ledger)
        else:
            outcome.report_job = next((job for job in ledger["reports"] if job in live), None)
    return outcome


def _dependencies(
    chunk: list[RunSpec], array_of: dict[str, str], queued: dict[str, str]
) -> list[str]:
    """The jobs an array waits for: the arrays submitted now that hold its runs'
    dependencies, and the live jobs of dependencies submitted earlier."""
    jobs = set()
    for spec in chunk:
        for dep in spec.depends_on:
            if dep in array_of:
                jobs.add(array_of[dep])
            elif dep in queued:
                jobs.add(queued[dep])
    return sorted(jobs)


def print_submission(outcome: Submission, cfg: DictConfig) -> None:
    err = sys.stderr
    kept = len(outcome.queued)
    for array in outcome.arrays:
        after = f", after {','.join(array['after'])}" if array["after"] else ""
        print(f"wave {array['wave']}: job {array['job']} ({array['tasks']} runs{after})", file=err)
    if outcome.report_job:
        print(f"report: job {outcome.report_job} (after every run job)", file=err)
    if outcome.arrays:
        arrays = len(outcome.arrays)
        print(
            f"submitted {outcome.submitted} runs in {arrays} array job{'s' * (arrays != 1)}, "
            f"{outcome.sbatch_calls} sbatch calls ({outcome.done} done, "
            f"{kept} already queued or running)",
            file=err,
        )
    else:
        print(f"nothing submitted: {outcome.done} runs done, {kept} queued or running", file=err)
    if outcome.arrays or kept:
        print(
            f"logs: {slurm_dir(cfg)}/<job id>/; states: python -m harness.status "
            f"suite={cfg.suite} (with the same keys)",
            file=err,
        )


def wait(
    plan: list[RunSpec], cfg: DictConfig, outcome: Submission, patience_s: float = 600
) -> None:
    """Block until none of the suite's jobs is in the queue, with a bar of runs done.
    SLURM not answering for a while (a slurmctld restart) is waited out, up to
    ``patience_s`` in a row."""
    records = [run_record(cfg.results, spec.suite, spec.run_id) for spec in plan]
    jobs = outcome.job_ids()
    bar = tqdm(
        total=len(plan),
        desc=f"suite {cfg.suite} on SLURM",
        unit="run",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    silent_since = None
    while True:
        try:
            live = live_jobs(jobs)
            silent_since = None
        except SlurmUnavailable as error:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > patience_s:
                raise
            bar.write(f"SLURM does not answer ({error}); asking again")
            time.sleep(cfg.slurm.poll_s)
            continue
        done = [record.is_done() for record in records]
        bar.n = sum(done)
        running = sum(state in RUNNING_STATES for state, _ in live.values())
        failed = sum(
            not finished and record.failure_file.is_file()
            for finished, record in zip(done, records, strict=True)
        )
        bar.set_postfix(running=running, queued=len(live) - running, failed=failed)
        bar.refresh()
        if not live:
            break
        time.sleep(cfg.slurm.poll_s)
    bar.close()


@register_launcher("slurm")
def launch_slurm(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    submission = submit(plan, cfg)  # run.validate has run slurm.check_cluster
    print_submission(submission, cfg)
    if not submission.arrays and not submission.queued:
        return Outcome(finished=True)  # every run is done: report here
    if not cfg.wait:
        return Outcome(finished=False)
    wait(plan, cfg, submission)
    return Outcome(finished=True)
