from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from harness.data import draw_split, load_dataset, load_or_store_split
from harness.data.splits import split_path
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
