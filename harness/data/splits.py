"""Labeled-subset / unlabeled-pool splits.

A split is a pure function of (dataset, label budget, split seed): a
class-balanced labeled subset, and the rest of the training set as the
unlabeled pool, which also holds the images a dataset has without a label
(``UNLABELED``: no budget draws them). A budget may also be a file listing the
labeled images by file name, one per line (the published ImageNet 1% / 10%
subsets, e.g. ``n01440764_10026.JPEG``), so a published split is reproduced
exactly; such a split is the same for every seed. It does not depend on the
method, so every method of a suite sees the same labeled images. It is stored
once, with the hash of its content, and every later load checks that hash: a
changed file is an error, never a silent redraw.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.datasets import UNLABELED, Dataset
from harness.errors import UsageError
from harness.seeding import numpy_rng
from harness.store import atomic_write_bytes


@dataclass(frozen=True)
class Split:
    labeled: np.ndarray  # sorted indices into the training set
    unlabeled: np.ndarray  # sorted: the rest of the training set
    budget: str
    seed: int
    dataset_fingerprint: str

    @property
    def content_hash(self) -> str:
        return split_hash(self.labeled, len(self.labeled) + len(self.unlabeled))


def split_hash(labeled: np.ndarray, train_size: int) -> str:
    digest = hashlib.sha256(str(train_size).encode())
    digest.update(np.ascontiguousarray(labeled, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


LIST_SUFFIX = ".txt"


FOLD_BUDGET = "fold"


def is_list_budget(key: str) -> bool:
    return key.endswith(LIST_SUFFIX)


def every_image_labeled(budget: str, pool_only: int = 0) -> bool:
    """A budget (canonical text) that labels the whole training set, of a dataset with
    ``pool_only`` images without a label: the paper's ImageNet setting, where stages that
    use the pool read the labeled batches themselves. Images without a label always
    leave a pool (STL-10 with every labeled image labeled still has its 100k)."""
    fraction = not is_list_budget(budget) and ("." in budget or "e" in budget)
    return fraction and float(budget) >= 1 and not pool_only


def budget_key(budget: object) -> str:
    """A label budget's canonical text: ``100`` (a total count), ``0.1`` (a fraction),
    ``fold`` (the dataset's predefined fold number ``seed``: STL-10's 1,000-label
    protocol), or the absolute path of a list of labeled file names (``*.txt``)."""
    if budget == FOLD_BUDGET:
        return FOLD_BUDGET
    if isinstance(budget, str) and budget.endswith(LIST_SUFFIX):
        return str(Path(budget).expanduser().resolve())
    if isinstance(budget, bool):
        raise UsageError(f"label budget {budget!r} must be a count (int) or a fraction in (0, 1]")
    if isinstance(budget, int):
        return str(budget)
    if isinstance(budget, float) and math.isfinite(budget):
        return repr(budget)
    if isinstance(budget, str):
        try:
            return budget_key(int(budget))
        except ValueError:
            try:
                return budget_key(float(budget))
            except ValueError:
                pass
    raise UsageError(
        f"label budget {budget!r} must be a count (int) or a fraction in (0, 1], "
        f"{FOLD_BUDGET!r} (a dataset's predefined folds), or a file of labeled image names "
        f"(*{LIST_SUFFIX})"
    )


def read_subset_list(path: Path, dataset: Dataset) -> np.ndarray:
    """The sorted training-set indices of the files a published subset list names.

    The format is the one of the widely used ImageNet 1% / 10% lists: one file name
    per line (``n01440764_10026.JPEG``); a line may also carry the class folder
    (``n01440764/n01440764_10026.JPEG``): only the file name is matched.
    """
    if dataset.train.files is None:
        raise UsageError(
            f"label list {str(path)!r} names image files, but dataset {dataset.name!r} "
            "has none (use a count or a fraction)"
        )
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read label list {str(path)!r}: {error}") from None
    names = [Path(line.strip()).name for line in lines if line.strip() and line[0] != "#"]
    if not names:
        raise UsageError(f"label list {str(path)!r} names no files")
    index = {Path(f).name: i for i, f in enumerate(dataset.train.files)}
    missing = [name for name in names if name not in index]
    if missing:
        raise UsageError(
            f"label list {str(path)!r}: {len(missing)} of {len(names)} files are not in "
            f"{dataset.name}'s training set, e.g. {missing[:3]}"
        )
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})[:3]
        raise UsageError(f"label list {str(path)!r} names a file twice, e.g. {repeated}")
    return np.sort(np.fromiter((index[n] for n in names), np.int64, len(names)))


def predefined_fold(dataset: Dataset, seed: int) -> np.ndarray:
    """The sorted training indices of ``dataset``'s fold number ``seed`` (the budget
    ``fold``: STL-10's 10 folds of 1,000 from its ``fold_indices.txt``)."""
    if dataset.folds is None:
        raise UsageError(
            f"label budget {FOLD_BUDGET!r} labels a dataset's predefined folds (STL-10's "
            f"fold_indices.txt), but dataset {dataset.name!r} has none; valid: a count, a "
            "fraction or a list"
        )
    if not 0 <= seed < len(dataset.folds):
        raise UsageError(
            f"label budget {FOLD_BUDGET!r} takes fold number seed, but seed {seed} is not one "
            f"of {dataset.name}'s folds; valid: seeds in 0..{len(dataset.folds) - 1}"
        )
    return np.sort(dataset.folds[seed]).astype(np.int64)


def per_class_counts(budget: str, class_sizes: np.ndarray) -> np.ndarray:
    """How many labeled images of each class a budget asks for; UsageError if impossible."""
    classes = len(class_sizes)
    if "." not in budget and "e" not in budget:
        total = int(budget)
        if total < classes or total % classes:
            raise UsageError(
                f"label budget {total} cannot be split evenly over {classes} classes; "
                f"use a multiple of {classes} (e.g. {classes * max(1, total // classes)})"
            )
        per_class = total // classes
        if per_class > class_sizes.min():
            raise UsageError(
                f"label budget {total} needs {per_class} images per class but the smallest "
                f"class has {class_sizes.min()}; the largest valid budget is "
                f"{classes * class_sizes.min()}"
            )
        return np.full(classes, per_class)
    fraction = float(budget)
    if not 0 < fraction <= 1:
        raise UsageError(f"label budget fraction {fraction} must lie in (0, 1]")
    return np.maximum(1, np.round(fraction * class_sizes)).astype(np.int64)


def draw_split(dataset: Dataset, budget: object, seed: int) -> Split:
    """The split for (dataset, budget, seed); pure, so it can validate without writing."""
    key = budget_key(budget)
    targets = dataset.train.targets
    if is_list_budget(key) or key == FOLD_BUDGET:
        if key == FOLD_BUDGET:
            labeled = predefined_fold(dataset, seed)
        else:
            labeled = read_subset_list(Path(key), dataset)
        unlabeled = np.setdiff1d(np.arange(len(targets)), labeled).astype(np.int64)
        return Split(labeled, unlabeled, key, seed, dataset.fingerprint)
    class_sizes = np.bincount(targets[targets != UNLABELED], minlength=dataset.num_classes)
    counts = per_class_counts(key, class_sizes)
    rng = numpy_rng("split", dataset.fingerprint, key, seed)
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:k] for c, k in enumerate(counts)]
    labeled = np.sort(np.concatenate(chosen)).astype(np.int64)
    unlabeled = np.setdiff1d(np.arange(len(targets)), labeled).astype(np.int64)
    return Split(labeled, unlabeled, key, seed, dataset.fingerprint)


def split_path(root: Path, dataset: Dataset, budget: str, seed: int) -> Path:
    if is_list_budget(budget):
        digest = hashlib.sha256(budget.encode()).hexdigest()[:8]
        budget = f"-list-{Path(budget).stem}-{digest}"
    return root / "splits" / f"{dataset.name}-{dataset.fingerprint}-labels{budget}-seed{seed}.npz"


def load_or_store_split(
    root: Path, dataset: Dataset, budget: object, seed: int, store: bool = True
) -> Split:
    """The stored split, checked against its hash; drawn (and stored) on first use.

    With ``store=False`` nothing is written: the plan is validated this way
    before any run starts.
    """
    drawn = draw_split(dataset, budget, seed)
    path = split_path(root, dataset, drawn.budget, seed)
    if not path.exists():
        if not store:
            return drawn
        buffer = io.BytesIO()
        meta = {
            "hash": drawn.content_hash,
            "budget": drawn.budget,
            "seed": seed,
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint,
        }
        np.savez(buffer, labeled=drawn.labeled, meta=np.array(json.dumps(meta)))
        atomic_write_bytes(path, buffer.getvalue())
        return drawn
    try:
        with np.load(path) as stored:
            labeled = stored["labeled"]
            meta = json.loads(str(stored["meta"]))
        if not isinstance(meta, dict):
            raise ValueError("its metadata is not a mapping")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UsageError(
            f"stored split {str(path)!r} is unreadable ({error}); "
            "delete it only if no run depends on it"
        ) from None
    actual = split_hash(labeled, len(dataset.train))
    if actual != meta.get("hash"):
        raise UsageError(
            f"stored split {str(path)!r} does not match its hash "
            f"(stored {meta.get('hash')}, content {actual}); refusing to redraw"
        )
    if not np.array_equal(labeled, drawn.labeled):
        raise UsageError(
            f"stored split {str(path)!r} differs from the one label budget {drawn.budget} "
            "gives now (was a label list edited?); refusing to change a stored split"
        )
    unlabeled = np.setdiff1d(np.arange(len(dataset.train)), labeled).astype(np.int64)
    return Split(labeled.astype(np.int64), unlabeled, drawn.budget, seed, dataset.fingerprint)
