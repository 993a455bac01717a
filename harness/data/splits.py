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

With ``data.holdout`` (a count or a fraction, class-balanced like a budget), a
validation split of labeled training images is drawn first, per seed, and the
labeled subset and the pool from the rest: disjoint from both, stored and
hash-checked with them. Tuning and the learning curves read it; the official test
set is then read once, by the final model (Oliver et al. 2018, §4.6).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
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
    # sorted: the validation split (data.holdout), in neither of the above; empty: none
    holdout: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def content_hash(self) -> str:
        size = len(self.labeled) + len(self.unlabeled) + len(self.holdout)
        return split_hash(self.labeled, size, self.holdout)


def split_hash(labeled: np.ndarray, train_size: int, holdout: np.ndarray | None = None) -> str:
    """The stored hash of a split; without a holdout the same as before holdouts
    existed, so every stored split still matches."""
    digest = hashlib.sha256(str(train_size).encode())
    digest.update(np.ascontiguousarray(labeled, dtype=np.int64).tobytes())
    if holdout is not None and len(holdout):
        digest.update(b"holdout")
        digest.update(np.ascontiguousarray(holdout, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def holdout_key(holdout: object) -> str:
    """``data.holdout``'s canonical text: ``0`` (none), a count (class-balanced total)
    or a fraction in (0, 1) of each class's labeled training images."""
    if isinstance(holdout, bool) or not isinstance(holdout, int | float):
        raise UsageError(
            f"data.holdout={holdout!r} must be 0 (none), a count (int) or a fraction in (0, 1)"
        )
    if isinstance(holdout, float) and not holdout.is_integer():
        if not 0 < holdout < 1:
            raise UsageError(f"data.holdout={holdout} must be a count or a fraction in (0, 1)")
        return repr(holdout)
    if holdout < 0:
        raise UsageError(f"data.holdout={holdout} must be >= 0 (0: no validation split)")
    return str(int(holdout))


def _holdout_counts(key: str, class_sizes: np.ndarray) -> np.ndarray:
    classes = len(class_sizes)
    if "." in key:
        counts = np.maximum(1, np.round(float(key) * class_sizes)).astype(np.int64)
    else:
        total = int(key)
        if total % classes:
            raise UsageError(
                f"data.holdout={total} cannot be split evenly over {classes} classes; use a "
                f"multiple of {classes} (e.g. {classes * max(1, total // classes)})"
            )
        counts = np.full(classes, total // classes)
    if (counts >= class_sizes).any():
        worst = int(np.argmax(counts >= class_sizes))
        raise UsageError(
            f"data.holdout={key} holds out {counts[worst]} images of class {worst}, which has "
            f"{class_sizes[worst]}: it must leave training images in every class"
        )
    return counts


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


def draw_split(dataset: Dataset, budget: object, seed: int, holdout: object = 0) -> Split:
    """The split for (dataset, budget, seed, holdout); pure, so it can validate without
    writing. The holdout is drawn first (from a list's or fold's unlabeled images), the
    labeled subset from what is left."""
    key, held_key = budget_key(budget), holdout_key(holdout)
    targets = dataset.train.targets
    has_label = targets != UNLABELED
    fixed = is_list_budget(key) or key == FOLD_BUDGET
    labeled = np.empty(0, np.int64)
    if fixed:
        labeled = predefined_fold(dataset, seed) if key == FOLD_BUDGET else None
        labeled = read_subset_list(Path(key), dataset) if labeled is None else labeled
    held = np.empty(0, np.int64)
    if held_key != "0":
        free = has_label.copy()
        free[labeled] = False
        class_sizes = np.bincount(targets[free], minlength=dataset.num_classes)
        counts = _holdout_counts(held_key, class_sizes)
        rng = numpy_rng("holdout", dataset.fingerprint, held_key, seed)
        chosen = [
            rng.permutation(np.flatnonzero(free & (targets == c)))[:k] for c, k in enumerate(counts)
        ]
        held = np.sort(np.concatenate(chosen)).astype(np.int64)
    if not fixed:
        left = has_label.copy()
        left[held] = False
        class_sizes = np.bincount(targets[left], minlength=dataset.num_classes)
        try:
            counts = per_class_counts(key, class_sizes)
        except UsageError as error:
            raise UsageError(
                f"{error} (after data.holdout={held_key})" if len(held) else str(error)
            ) from None
        # without a holdout, the same stream and images as before holdouts existed
        rng = numpy_rng("split", dataset.fingerprint, key, seed)
        chosen = [
            rng.permutation(np.flatnonzero(left & (targets == c)))[:k] for c, k in enumerate(counts)
        ]
        labeled = np.sort(np.concatenate(chosen)).astype(np.int64)
    unlabeled = np.setdiff1d(np.arange(len(targets)), np.union1d(labeled, held))
    return Split(labeled, unlabeled.astype(np.int64), key, seed, dataset.fingerprint, held)


def split_path(root: Path, dataset: Dataset, budget: str, seed: int, holdout: str = "0") -> Path:
    if is_list_budget(budget):
        digest = hashlib.sha256(budget.encode()).hexdigest()[:8]
        budget = f"-list-{Path(budget).stem}-{digest}"
    held = "" if holdout == "0" else f"-holdout{holdout}"
    name = f"{dataset.name}-{dataset.fingerprint}-labels{budget}{held}-seed{seed}.npz"
    return root / "splits" / name


def load_or_store_split(
    root: Path, dataset: Dataset, budget: object, seed: int, store: bool = True, holdout: object = 0
) -> Split:
    """The stored split, checked against its hash; drawn (and stored) on first use.

    With ``store=False`` nothing is written: the plan is validated this way
    before any run starts.
    """
    drawn = draw_split(dataset, budget, seed, holdout)
    held_key = holdout_key(holdout)
    path = split_path(root, dataset, drawn.budget, seed, held_key)
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
        arrays = {"labeled": drawn.labeled, "meta": np.array(json.dumps(meta))}
        if len(drawn.holdout):
            meta["holdout"] = held_key
            arrays |= {"holdout": drawn.holdout, "meta": np.array(json.dumps(meta))}
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
        return drawn
    try:
        with np.load(path) as stored:
            labeled = stored["labeled"]
            held = stored["holdout"] if "holdout" in stored.files else np.empty(0, np.int64)
            meta = json.loads(str(stored["meta"]))
        if not isinstance(meta, dict):
            raise ValueError("its metadata is not a mapping")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UsageError(
            f"stored split {str(path)!r} is unreadable ({error}); "
            "delete it only if no run depends on it"
        ) from None
    actual = split_hash(labeled, len(dataset.train), held)
    if actual != meta.get("hash"):
        raise UsageError(
            f"stored split {str(path)!r} does not match its hash "
            f"(stored {meta.get('hash')}, content {actual}); refusing to redraw"
        )
    if not np.array_equal(labeled, drawn.labeled) or not np.array_equal(held, drawn.holdout):
        raise UsageError(
            f"stored split {str(path)!r} differs from the one label budget {drawn.budget} "
            "gives now (was a label list edited?); refusing to change a stored split"
        )
    unlabeled = np.setdiff1d(np.arange(len(dataset.train)), np.union1d(labeled, held))
    return Split(
        labeled.astype(np.int64),
        unlabeled.astype(np.int64),
        drawn.budget,
        seed,
        dataset.fingerprint,
        held.astype(np.int64),
    )
