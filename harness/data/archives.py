"""Readers for the official archives of CIFAR-10, CIFAR-100, SVHN and STL-10.

Users already hold these files, unpacked in the layout torchvision's dataset
classes read (``root/cifar-10-batches-py/``, ``root/cifar-100-python/``,
``root/train_32x32.mat``..., ``root/stl10_binary/``), so ``data.path`` may be
that root or the archive's own folder. Each reader returns uint8 images
[N, 3, H, W] (channel planes, as every in-memory dataset stores them) and int64
labels, checked on load: the image size, one label per image, the label range,
a whole number of images in a raw file. A missing or wrong file is one
``UsageError`` that names it and what was expected, before any run starts.
Images may come back as views (a memory map, a transposed array); the dataset
loader copies them once, in chunks, so a 100,000-image pool is never held twice.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UsageError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# the fine labels, in the order of cifar-100-python/meta's fine_label_names (alphabetical)
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)
SVHN_CLASSES = tuple(str(digit) for digit in range(10))  # label 10 of the files is digit 0
STL10_CLASSES = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class Archive:
    """Where one dataset's files lie under ``data.path``, and how a user gets them."""

    folder: str  # torchvision's folder under its root ("" = the root itself)
    hint: str


# No official image count is enforced: a subset in the official format (a smaller
# CIFAR, SVHN without some images) is a dataset of its own, with its own fingerprint;
# what is checked is that each file is whole and agrees with itself.
ARCHIVES = {
    "cifar10": Archive(
        "cifar-10-batches-py",
        "cifar-10-batches-py/ (data_batch_1..5, test_batch) of the python version "
        "(cifar-10-python.tar.gz, or torchvision.datasets.CIFAR10(root, download=True))",
    ),
    "cifar100": Archive(
        "cifar-100-python",
        "cifar-100-python/ (train, test) of the python version "
        "(cifar-100-python.tar.gz, or torchvision.datasets.CIFAR100(root, download=True))",
    ),
    "svhn": Archive(
        "",
        "train_32x32.mat, test_32x32.mat (and extra_32x32.mat for data.svhn_extra=true) of "
        "SVHN's format 2 (or torchvision.datasets.SVHN(root, split, download=True))",
    ),
    "stl10": Archive(
        "stl10_binary",
        "stl10_binary/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin) "
        "of stl10_binary.tar.gz (or torchvision.datasets.STL10(root, download=True))",
    ),
}


@dataclass(frozen=True)
class Part:
    """One part of an archive: uint8 images [N, 3, H, W] (maybe a view), int64 labels in
    [0, classes), or ``None`` for a part without labels (STL-10's unlabeled set)."""

    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.images)


def archive_folder(name: str, path: str | None) -> Path:
    """The folder holding ``name``'s files: ``data.path/<torchvision's folder>``, or
    ``data.path`` itself where the files lie there."""
    archive = ARCHIVES[name]
    if not path:
        raise UsageError(f"dataset {name} needs data.path=<a folder holding {archive.hint}>")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"data.path {str(root)!r} does not exist (dataset {name}); {archive.hint}")
    nested = root / archive.folder
    return nested if archive.folder and nested.is_dir() else root


def _existing(folder: Path, file: str, hint: str) -> Path:
    path = folder / file
    if not path.is_file():
        raise UsageError(f"{str(path)!r} does not exist; expected {hint}")
    return path


# -- CIFAR: pickled dicts of the "python version" -------------------------------------

CIFAR_SIDE = 32
CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]},
    "cifar100": {"train": ["train"], "val": ["test"]},
}
CIFAR_LABEL_KEYS = {"cifar10": "labels", "cifar100": "fine_labels"}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles what the official batches hold (dicts, lists, strings, numpy arrays)
    and refuses any other global: a pickle may otherwise run arbitrary code. The module
    is checked before it is imported, the object after."""

    MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "_codecs")
    # numpy.ndarray, numpy.dtype, the function numpy rebuilds a pickled array with, and
    # codecs.encode (bytes pickled by Python 3 at protocol 2)
    OBJECTS = (np.ndarray, np.dtype, np.empty(0).__reduce__()[0], codecs.encode)

    def find_class(self, module: str, name: str) -> object:
        found = super().find_class(module, name) if module in self.MODULES else None
        if not any(found is allowed for allowed in self.OBJECTS):
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return found


def _unpickle(path: Path, hint: str) -> dict[str, object]:
    """A CIFAR batch as a dict with str keys. The files were pickled by Python 2, whose
    strings load as bytes here (``encoding="bytes"``, as CIFAR's own page reads them)."""
    try:
        with open(path, "rb") as handle:
            entry = _ArraysOnly(handle, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
    ) as error:
        raise UsageError(
            f"{str(path)!r} is not a pickled CIFAR batch ({error}); expected {hint}"
        ) from None
    if not isinstance(entry, dict):
        raise UsageError(
            f"{str(path)!r} holds a {type(entry).__name__}, not a dict; expected {hint}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _labels(path: Path, values: object, count: int, low: int, high: int, hint: str) -> np.ndarray:
    """``values`` as ``count`` int64 labels in ``low..high``; a UsageError naming ``path``."""
    try:
        labels = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        labels = np.empty(0)
    if not count:
        raise UsageError(f"{str(path)!r} holds no images; expected {hint}")
    if values is None or len(labels) != count or not np.array_equal(labels, np.round(labels)):
        raise UsageError(f"{str(path)!r} does not hold {count:,} integer labels; expected {hint}")
    if labels.min() < low or labels.max() > high:
        raise UsageError(
            f"{str(path)!r}: labels range over {labels.min():.0f}..{labels.max():.0f}, "
            f"not {low}..{high}; expected {hint}"
        )
    return labels.astype(np.int64)


def _cifar_batch(path: Path, label_key: str, classes: int, hint: str) -> Part:
    entry = _unpickle(path, hint)
    missing = [key for key in ("data", label_key) if key not in entry]
    if missing:
        raise UsageError(
            f"{str(path)!r} has no {' or '.join(map(repr, missing))} (its keys: "
            f"{', '.join(sorted(entry))}); expected {hint}"
        )
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UsageError(
            f"{str(path)!r}: its 'data' is not a uint8 [N, 3072] array; expected {hint}"
        )
    if data.shape[1] != 3 * CIFAR_SIDE**2:
        raise UsageError(
            f"{str(path)!r}: its 'data' rows hold {data.shape[1]} bytes, not 3072 "
            f"(3 x 32 x 32 RGB planes); expected {hint}"
        )
    labels = _labels(path, entry[label_key], len(data), 0, classes - 1, hint)
    return Part(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels)


def read_cifar(name: str, folder: Path) -> dict[str, Part]:
    """``train`` and ``val`` (the test batch) of ``cifar10`` or ``cifar100`` (fine labels)."""
    archive = ARCHIVES[name]
    classes = len(CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES)
    parts = {}
    for part, files in CIFAR_FILES[name].items():
        batches = [
            _cifar_batch(
                _existing(folder, file, archive.hint), CIFAR_LABEL_KEYS[name], classes, archive.hint
            )
            for file in files
        ]
        parts[part] = Part(
            np.concatenate([b.images for b in batches]),
            np.concatenate([b.labels for b in batches]),
        )
    return parts


# -- SVHN: MATLAB v5 files of "format 2" ----------------------------------------------

SVHN_FILES = {"train": "train_32x32.mat", "val": "test_32x32.mat", "extra": "extra_32x32.mat"}


def _svhn_mat(path: Path, hint: str) -> Part:
    from scipy.io import loadmat  # scipy is heavy to import: only where SVHN is read
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as error:
        raise UsageError(
            f"{str(path)!r} is not a MATLAB v5 file ({error}); expected {hint}"
        ) from None
    images = mat.get("X")
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[:3] != (32, 32, 3)
    ):
        found = "none" if images is None else f"{getattr(images, 'dtype', '?')} {np.shape(images)}"
        raise UsageError(
            f"{str(path)!r}: its X is not a uint8 [32, 32, 3, N] array (found {found}); "
            f"expected {hint}"
        )
    labels = _labels(path, mat.get("y"), images.shape[3], 1, 10, hint)
    labels[labels == 10] = 0  # SVHN writes digit 0 as label 10
    # [H, W, C, N] -> [N, C, H, W], a view: the loader copies it once
    return Part(images.transpose(3, 2, 0, 1), labels)


def read_svhn(folder: Path, extra: bool = False) -> dict[str, Part]:
    """``train``, ``val`` (the test set) and, with ``extra``, the 531,131 ``extra`` images."""
    archive = ARCHIVES["svhn"]
    parts = {}
    for part, file in SVHN_FILES.items():
        if part != "extra" or extra:
            path = _existing(folder, file, archive.hint)
            parts[part] = _svhn_mat(path, archive.hint)
    return parts


# -- STL-10: raw bytes, each image's planes stored column-major -----------------------

STL10_SIDE = 96
STL10_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "val": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
STL10_FOLDS = "fold_indices.txt"


def _stl10_images(path: Path, hint: str) -> np.ndarray:
    size, per_image = path.stat().st_size, 3 * STL10_SIDE**2
    if size == 0 or size % per_image:
        raise UsageError(
            f"{str(path)!r} holds {size:,} bytes, not a whole number of 3 x 96 x 96 images "
            f"({per_image:,} bytes each); expected {hint}"
        )
    shape = (size // per_image, 3, STL10_SIDE, STL10_SIDE)
    # mapped, not read: the loader copies the 100,000-image pool once, in chunks
    stored = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    return stored.transpose(0, 1, 3, 2)  # each plane is stored transposed (column-major)


def read_stl10_folds(folder: Path, train_size: int) -> list[np.ndarray] | None:
    """The 10 predefined folds of ``fold_indices.txt`` (0-based indices into the training
    images, one fold a line), checked; None where the file is absent."""
    path, hint = folder / STL10_FOLDS, ARCHIVES["stl10"].hint
    if not path.is_file():
        return None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {str(path)!r} ({error}); expected {hint}") from None
    if len(lines) != 10:
        raise UsageError(f"{str(path)!r} holds {len(lines)} lines, not 10 folds; expected {hint}")
    folds = []
    for number, line in enumerate(lines, 1):
        try:
            fold = np.array(line.split(), dtype=np.int64)
        except ValueError:
            fold = np.empty(0, dtype=np.int64)
        if (
            not len(fold)
            or fold.min() < 0
            or fold.max() >= train_size
            or len(np.unique(fold)) != len(fold)
        ):
            raise UsageError(
                f"{str(path)!r} line {number} is not distinct 0-based indices into the "
                f"{train_size:,} training images; expected {hint}"
            )
        folds.append(fold)
    return folds


def read_stl10(folder: Path) -> dict[str, Part]:
    """``train``, ``val`` (the test set) and the 100,000 ``unlabeled`` images (no labels)."""
    archive = ARCHIVES["stl10"]
    parts = {}
    for part, (image_file, label_file) in STL10_FILES.items():
        image_path = _existing(folder, image_file, archive.hint)
        images = _stl10_images(image_path, archive.hint)
        labels = None
        if label_file is not None:
            label_path = _existing(folder, label_file, archive.hint)
            raw = np.fromfile(label_path, dtype=np.uint8)
            labels = _labels(label_path, raw, len(images), 1, 10, archive.hint) - 1
        parts[part] = Part(images, labels)
    read_stl10_folds(folder, len(parts["train"]))  # checked here; the loader keeps them
    return parts
