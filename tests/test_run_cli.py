"""End to end through ``python -m harness.run`` on real digits data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import FAST, REPO, run_cli, tree


def metrics_of(results):
    files = sorted(results.glob("digits/*/metrics.json"))
    return {f.parent.name: json.loads(f.read_text()) for f in files}


def test_default_suite_runs_end_to_end_and_a_rerun_does_nothing(results):
    first = run_cli(*FAST, f"results={results}", "report.plots=true", fresh=True)  # README run
    assert first.returncode == 0, first.stderr
    assert "| baseline |" in first.stdout and "top-1 val" in first.stdout
    (record,) = (config.parent for config in results.glob("digits/*/config.yaml"))
    for name in (
        "config.yaml",
        "metrics.json",
        "history.csv",
        "predictions.npz",
        "checkpoint.pt",
        "stage-pretrain.pt",
        "stage-finetune.pt",
    ):
        assert (record / name).is_file(), name
    history = pd.read_csv(record / "history.csv")
    assert history["stage"].tolist() == ["pretrain"] * 3 + ["finetune"]
    metrics = json.loads((record / "metrics.json").read_text())
    for key in (
        "top1_train",
        "top1_val",
        "top5_train",
        "top5_val",
        "dense_top1_val",
        "dense_top5_val",
    ):
        assert 0 <= metrics[key] <= 100
    assert metrics["top1_val"] < 90  # learned something: chance is 90% error
    report = results / "digits" / "report"  # harness.report ran at the end
    for name in ("table.md", "table.tex", "stats.csv", "summary.md", "runs.parquet", "seeds.pdf"):
        assert (report / name).is_file(), name
    assert (report / "table.md").read_text() in first.stdout
    before = tree(results)
    second = run_cli(*FAST, f"results={results}", "report.plots=true")
    assert second.returncode == 0, second.stderr
    assert "1 runs planned, 1 already done" in second.stderr
    assert tree(results) == before  # nothing rewritten
    assert second.stdout == first.stdout


def test_resume_restores_history_rows_lost_between_checkpoint_and_csv(results):
    assert run_cli(*FAST, f"results={results}").returncode == 0
    (record,) = (config.parent for config in results.glob("digits/*/config.yaml"))
    full = (record / "history.csv").read_text()
    (record / "metrics.json").unlink()  # as if killed after the checkpoint, before the CSV
    (record / "history.csv").write_text("".join(full.splitlines(keepends=True)[:-1]))
    assert run_cli(*FAST, f"results={results}").returncode == 0
    assert (record / "history.csv").read_text() == full


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    args = [
        "schedule.pretrain.epochs=8",
        "schedule.finetune.epochs=2",
        "labels=[500]",
        "progress=false",
        "seeds=[0]",
        "threads=1",
    ]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"results={reference}").returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.run", *args, f"results={killed}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    checkpoint = None
    while time.monotonic() < deadline:  # wait for the checkpoint of pretrain epoch 3
        found = list(killed.glob("digits/*/checkpoint.pt"))
        if found:
            try:
                state = torch.load(found[0], weights_only=True)
                if state["epoch"] >= 3:
                    checkpoint = state
                    break
            except Exception:  # noqa: BLE001 - replaced while we read: try again
                pass
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint is not None, "run never reached epoch 3"
    assert not list(killed.glob("digits/*/metrics.json")), "killed too late to test a resume"
    resumed = run_cli(*args, f"results={killed}")
    assert resumed.returncode == 0, resumed.stderr
    ref, got = metrics_of(reference), metrics_of(killed)
    assert ref.keys() == got.keys()
    for run_id in ref:
        ref[run_id].pop("seconds"), got[run_id].pop("seconds")
        assert got[run_id] == ref[run_id]
        a = pd.read_csv(reference / "digits" / run_id / "history.csv").drop(columns="seconds")
        b = pd.read_csv(killed / "digits" / run_id / "history.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        # provenance: one entry per attempt; the time counts both (up to the checkpoint)
        config = yaml.safe_load((killed / "digits" / run_id / "config.yaml").read_text())
        attempts = config["attempts"]
        assert len(attempts) == 2 and attempts[0]["pid"] != attempts[1]["pid"]
        for key in ("host", "torch", "threads", "world_size", "device", "started"):
            assert attempts[1][key] is not None, key
        assert attempts[1]["flush_denormal"] is False  # off unless asked for
        # the tests run from the repo's own checkout
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", attempts[1]["git_commit"]), attempts[1]
        total = json.loads((killed / "digits" / run_id / "metrics.json").read_text())["seconds"]
        assert total > checkpoint["seconds"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["suite=imagenet_nope"], "unknown suite 'imagenet_nope'; valid choices:"),
        (["methods=[baseline,nope]"], "unknown method 'nope'; valid choices: adamatch, baseline"),
        (["data.name=cifar99"], "unknown dataset (data.name) 'cifar99'; valid choices:"),
        (["model.name=resnet"], "unknown model (model.name) 'resnet'; valid choices:"),
        (["optim.batch_size=abc"], "bad value for key 'optim.batch_size'"),
        (["colour=blue"], "unknown key in the command line 'colour'"),
        (["labels=[105]"], "label budget 105 cannot be split evenly over 10 classes"),
        (["labels=[5000]"], "the largest valid budget is"),
        (
            ["suite=fashion_mnist", "data.path=/nonexistent/fmnist"],
            "data.path '/nonexistent/fmnist'",
        ),
        (["suite=image_folder"], "dataset image_folder needs data.path"),
        (["labels=[nan]"], "label budget nan must be a count (int) or a fraction"),
        (["labels=[100,100]"], "labels lists a budget twice"),
        (["flush_denormal=maybe"], "bad value for key 'flush_denormal'"),
        (["flush_denormal=true", "threads=2"], "flush_denormal=true needs threads=1"),
        (["schedule.pretrain.lr=nan"], "schedule.pretrain.lr=nan: every number setting must be"),
        (["optim.weight_decay=inf"], "optim.weight_decay=inf: every number setting must be finite"),
        (
            ["published=[{method: baseline, labels: 100, mean: 2, std: .nan}]"],
            "published[0].std=nan: every number setting must be finite",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, argv, message):
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("untouched")
    before = tree(results)
    result = run_cli(*argv, f"results={results}", "progress=false")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert tree(results) == before


def test_a_results_root_that_cannot_be_made_exits_2_before_any_work():
    """/proc takes no folders, though root passes its permission check."""
    result = run_cli("results=/proc/harness-results", "progress=false")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: results='/proc/harness-results' cannot be written (/proc is not writable): "
        "run records and their locks go there; give a writable results=FOLDER"
    )


def test_unreadable_image_in_a_folder_suite_exits_2(tmp_path):
    from tests.test_data import write_digit_folder

    root = write_digit_folder(tmp_path / "folder")
    (root / "val" / "class2" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli("suite=image_folder", f"data.path={root}", f"results={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "unreadable image" in result.stderr and "corrupt.jpg" in result.stderr
    assert not (tmp_path / "r").exists()


def test_image_folder_suite_trains_through_the_loader(tmp_path):
    from tests.test_data import write_digit_folder

    root = write_digit_folder(tmp_path / "folder", per_class=10)
    result = run_cli(
        "suite=image_folder",
        f"data.path={root}",
        "data.resize=16",
        "data.crop=12",
        "model.name=vgg_small_2",
        "data.num_workers=1",
        "labels=[15]",
        "schedule.pretrain.epochs=2",
        "schedule.finetune.epochs=1",
        "progress=false",
        f"results={tmp_path / 'r'}",
    )
    assert result.returncode == 0, result.stderr
    (metrics_file,) = (tmp_path / "r").glob("image_folder/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["labeled"] == 15 and metrics["unlabeled"] == 15


def test_dry_run_prints_the_plan_and_writes_nothing(results):
    args = [*FAST, "methods=[baseline,swwae_first]", "seeds=[0,1]", f"results={results}"]
    shown = run_cli(*args, "dry_run=true")
    assert shown.returncode == 0, shown.stderr
    assert not results.exists()
    rows = [line for line in shown.stdout.splitlines() if re.match(r"\| [0-9a-f]{12} ", line)]
    assert len(rows) == 4
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    baselines = {c[3]: c[0] for c in cells if c[1] == "baseline"}
    for _run_id, method, labels, seed, waits, state, _images, _tflops in cells:
        assert (labels, state) == ("500", "to run")
        assert waits == ("-" if method == "baseline" else baselines[seed])
    assert "4 runs planned (4 to run); dry run: nothing written" in shown.stdout
    assert run_cli(*args, "methods=[baseline]").returncode == 0
    again = run_cli(*args, "dry_run=true")
    assert again.stdout.count("| done ") == 2 and again.stdout.count("| to run ") == 2
    bad = run_cli(*args, "dry_run=maybe")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "dry_run" in bad.stderr
