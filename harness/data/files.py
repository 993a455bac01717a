"""Reading a dataset's files: IDX files, ImageNet-layout folders, FFCV manifests.

Shared by the dataset loaders (``datasets``) and the converter (``prepare``),
which both read the same files; neither imports the other.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness._torchvision_compat import import_torchvision
from harness.errors import UsageError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{str(path)!r} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UsageError(
            f"{str(path)!r} is truncated or corrupt: header says {shape} "
            f"({expected} bytes), file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


FASHION_MNIST_HINT = "install Debian's dataset-fashion-mnist or point data.path at the idx files"


def idx_file(root: Path, stem: str, hint: str = FASHION_MNIST_HINT) -> Path:
    """``root/stem.gz`` or ``root/stem``; a UsageError naming the file and ``hint`` (how
    to get it) where neither exists."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise UsageError(f"data.path {str(root)!r} has no {stem}(.gz); {hint}")


def check_same_classes(root: Path, train: tuple[str, ...], val: tuple[str, ...]) -> None:
    """``root/train`` and ``root/val`` must hold the same class folders (a label is an
    index into them)."""
    if train != val:
        raise UsageError(
            f"class folders of {str(root / 'val')!r} differ from train/: "
            f"{sorted(set(val) ^ set(train))[:10]}"
        )


@dataclass(frozen=True)
class FolderScan:
    """One part of an ImageNet-layout folder, in torchvision ImageFolder's order."""

    classes: tuple[str, ...]
    files: tuple[str, ...]  # absolute paths
    targets: np.ndarray  # int64

    def relative(self, root: Path) -> list[str]:
        return [os.path.relpath(path, root) for path in self.files]


def scan_folder(directory: Path) -> FolderScan:
    """``directory/<class>/*`` as torchvision's ImageFolder sees it (sorted classes and
    files, its image extensions), without opening any image: at 1.28M files that
    would take longer than an epoch. Bad images surface when they are decoded."""
    folder = import_torchvision().datasets.folder
    if not directory.is_dir():
        raise UsageError(f"{str(directory)!r} does not exist (expected <class>/<image> folders)")
    try:
        classes, class_to_idx = folder.find_classes(str(directory))
    except FileNotFoundError as error:
        raise UsageError(f"{str(directory)!r}: {error}") from None
    try:
        samples = folder.make_dataset(
            str(directory), class_to_idx, extensions=folder.IMG_EXTENSIONS
        )
    except FileNotFoundError as error:
        raise UsageError(f"{str(directory)!r}: {error}") from None
    files = tuple(path for path, _ in samples)
    targets = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    return FolderScan(tuple(classes), files, targets)


IMAGENET_BETON_HINT = "write it with `python -m harness.data.prepare imagenet root=... out=...`"


def read_manifest(beton: Path, hint: str = IMAGENET_BETON_HINT) -> dict[str, Any]:
    """The manifest beside ``<part>.beton``, checked against the beton; UsageError if the
    pair is missing, unreadable or cut short (``hint`` says how to write it)."""
    manifest = beton.with_suffix(".json")
    if not beton.is_file() or not manifest.is_file():
        missing = beton if not beton.is_file() else manifest
        raise UsageError(f"{str(missing)!r} does not exist; {hint}")
    try:
        meta = json.loads(manifest.read_text())
        size, files, classes = meta["beton_bytes"], meta["files"], meta["classes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"manifest {str(manifest)!r} is unreadable ({error}); {hint}") from None
    if beton.stat().st_size != size:
        raise UsageError(
            f"{str(beton)!r} holds {beton.stat().st_size} bytes but its manifest says {size} "
            f"(a write was cut short or the file changed); {hint}"
        )
    if not isinstance(files, list) or not isinstance(classes, list):
        raise UsageError(f"manifest {str(manifest)!r} is malformed; {hint}")
    return meta


def require_ffcv() -> None:
    """UsageError unless the optional ffcv extra is installed (to write a beton)."""
    if importlib.util.find_spec("ffcv") is None:
        raise UsageError(
            "writing .beton files needs ffcv: pip install -e '.[ffcv]' (Debian: "
            "pkg-config libturbojpeg0-dev libopencv-dev first)"
        )


def write_beton(beton: Path, items: Any, image_field: Any, workers: int, chunksize: int) -> None:
    """``items`` ((H x W x 3 uint8, label) by index) into ``beton`` with FFCV's writer,
    atomically: into a temporary file renamed into place, the stale manifest removed
    first, so a killed write leaves nothing a reader takes for whole (the caller writes
    the new manifest last)."""
    from ffcv.fields import IntField  # an optional extra ([ffcv])
    from ffcv.writer import DatasetWriter

    for stale in beton.parent.glob(f".{beton.name}.tmp-*"):
        stale.unlink()  # a write killed earlier
    temporary = beton.parent / f".{beton.name}.tmp-{os.getpid()}"
    writer = DatasetWriter(
        str(temporary), {"image": image_field, "label": IntField()}, num_workers=workers
    )
    try:
        print(f"writing {beton} ({len(items)} images)", file=sys.stderr)
        writer.from_indexed_dataset(items, chunksize=chunksize)
        beton.with_suffix(".json").unlink(missing_ok=True)  # no old manifest beside it
        os.replace(temporary, beton)
    finally:
        temporary.unlink(missing_ok=True)
