"""CIFAR-10/100, SVHN and STL-10 as FFCV ``.beton`` files, pixel for pixel.

    python -m harness.data.prepare cifar10 root=~/data out=/data/ffcv/cifar10
    python -m harness.run suite=cifar10_ssl data.beton=/data/ffcv/cifar10 launcher=slurm

Why: the in-memory path decodes the official archive in every process that runs, and
holds every pixel in each one (STL-10's 105,000 training images are 2.9 GB, SVHN with
its extra images 1.9 GB: an array job of 40 runs on one node holds them 40 times).
A beton is memory-mapped and read through the page cache, shared by every process on
a node.

The images are stored raw (lossless) at their native size, so a run reads exactly the
pixels the archive gives (tests check it image for image): unlike ImageNet's JPEG
betons, which loader read the data is not part of a run id, and a run reads the same
split and ends with the same numbers either way. The manifest beside each
``<part>.beton`` holds what a run needs before it reads a pixel: the targets, the
classes, the training pixels' mean and std (as the in-memory path computes them),
STL-10's predefined folds and whether SVHN's extra images are in the pool
(``harness.data.datasets`` reads it with ``data.loader=ffcv``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from harness.data.datasets import DATASETS, ImageSet, LoaderArgs
from harness.data.files import read_manifest, require_ffcv, write_beton
from harness.errors import UsageError
from harness.store import atomic_write_bytes

# each archive's image size: what its beton stores and what a run reading it must use
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32, "stl10": 96}
ARCHIVES = tuple(NATIVE_SIZE)


class _ArrayImages:
    """What FFCV's writer reads: (H x W x 3 uint8 array, label) per index."""

    def __init__(self, images: ImageSet):
        assert images.images is not None
        self.images, self.targets = images.images, images.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index].permute(1, 2, 0).contiguous().numpy(), int(self.targets[index])


def _content_hash(images: ImageSet) -> str:
    """The pixels and targets of a part: a beton whose manifest holds the same hash needs
    no rewrite."""
    assert images.images is not None
    digest = hashlib.sha256(np.ascontiguousarray(images.targets, dtype=np.int64).tobytes())
    for chunk in images.images.split(8192):
        digest.update(chunk.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prepare_archive(
    name: str, root: Path, out: Path, *, svhn_extra: bool = False, workers: int = 0
) -> list[Path]:
    """``out/train.beton`` and ``out/val.beton`` (with their manifests) of the archive
    ``name`` found at ``root``; a part already written from the same pixels is kept."""
    require_ffcv()
    if svhn_extra and name != "svhn":
        raise UsageError(f"svhn_extra=true is for svhn; {name} has no extra images")
    # the archive read and checked as a run reads it, before anything is written
    dataset = DATASETS[name](LoaderArgs(str(root), NATIVE_SIZE[name], svhn_extra=svhn_extra))
    settings = {"dataset": name, "size": NATIVE_SIZE[name], "svhn_extra": svhn_extra}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part, images in (("train", dataset.train), ("val", dataset.val)):
        beton = out / f"{part}.beton"
        written.append(beton)
        content = _content_hash(images)
        try:
            meta = read_manifest(beton)
            if meta.get("settings") == settings and meta.get("content_hash") == content:
                print(f"{beton} is up to date", file=sys.stderr)
                continue
        except UsageError:
            pass
        from ffcv.fields import RGBImageField  # an optional extra ([ffcv])

        write_beton(
            beton,
            _ArrayImages(images),
            RGBImageField(write_mode="raw"),
            workers or len(os.sched_getaffinity(0)),
            chunksize=1000,
        )
        meta = {
            "part": part,
            "classes": list(dataset.classes),
            "files": [],  # images by index, no file names (the fingerprint has none either)
            "targets": images.targets.tolist(),
            "mean": list(dataset.mean),
            "std": list(dataset.std),
            "folds": [fold.tolist() for fold in dataset.folds or ()] if part == "train" else [],
            "settings": settings,
            "content_hash": content,
            "beton_bytes": beton.stat().st_size,
        }
        atomic_write_bytes(beton.with_suffix(".json"), json.dumps(meta).encode())
    return written
