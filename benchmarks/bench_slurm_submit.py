"""Planning + submitting a 1,000-run plan to a real SLURM cluster: wall time, sbatch calls.

Needs a running cluster (``slurm/cluster.sh start``, as root; SLURM_CONF set or
the script's default). The plan is the digits suite with every method, two label
budgets and 72 seeds: 1,008 runs, 144 baselines (wave 0) and 864 decoding runs
that start from them (wave 1). Jobs are submitted held (``--hold``) and
cancelled after, so nothing trains. ``sbatch`` is counted by a shim on PATH that
logs each call and runs the real one (the checks before any work make one
``sbatch --test-only`` call; the rest are submissions).

Side by side, in one run:

- harness: ``python -m harness.run launcher=slurm`` as a user runs it (a fresh
  process: imports, config, plan, checks, submission), then its phases in
  process: plan + checks (``harness.run.validate``; cold = the first call, which
  imports the dataset's loader), and submission alone;
- one job per run: the same RunJobs through submitit without ``batch()``, one
  ``sbatch`` each (what a launcher without arrays does), with submitit's 0.2 s
  pause between single submissions turned off: this measures SLURM and the
  pickling, not the pause (which alone adds 0.2 s per run).

    python benchmarks/bench_slurm_submit.py                 # 1,008 runs (goal: < 2 s)
    python benchmarks/bench_slurm_submit.py --seeds 10      # 140 runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.launch import slurm  # noqa: E402
from harness.launch.jobs import RunJob, job_config  # noqa: E402
from harness.run import validate  # noqa: E402


def counting_sbatch(folder: Path) -> Path:
    """A folder with an ``sbatch`` that appends a line to ``calls`` and runs the real one."""
    real = shutil.which("sbatch")
    shim = folder / "bin" / "sbatch"
    shim.parent.mkdir(parents=True)
    shim.write_text(f'#!/bin/sh\necho x >> "{folder}/calls"\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return shim.parent


def calls(folder: Path) -> int:
    path = folder / "calls"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def cancel_all(results: Path) -> None:
    ledger = slurm.read_ledger(results / "digits" / "slurm")
    jobs = {e["job"].split("_")[0] for e in ledger["runs"].values()} | set(ledger["reports"])
    if jobs:
        subprocess.run(["scancel", *sorted(jobs)], capture_output=True)  # some may be gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=72)
    options = parser.parse_args()
    os.environ.setdefault("SLURM_CONF", "/tmp/harness-slurm/slurm.conf")
    work = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    os.environ["PATH"] = f"{counting_sbatch(work)}:{os.environ['PATH']}"
    args = [
        "methods=all",
        "labels=[100,500]",
        f"seeds=[{','.join(map(str, range(options.seeds)))}]",
        "launcher=slurm",
        "slurm.additional.hold=true",
        "slurm.cpus_per_task=1",
        "slurm.mem_gb=1",
        "progress=false",
    ]
    try:
        rows = []

        # 1. the command a user types, in a fresh process
        results = work / "cli"
        tic = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "harness.run", *args, f"results={results}"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - tic
        assert done.returncode == 0, done.stderr
        runs = sum(1 for _ in slurm.read_ledger(results / "digits" / "slurm")["runs"])
        # its sbatch calls include the one `sbatch --test-only` of the checks
        rows.append(("harness.run (fresh process, all of it)", wall, calls(work)))
        cancel_all(results)

        # 2. its phases, in this process: the first validate imports the dataset's loader
        results = work / "phases"
        for name in ("  plan + checks, cold (validate)", "  plan + checks, warm (validate)"):
            tic = time.perf_counter()
            cfg, plan = validate([*args, f"results={results}"])
            rows.append((name, time.perf_counter() - tic, 0))
        before = calls(work)
        tic = time.perf_counter()
        outcome = slurm.submit(plan, cfg)
        submitted = time.perf_counter() - tic
        rows.append(("  submit: arrays per wave + report job", submitted, calls(work) - before))
        cancel_all(results)
        assert outcome.submitted == len(plan) == runs

        # 3. one sbatch per run, the same job bodies
        results = work / "single"
        before = calls(work)
        config = job_config(cfg)
        executor = slurm._executor(cfg, results / "digits" / "slurm")
        executor._throttling = 0.0  # submitit waits 0.2 s between single submissions: not sbatch
        tic = time.perf_counter()
        jobs = [executor.submit(RunJob(spec, config)) for spec in plan]
        single = time.perf_counter() - tic
        rows.append(("one job per run (no arrays)", single, calls(work) - before))
        subprocess.run(["scancel", *(job.job_id for job in jobs)], check=True)

        print(f"\n{len(plan)} runs ({len(outcome.arrays)} arrays: ", end="")
        print(", ".join(f"wave {a['wave']} {a['tasks']} tasks" for a in outcome.arrays), end="")
        print(f"), {os.cpu_count()} cores\n")
        print(f"| {'what':<40} | {'wall (s)':>8} | {'sbatch calls':>12} | {'vs submit':>9} |")
        print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 14}:|{'-' * 11}:|")
        for name, seconds, count in rows:
            ratio = f"{seconds / submitted:.1f}x" if count else ""
            print(f"| {name:<40} | {seconds:8.2f} | {count or '':>12} | {ratio:>9} |")
    finally:  # held jobs and pickles must not outlive the benchmark, even on failure
        for folder in ("cli", "phases"):
            if (work / folder).exists():
                cancel_all(work / folder)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
