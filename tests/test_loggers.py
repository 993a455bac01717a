"""TensorBoard event files beside history.csv (``harness.engine.loggers``), read back
with TensorBoard's own reader, on short real digits runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch import nn

from harness.engine.loggers import StepScalars, steps_done
from harness.method import METHODS, Batch, Method, Stage, register_method
from tests.conftest import REPO, run_cli

ARGS = [
    "schedule.pretrain.epochs=5",
    "schedule.finetune.epochs=1",
    "progress=false",
    "seeds=[0]",
    "labels=[500]",
    "threads=1",
]


def run_folder(results: Path) -> Path:
    (folder,) = (config.parent for config in results.glob("digits/*/config.yaml"))
    return folder


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag's (step, value) as TensorBoard shows it (purges applied)."""
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def session_starts(folder: Path) -> list[int]:
    """The steps of the purge markers (``purge_step``) in the raw event files."""
    steps = []
    for path in sorted((folder / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                steps.append(event.step)
    return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted baseline run with both loggers (the default)."""
    results = tmp_path_factory.mktemp("reference")
    done = run_cli(*ARGS, f"results={results}")
    assert done.returncode == 0, done.stderr
    return run_folder(results)


def test_event_files_hold_every_step_and_each_val_error(reference):
    history = pd.read_csv(reference / "history.csv")
    found = scalars(reference)
    steps = int(history["step"].iloc[-1])
    assert steps > len(history)  # several steps per epoch
    for tag in ("loss/cls", "loss/total", "train/lr"):
        assert [step for step, _ in found[tag]] == list(range(1, steps + 1)), tag
    assert {tag for tag in found if tag.startswith("loss/")} == {"loss/cls", "loss/total"}
    evaluated = history.dropna(subset=["top1_val"])
    for tag, column in (("val/top1_error", "top1_val"), ("val/top5_error", "top5_val")):
        assert [step for step, _ in found[tag]] == evaluated["step"].tolist()
        # float32 in the event file
        assert [value for _, value in found[tag]] == pytest.approx(
            evaluated[column].tolist(), rel=1e-6
        )
    # the epoch's first step ran at the learning rate history.csv records for the epoch
    lrs = dict(found["train/lr"])
    firsts = [1, *(history["step"].iloc[:-1] + 1)]
    assert [lrs[step] for step in firsts] == pytest.approx(history["lr"].tolist(), rel=1e-6)
    # an epoch's mean loss is the mean of its steps
    losses = dict(found["loss/cls"])
    first = 1
    for _, row in history.iterrows():
        epoch = [losses[step] for step in range(first, int(row["step"]) + 1)]
        assert sum(epoch) / len(epoch) == pytest.approx(row["loss_cls"], rel=1e-5)
        first = int(row["step"]) + 1
    assert session_starts(reference) == []  # one attempt: nothing to purge


def test_logger_csv_writes_history_but_no_event_files(tmp_path):
    argv = ["schedule.pretrain.epochs=1", *ARGS[1:], f"results={tmp_path}"]
    done = run_cli(*argv, "logger=[csv]")
    assert done.returncode == 0, done.stderr
    folder = run_folder(tmp_path)
    assert (folder / "history.csv").is_file() and (folder / "metrics.json").is_file()
    assert not (folder / "tensorboard").exists()
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    # the logger is no part of a run's id
    plans = [run_cli(*argv, "dry_run=true", *extra) for extra in ([], ["logger=[csv]"])]
    assert all(plan.returncode == 0 for plan in plans), [plan.stderr for plan in plans]
    assert folder.name in plans[0].stdout
    ids = [re.findall(r"^\| ([0-9a-f]{12}) ", p.stdout, re.MULTILINE) for p in plans]
    assert ids[0] == ids[1] == [folder.name]


class _Probe(Method):
    """The baseline's loss, plus two scalars logged beside it: a float and a tensor
    with a graph (which must not enter the loss nor keep its graph alive)."""

    def stages(self) -> list[Stage]:
        return [Stage("pretrain", initializes=True), Stage("finetune")]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch.x)
        self.log_scalar("labeled_rows", float(batch.x.shape[0]))
        self.log_scalar("confidence", logits.softmax(1).amax(1).mean())
        return {"cls": nn.functional.cross_entropy(logits, batch.y)}


@pytest.fixture
def probe_method():
    register_method("logging_probe")(_Probe)
    yield "logging_probe"
    METHODS.pop("logging_probe")


def test_a_method_scalar_is_logged_per_step_and_not_summed_into_the_loss(
    reference, probe_method, tmp_path
):
    """The probe trains in this process (it is registered here only) and ends with the
    baseline's numbers: what it logged changed nothing."""
    from harness.engine.lifecycle import train_run
    from harness.run import validate

    cfg, plan = validate([*ARGS, f"methods=[{probe_method}]", f"results={tmp_path}"])
    (spec,) = plan
    threads = torch.get_num_threads()
    try:
        result = train_run(spec, cfg)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "done", result.message
    folder = tmp_path / "digits" / spec.run_id
    found = scalars(folder)
    steps = int(pd.read_csv(folder / "history.csv")["step"].iloc[-1])
    assert [step for step, _ in found["method/confidence"]] == list(range(1, steps + 1))
    assert all(0 < value <= 1 for _, value in found["method/confidence"])
    assert all(value >= 1 and value.is_integer() for _, value in found["method/labeled_rows"])
    assert {tag for tag in found if tag.startswith("loss/")} == {"loss/cls", "loss/total"}
    assert found["loss/total"] == found["loss/cls"]
    ours = pd.read_csv(folder / "history.csv").drop(columns="seconds")
    theirs = pd.read_csv(reference / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    ours_metrics = json.loads((folder / "metrics.json").read_text())
    theirs_metrics = json.loads((reference / "metrics.json").read_text())
    ours_metrics.pop("seconds"), theirs_metrics.pop("seconds")
    assert ours_metrics == theirs_metrics


def test_log_scalar_keeps_one_detached_number_per_name_until_popped():
    method = _Probe.__new__(_Probe)  # no __init__: the scalars need none
    weight = torch.ones(3, requires_grad=True)
    method.log_scalar("mean", weight.mean())
    method.log_scalar("mean", weight.sum())  # the last value of a step counts
    method.log_scalar("rate", 0.25)
    with pytest.raises(ValueError, match="one number"):
        method.log_scalar("vector", weight)
    popped = method.pop_scalars()
    assert set(popped) == {"mean", "rate"}
    assert not popped["mean"].requires_grad and float(popped["mean"]) == 3.0
    assert method.pop_scalars() == {}
    steps = StepScalars()
    steps.add(0.1, {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, popped)
    steps.add(0.05, {"a": torch.tensor(3.0), "b": torch.tensor(4.0)}, {})
    resolved = steps.resolved()
    assert resolved["loss/total"] == [(0, 3.0), (1, 7.0)]
    assert resolved["method/mean"] == [(0, 3.0)] and resolved["method/rate"] == [(0, 0.25)]
    assert len(steps) == 2 and steps.lrs == [0.1, 0.05]


def test_a_killed_and_resumed_run_logs_every_step_once(reference, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.run", *ARGS, f"results={tmp_path}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    reached = False
    while time.monotonic() < deadline and not reached:  # the checkpoint of epoch 2
        for path in tmp_path.glob("digits/*/checkpoint.pt"):
            try:
                reached = torch.load(path, weights_only=True)["epoch"] >= 2
            except Exception:  # noqa: BLE001 - replaced while we read: try again
                pass
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert reached, "run never reached epoch 2"
    assert not list(tmp_path.glob("digits/*/metrics.json")), "killed too late to test a resume"
    folder = run_folder(tmp_path)
    time.sleep(1.1)  # event file names start with the second they were opened in
    resumed = run_cli(*ARGS, f"results={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from its checkpoint" in resumed.stderr
    # the same curves as the uninterrupted run, every step once, every value equal
    assert scalars(folder) == scalars(reference)
    (start,) = session_starts(folder)
    history = pd.read_csv(folder / "history.csv")
    assert start - 1 in history["step"].tolist()[1:]  # resumed after a checkpointed epoch


def test_steps_done_reads_the_last_row_or_counts_rows_written_before_steps_were():
    per_epoch = {"pretrain": 25, "finetune": 10}.__getitem__
    assert steps_done([], per_epoch) == 0
    assert (
        steps_done(
            [{"stage": "pretrain", "step": 25}, {"stage": "pretrain", "step": 50}], per_epoch
        )
        == 50
    )
    legacy = [{"stage": "pretrain"}, {"stage": "pretrain"}, {"stage": "finetune"}]
    assert steps_done(legacy, per_epoch) == 60
