"""Launchers: local_parallel and slurm give the in-process numbers; SLURM for real.

The SLURM tests run against the single-node cluster of ``slurm/cluster.sh``
(``slurm_cluster`` in conftest: skipped with the reason where it cannot start,
never under CI). Every run is real digits training at the default thread count,
which is the same under every launcher, so a run's numbers are bit-identical
whichever process or job computes them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.launch.jobs import chunks, plan_arrays, waves
from harness.launch.slurm import _executor, array_id, array_tasks
from harness.plan import make_plan
from harness.run import main as run_main
from tests.conftest import REPO, run_cli, tree

# two baselines (wave 0) and two decoders that start from them (wave 1)
PLAN = [
    "methods=[baseline,swwae_first]",
    "labels=[500]",
    "seeds=[0,1]",
    "schedule.pretrain.epochs=3",
    "schedule.decoder_layerwise.epochs=1",
    "schedule.decoder_topdown.epochs=1",
    "schedule.finetune.epochs=1",
    "progress=false",
]
SLURM = [
    "launcher=slurm",
    "slurm.cpus_per_task=1",
    "slurm.mem_gb=1",
    "slurm.time_min=10",
    "slurm.poll_s=0.5",
    "report.plots=false",  # the report job: tables and tests, no figures (seconds less)
]


def metrics_of(results: Path) -> dict[str, dict]:
    """Every run's metrics.json, without its wall time."""
    found = {}
    for path in sorted(results.glob("digits/*/metrics.json")):
        metrics = json.loads(path.read_text())
        metrics.pop("seconds")
        found[path.parent.name] = metrics
    return found


def plan_of(*args: str):
    return make_plan(load_config(list(args)))


def ledger(results: Path) -> dict:
    return json.loads((results / "digits" / "slurm" / "jobs.json").read_text())


def sacct(*jobs: str, fields: str = "JobID,State") -> list[list[str]]:
    """sacct rows of ``jobs`` (accounting lags a finished job by a moment)."""
    for _ in range(50):
        shown = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", fields, "-j", ",".join(jobs)],
            capture_output=True,
            text=True,
        )
        rows = [line.split("|") for line in shown.stdout.splitlines()]
        if rows and all(row[1] not in ("PENDING", "RUNNING", "REQUEUED") for row in rows):
            return rows
        time.sleep(0.2)
    return rows


def status_rows(*args: str) -> tuple[dict[str, dict[str, str]], str]:
    """``python -m harness.status``'s table as {run id: {column: cell}}, and its output."""
    done = run_cli(*args, module="harness.status")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(
            zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)
        )
        rows[cells["run"]] = cells
    return rows, done.stdout


@pytest.fixture
def results(tmp_path: Path):
    """The results root; every SLURM job a test submitted is cancelled after it, also
    when it fails, so no leftover job takes the cores of the next test."""
    root = tmp_path / "results"
    yield root
    for ledger_file in root.glob("*/slurm/jobs.json"):
        jobs = json.loads(ledger_file.read_text())
        ids = {array_id(e["job"]) for e in jobs["runs"].values()} | set(jobs["reports"])
        subprocess.run(["scancel", *sorted(ids)], capture_output=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """PLAN's metrics from the in-process launcher."""
    results = tmp_path_factory.mktemp("inprocess") / "results"
    done = run_cli(*PLAN, f"results={results}")
    assert done.returncode == 0, done.stderr
    return metrics_of(results)


# ---------------------------------------------------------------- planning, no cluster


def test_waves_put_each_run_one_wave_after_its_dependencies_and_chunks_cut_arrays():
    plan = plan_of(
        "methods=[baseline,sae_first,sae_all,sae_layerwise,swwae_first,swwae_all,swwae_layerwise]",
        "labels=[100,500]",
        "seeds=[0,1]",
    )
    grouped = waves(plan)
    assert [len(wave) for wave in grouped] == [4, 24]
    assert {s.method for s in grouped[0]} == {"baseline"}
    assert all(set(s.depends_on) <= {b.run_id for b in grouped[0]} for s in grouped[1])
    # dependencies outside the runs to submit (done, or queued earlier) delay nothing
    assert [len(wave) for wave in waves(grouped[1])] == [24]
    assert [len(c) for c in chunks(grouped[1], 10)] == [10, 10, 4]
    assert array_tasks("7_[0-2,5%4]") == ["7_0", "7_1", "7_2", "7_5"]


def test_a_run_waiting_on_an_earlier_job_does_not_hold_back_fresh_runs():
    plan = plan_of("methods=[baseline,swwae_first]", "labels=[100]", "seeds=[0,1]")
    baseline0, baseline1, decoder0, decoder1 = plan
    # baseline 0 is still queued from an earlier submission; baseline 1 is to submit
    todo = [baseline1, decoder0, decoder1]
    arrays = plan_arrays(todo, {baseline0.run_id}, size=1000)
    assert arrays == [(0, [baseline1]), (0, [decoder0]), (1, [decoder1])]


@pytest.mark.parametrize(("tasks", "killed"), [(1, False), (2, True)])
def test_a_ddp_job_script_ends_every_task_when_one_dies(monkeypatch, tmp_path, tasks, killed):
    """A run job of several tasks (DDP) runs them under ``srun --kill-on-bad-exit=1``: a
    rank that dies ends the job at once, not after the process group's timeout. Only the
    job script is written (no cluster)."""
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    cfg = load_config([*SLURM, "device=cpu", f"slurm.tasks_per_node={tasks}"])
    script = _executor(cfg, tmp_path)._make_submission_file_text("python -m job", "uid")
    assert f"#SBATCH --ntasks-per-node={tasks}" in script
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and srun[0].endswith(" python -m job")
    assert ("--kill-on-bad-exit=1" in srun[0]) == killed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["slurm.nodes=2"], "slurm.nodes=2"),
        (["launcher=slurm", "device=auto"], "device=cpu or device=cuda"),
        (["launcher=slurm", "device=cuda"], "slurm.gpus_per_node >= 1"),
        (["launcher=nope"], "local_parallel, slurm"),
        (["slurm.mem_gb=0"], "slurm.mem_gb must be > 0"),
        (["parallel=0"], "parallel must be a positive integer"),
        (["slurm.cpus"], "is not of the form key=value"),
        (["slurm.cpus=2"], "slurm.cpus_per_task"),
        (["slurm.time_min=10", "slurm.signal_delay_s=600"], "valid: below 600"),
    ],
)
def test_bad_launcher_settings_exit_2_before_any_work(results, capsys, args, message):
    assert run_main([*args, f"results={results}"]) == 2
    assert message in capsys.readouterr().err
    assert not results.exists()


def test_slurm_without_its_commands_exits_2_naming_them(results, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(os.__file__).parent))  # no sbatch, squeue, ...
    assert run_main(["launcher=slurm", f"results={results}"]) == 2
    assert "missing: sbatch, squeue, srun, sinfo, scontrol" in capsys.readouterr().err
    assert not results.exists()


def test_status_shows_planned_incomplete_failed_and_done(results):
    plan = plan_of(*PLAN)
    base = results / "digits"
    (base / plan[1].run_id).mkdir(parents=True)
    (base / plan[1].run_id / "checkpoint.pt").write_bytes(b"")
    (base / plan[2].run_id).mkdir()
    trace = "Traceback (most recent call last):\n  File x\nValueError: the data broke\n"
    (base / plan[2].run_id / "failed.json").write_text(
        json.dumps({"error": "ValueError: the data broke", "traceback": trace})
    )
    rows, text = status_rows(*PLAN, f"results={results}")
    assert [rows[s.run_id]["state"] for s in plan] == ["planned", "incomplete", "failed", "planned"]
    assert rows[plan[2].run_id]["detail"] == "ValueError: the data broke"
    assert "\n  ValueError: the data broke" in text  # the error's last lines below the table
    assert "2 planned, 1 incomplete, 1 failed" in text


# ---------------------------------------------------------------- local_parallel


def test_local_parallel_gives_the_inprocess_metrics_and_waits_for_dependencies(results, reference):
    done = run_cli(*PLAN, "launcher=local_parallel", "parallel=2", f"results={results}")
    assert done.returncode == 0, done.stderr
    assert "| baseline |" in done.stdout  # the report's table
    assert metrics_of(results) == reference
    for spec in plan_of(*PLAN):
        for source in spec.depends_on:  # started only after its baseline had finished
            finished = (results / "digits" / source / "metrics.json").stat().st_mtime_ns
            started = (results / "digits" / spec.run_id / "config.yaml").stat().st_mtime_ns
            assert started >= finished


# ---------------------------------------------------------------- slurm, on the real cluster


def test_slurm_arrays_per_wave_give_the_inprocess_metrics_and_resubmission_skips(
    slurm_cluster, results, reference
):
    done = run_cli(*PLAN, *SLURM, "wait=true", f"results={results}")
    assert done.returncode == 0, done.stderr
    assert "submitted 4 runs in 2 array jobs, 3 sbatch calls" in done.stderr
    assert "| baseline |" in done.stdout
    assert metrics_of(results) == reference

    jobs = ledger(results)["runs"]
    by_wave: dict[int, set[str]] = {}
    for entry in jobs.values():
        by_wave.setdefault(entry["wave"], set()).add(entry["job"])
    first, second = (sorted(by_wave[w]) for w in (0, 1))
    array0, array1 = first[0].split("_")[0], second[0].split("_")[0]
    assert first == [f"{array0}_0", f"{array0}_1"]  # one sbatch: one array, two tasks
    assert second == [f"{array1}_0", f"{array1}_1"]
    rows = sacct(array0, array1, fields="JobID,State,Start,End")
    assert sorted(row[:2] for row in rows) == sorted([job, "COMPLETED"] for job in first + second)
    ends = [row[3] for row in rows if row[0] in first]
    starts = [row[2] for row in rows if row[0] in second]
    assert min(starts) >= max(ends)  # the decoders waited for their baselines (ISO times)

    (report_job,) = ledger(results)["reports"]
    import submitit

    aggregated = submitit.SlurmJob(results / "digits" / "slurm" / "%j", report_job).result()
    assert aggregated == str(results.resolve() / "digits" / "report")

    before = tree(results)
    again = run_cli(*PLAN, *SLURM, "wait=true", f"results={results}")
    assert again.returncode == 0, again.stderr
    assert "nothing submitted: 4 runs done, 0 queued or running" in again.stderr
    assert tree(results) == before


def test_usr2_mid_stage_requeues_and_the_run_ends_with_uninterrupted_metrics(
    slurm_cluster, tmp_path, results
):
    args = [*PLAN, "seeds=[0]", "schedule.pretrain.epochs=25"]
    uninterrupted = tmp_path / "inprocess"
    beside = subprocess.Popen(  # threads=1: its numbers do not depend on what runs beside it
        [sys.executable, "-m", "harness.run", *args, f"results={uninterrupted}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    submitted = run_cli(*args, *SLURM, f"results={results}")
    assert submitted.returncode == 0, submitted.stderr
    baseline, decoder = plan_of(*args)
    job = ledger(results)["runs"][baseline.run_id]["job"]
    history = results / "digits" / baseline.run_id / "history.csv"
    for _ in range(600):  # signal once an epoch is checkpointed
        if history.is_file() and len(history.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    for _ in range(200):
        state = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True
        ).stdout.strip()
        if state == "PENDING|BeginTime":  # requeued: SLURM holds it ~2 minutes
            break
        time.sleep(0.1)
    assert state == "PENDING|BeginTime"
    rows, _ = status_rows(*args, f"results={results}")
    assert rows[baseline.run_id]["state"] == "queued"
    assert rows[baseline.run_id]["requeued"] == "1"
    # the decoder keeps waiting while its baseline is requeued
    assert (rows[decoder.run_id]["state"], rows[decoder.run_id]["detail"]) == (
        "queued",
        "Dependency",
    )
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    finished = run_cli(*args, *SLURM, "wait=true", f"results={results}")
    assert finished.returncode == 0, finished.stderr
    # nothing is submitted again: each run is done by now or still in its job (the
    # resumed baseline may finish while this command starts)
    said = re.search(
        r"nothing submitted: (\d+) runs done, (\d+) queued or running", finished.stderr
    )
    assert said and int(said[1]) + int(said[2]) == 2, finished.stderr

    assert beside.wait(timeout=300) == 0
    assert metrics_of(results) == metrics_of(uninterrupted)
    log = (results / "digits" / "slurm" / job / f"{job}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log
    resumed = [line for line in log.splitlines() if "resuming from its checkpoint" in line]
    assert len(resumed) == 1 and "stage pretrain after epoch" in resumed[0]
    assert int(resumed[0].split()[-1]) < 25  # mid-stage
    rows, _ = status_rows(*args, f"results={results}")
    assert (rows[baseline.run_id]["state"], rows[baseline.run_id]["requeued"]) == ("done", "1")


def test_a_failing_run_fails_alone_and_status_shows_its_error(slurm_cluster, results):
    args = [*PLAN, "methods=[baseline]"]
    plan = plan_of(*args)
    broken = results / "digits" / plan[1].run_id
    broken.mkdir(parents=True)  # as if started on other data: the run refuses to resume
    (broken / "config.yaml").write_text(yaml.safe_dump({"split_hash": "0" * 16}))
    done = run_cli(*args, *SLURM, "wait=true", f"results={results}")
    assert done.returncode == 1
    assert "suite digits: 1 done, 1 failed, 0 skipped of 2 runs" in done.stderr
    jobs = ledger(results)["runs"]
    rows = dict(sacct(*(jobs[s.run_id]["job"] for s in plan)))
    assert [rows[jobs[s.run_id]["job"]] for s in plan] == ["COMPLETED", "FAILED"]
    rows, text = status_rows(*args, f"results={results}")
    assert [rows[s.run_id]["state"] for s in plan] == ["done", "failed"]
    assert rows[plan[1].run_id]["detail"].startswith(f"UsageError: run {plan[1].run_id} was")
    assert "refusing to resume on other images" in text  # the traceback's last lines
    assert f"failed: {plan[1].run_id} (baseline labels=500 seed=1)" in text
    assert "1 failed, 1 done" in text


def test_queued_runs_are_not_submitted_twice_and_cancelled_ones_are(slurm_cluster, results):
    args = [*PLAN, "methods=[baseline]", *SLURM, "slurm.additional.hold=true"]
    first = run_cli(*args, f"results={results}")
    assert first.returncode == 0, first.stderr
    assert "submitted 2 runs in 1 array job, 2 sbatch calls" in first.stderr
    jobs = ledger(results)
    again = run_cli(*args, f"results={results}")
    assert again.returncode == 0, again.stderr
    assert "nothing submitted: 0 runs done, 2 queued or running" in again.stderr
    assert ledger(results) == jobs
    rows, _ = status_rows(*args, f"results={results}")
    assert [(r["state"], r["detail"]) for r in rows.values()] == [("queued", "JobHeldUser")] * 2

    arrays = sorted({entry["job"].split("_")[0] for entry in jobs["runs"].values()})
    subprocess.run(["scancel", *arrays, *jobs["reports"]], check=True)
    sacct(*arrays)  # wait until accounting has the cancellation
    rows, _ = status_rows(*args, f"results={results}")
    assert [(r["state"], r["detail"]) for r in rows.values()] == [
        ("failed", "SLURM: CANCELLED")
    ] * 2
    third = run_cli(*args, "slurm.max_array_size=1", f"results={results}")
    assert "submitted 2 runs in 2 array jobs, 3 sbatch calls" in third.stderr  # arrays of one task
    resubmitted = ledger(results)
    assert {e["job"] for e in resubmitted["runs"].values()}.isdisjoint(
        {e["job"] for e in jobs["runs"].values()}
    )
    arrays = sorted({entry["job"].split("_")[0] for entry in resubmitted["runs"].values()})
    subprocess.run(["scancel", *arrays, *resubmitted["reports"]], check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["slurm.partition=gpu"], "unknown slurm.partition 'gpu'; valid choices: debug"),
        (["slurm.mem_gb=4096"], "SLURM refuses these job settings (--time=30 --nodes=1"),
        (["slurm.max_array_size=5000"], "exceeds the cluster's MaxArraySize (1001)"),
    ],
)
def test_settings_the_cluster_refuses_exit_2_before_any_work(
    slurm_cluster, results, capsys, args, message
):
    assert run_main(["launcher=slurm", *args, f"results={results}"]) == 2
    assert message in capsys.readouterr().err
    assert not results.exists()


def test_a_slurm_job_with_two_tasks_trains_one_run_with_ddp(slurm_cluster, results, tmp_path):
    """slurm.tasks_per_node=2 (what gpus_per_node=2 sets on a GPU cluster): both tasks
    are DDP ranks of one run; its metrics match one process within tolerance."""
    run = ["methods=[baseline]", "labels=[500]", "seeds=[0]", "model.dropout=0"]
    run += ["schedule.pretrain.epochs=3", "schedule.finetune.epochs=1", "threads=1"]
    run += ["progress=false", "report.plots=false"]
    one = run_cli(*run, f"results={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    done = run_cli(
        *run, *SLURM, "slurm.tasks_per_node=2", "slurm.mem_gb=2", "wait=true", f"results={results}"
    )
    assert done.returncode == 0, done.stderr
    (entry,) = ledger(results)["runs"].values()
    job = entry["job"]
    logs = sorted(p.name for p in (results / "digits" / "slurm").glob(f"*/{job}_*_log.out"))
    assert logs == [f"{job}_0_log.out", f"{job}_1_log.out"]  # two tasks, one run
    (report_job,) = ledger(results)["reports"]
    assert len(list((results / "digits" / "slurm").glob(f"*/{report_job}_*_log.out"))) == 1
    (single,) = metrics_of(tmp_path / "one").values()
    (double,) = metrics_of(results).values()
    assert abs(single["top1_val"] - double["top1_val"]) <= 1.5
