"""One process per run: the run lock, alone and between two real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from harness.lock import RunLock, is_held, read_holder
from tests.conftest import FAST, REPO, run_cli

HOLD = """
import sys, time
from harness.lock import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder_process(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_held_lock_is_refused_with_its_holder_and_taken_over_once_the_holder_dies(tmp_path):
    holder = _holder_process(tmp_path)
    try:
        lock = RunLock(tmp_path)
        assert not lock.acquire()
        assert lock.holder["pid"] == holder.pid and lock.holder["host"]
        assert is_held(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # killed: the file still names it, but the kernel released the lock
    assert read_holder(tmp_path)["pid"] == holder.pid
    assert not is_held(tmp_path)
    with RunLock(tmp_path) as lock:
        assert lock.acquired and read_holder(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / "lock").exists()  # released: removed


def test_a_run_held_by_another_process_is_skipped_and_counted_as_running(results):
    args = [*FAST, f"results={results}", "report.plots=false"]
    planned = run_cli(*args, "dry_run=true")
    run_id = planned.stdout.splitlines()[2].split("|")[1].strip()
    folder = results / "digits" / run_id
    holder = _holder_process(folder)
    try:
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        assert f"run {run_id} (baseline labels=500 seed=0) skipped: " in done.stderr
        assert f":{holder.pid}" in done.stderr  # names the holder
        assert "0 done, 0 failed, 1 skipped of 1 runs" in done.stderr
        assert "(1 running)" in done.stdout  # the report's seeds column
        assert not (folder / "config.yaml").exists()  # nothing of the run was touched
        shown = run_cli(*args, "dry_run=true")
        assert "running" in shown.stdout.splitlines()[2]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    again = run_cli(*args)  # the holder died: its lock is taken over
    assert again.returncode == 0, again.stderr
    assert (folder / "metrics.json").is_file()


def test_two_processes_started_at_once_train_every_run_exactly_once(tmp_path):
    args = [*FAST, "labels=[100,500]", "seeds=[0,1]", "report.plots=false"]
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    command = [sys.executable, "-m", "harness.run", *args, f"results={shared}"]
    both = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in both]
    for process, (_, err) in zip(both, outputs, strict=True):
        assert process.returncode == 0, err.decode()
    single = run_cli(*args, f"results={alone}")
    assert single.returncode == 0, single.stderr

    def metrics(root: Path) -> dict[str, dict]:
        found = {}
        for path in root.glob("digits/*/metrics.json"):
            values = json.loads(path.read_text())
            values.pop("seconds")
            found[path.parent.name] = values
        return found

    assert metrics(shared) == metrics(alone) and len(metrics(alone)) == 4
    for config in shared.glob("digits/*/config.yaml"):  # one attempt each: trained once
        assert len(yaml.safe_load(config.read_text())["attempts"]) == 1
    stderr = b"".join(err for _, err in outputs).decode()
    skipped = stderr.count(" skipped: ")
    trained = sum(
        len(yaml.safe_load(c.read_text())["attempts"]) for c in shared.glob("digits/*/config.yaml")
    )
    assert trained == 4, stderr
    assert skipped <= 4
    assert not list(shared.glob("digits/*/lock"))


def test_a_results_root_that_cannot_hold_folders_exits_2_writing_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    done = run_cli(*FAST, f"results={blocker / 'results'}")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot be written" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
