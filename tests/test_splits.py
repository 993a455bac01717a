from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from harness.data import draw_split, load_dataset, load_or_store_split
from harness.data.splits import split_hash, split_path
from harness.errors import UsageError


@pytest.fixture(scope="module")
def digits():
    return load_dataset(OmegaConf.create({"name": "digits", "path": None, "resize": 16}))


def test_split_is_disjoint_complete_and_class_balanced(digits):
    split = draw_split(digits, 100, seed=0)
    assert len(split.labeled) == 100
    assert not set(split.labeled) & set(split.unlabeled)
    assert len(split.labeled) + len(split.unlabeled) == len(digits.train)
    assert np.bincount(digits.train.targets[split.labeled]).tolist() == [10] * 10


def test_fraction_budget_is_per_class(digits):
    split = draw_split(digits, 0.1, seed=0)
    sizes = np.bincount(digits.train.targets)
    assert (
        np.bincount(digits.train.targets[split.labeled]).tolist()
        == np.round(0.1 * sizes).astype(int).tolist()
    )


def test_seed_changes_the_split_and_budget_nests_nothing_else(digits):
    a, b = draw_split(digits, 100, 0), draw_split(digits, 100, 1)
    assert not np.array_equal(a.labeled, b.labeled)
    assert np.array_equal(a.labeled, draw_split(digits, 100, 0).labeled)


def test_split_is_identical_in_another_process(digits):
    code = (
        "from omegaconf import OmegaConf; from harness.data import draw_split, load_dataset;"
        "d = load_dataset(OmegaConf.create({'name':'digits','path':None,'resize':16}));"
        "print(draw_split(d, 100, 3).content_hash)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert other.stdout.strip() == draw_split(digits, 100, 3).content_hash


@pytest.mark.parametrize(
    "budget, message",
    [
        (105, "cannot be split evenly over 10 classes"),
        (5, "cannot be split evenly over 10 classes"),
        (100000, "the largest valid budget is"),
        (1.5, "must lie in (0, 1]"),
        ("many", "must be a count (int) or a fraction"),
    ],
)
def test_impossible_budgets_are_usage_errors(digits, budget, message):
    with pytest.raises(UsageError) as error:
        draw_split(digits, budget, 0)
    assert message in str(error.value)


def test_stored_split_is_reused_and_a_tampered_one_is_an_error(digits, tmp_path):
    first = load_or_store_split(tmp_path, digits, 100, 0)
    path = split_path(tmp_path, digits, "100", 0)
    assert path.is_file()
    again = load_or_store_split(tmp_path, digits, 100, 0)
    assert np.array_equal(first.labeled, again.labeled)
    with np.load(path) as stored:
        meta = stored["meta"]
        labeled = stored["labeled"].copy()
    labeled[0] = first.unlabeled[0]  # change one labeled image, keep the recorded hash
    np.savez(path, labeled=labeled, meta=meta)
    with pytest.raises(UsageError, match="does not match its hash"):
        load_or_store_split(tmp_path, digits, 100, 0)


def test_validation_does_not_write(digits, tmp_path):
    load_or_store_split(tmp_path, digits, 100, 0, store=False)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------ the validation split


def test_a_holdout_is_drawn_first_disjoint_class_balanced_and_leaves_old_splits_alone(digits):
    plain = draw_split(digits, 100, seed=0)
    assert split_hash(plain.labeled, len(digits.train)) == plain.content_hash  # as stored
    assert len(plain.holdout) == 0
    assert np.array_equal(draw_split(digits, 100, 0, holdout=0).labeled, plain.labeled)
    split = draw_split(digits, 100, seed=0, holdout=200)
    parts = [split.labeled, split.unlabeled, split.holdout]
    assert sum(map(len, parts)) == len(digits.train)
    assert len(np.unique(np.concatenate(parts))) == len(digits.train)  # disjoint, complete
    assert np.bincount(digits.train.targets[split.holdout]).tolist() == [20] * 10
    assert np.bincount(digits.train.targets[split.labeled]).tolist() == [10] * 10
    assert split.content_hash != plain.content_hash
    assert np.array_equal(draw_split(digits, 100, 0, holdout=200).holdout, split.holdout)
    assert not np.array_equal(draw_split(digits, 100, 1, holdout=200).holdout, split.holdout)
    fraction = draw_split(digits, 0.1, seed=0, holdout=0.2)
    sizes = np.bincount(digits.train.targets)
    held = np.bincount(digits.train.targets[fraction.holdout], minlength=10)
    assert held.tolist() == np.round(0.2 * sizes).astype(int).tolist()


def test_a_holdout_is_stored_with_the_split_and_checked(digits, tmp_path):
    first = load_or_store_split(tmp_path, digits, 100, 0, holdout=200)
    path = split_path(tmp_path, digits, "100", 0, "200")
    assert path.is_file() and not split_path(tmp_path, digits, "100", 0).exists()
    again = load_or_store_split(tmp_path, digits, 100, 0, holdout=200)
    assert np.array_equal(again.holdout, first.holdout)
    assert again.content_hash == first.content_hash
    with np.load(path) as stored:
        arrays = {name: stored[name].copy() for name in stored.files}
    arrays["holdout"][0] = first.unlabeled[0]  # one validation image swapped for a pool one
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match="does not match its hash"):
        load_or_store_split(tmp_path, digits, 100, 0, holdout=200)


@pytest.mark.parametrize(
    ("holdout", "message"),
    [
        ("7", "data.holdout=7 cannot be split evenly over 10 classes"),
        ("1300", "data.holdout=1300 holds out 130 images of class"),
        ("-10", "data.holdout=-10 must be >= 0"),
        ("1.5", "data.holdout=1.5 must be a count or a fraction in (0, 1)"),
        ("abc", "data.holdout='abc' must be 0 (none), a count (int) or a fraction"),
    ],
)
def test_a_bad_holdout_is_one_line_exit_2_and_writes_nothing(holdout, message, tmp_path, capsys):
    from harness.run import main

    results = tmp_path / "results"
    assert main([f"data.holdout={holdout}", f"results={results}", "dry_run=true"]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not results.exists()
    assert main(["data.holdout=1000", "labels=[500]", f"results={results}"]) == 2
    assert "(after data.holdout=1000)" in capsys.readouterr().err
    assert not results.exists()


def test_a_run_with_a_holdout_evaluates_on_it_and_reads_the_test_set_once(tmp_path):
    """Every evaluation during training (the learning curve) and the final val columns
    read the validation split; the official test set is read by the final model only
    (``*_test``); the report's columns say validation and test."""
    import json

    from tests.conftest import FAST, run_cli

    results = tmp_path / "results"
    done = run_cli(*FAST, "data.holdout=200", f"results={results}", "report.plots=false")
    assert done.returncode == 0, done.stderr
    (metrics_file,) = results.glob("digits/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["holdout"] == 200 and {"top1_test", "top5_test"} <= set(metrics)
    digits = load_dataset(OmegaConf.create({"name": "digits", "path": None, "resize": 16}))
    (split_file,) = (results / "splits").glob("*-holdout200-seed0.npz")
    with np.load(split_file) as stored:
        holdout = stored["holdout"]
    with np.load(metrics_file.parent / "predictions.npz") as predictions:
        assert np.array_equal(predictions["val_targets"], digits.train.targets[holdout])
        assert np.array_equal(predictions["test_targets"], digits.val.targets)
        val_top1 = 100 * (predictions["val_topk"][:, 0] != predictions["val_targets"]).mean()
    assert metrics["top1_val"] == pytest.approx(val_top1)
    history = (metrics_file.parent / "history.csv").read_text().splitlines()
    last = dict(zip(history[0].split(","), history[-1].split(","), strict=True))
    assert float(last["top1_val"]) == pytest.approx(val_top1)  # the curve reads it too
    assert "top-1 validation" in done.stdout
    summary = (results / "digits" / "report" / "summary.md").read_text()
    assert "## Test set (final models, read once)" in summary
