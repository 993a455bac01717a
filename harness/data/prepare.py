"""Write FFCV ``.beton`` files from an ImageNet-layout folder, and make such folders.

    python -m harness.data.prepare imagenet root=/data/imagenet out=/data/ffcv
    python -m harness.data.prepare demo out=/tmp/fmnist-folder     # small real JPEG folder
    python -m harness.data.prepare cifar10 root=~/data out=/data/ffcv/cifar10  # (or cifar100,
        # svhn [svhn_extra=true], stl10): raw pixels, see harness.data.archive_betons

``imagenet`` scans ``root/train/<wnid>/*`` and ``root/val/<wnid>/*`` with
torchvision's ImageFolder (so classes and files come in exactly the order the
``loader=torchvision`` path reads them, and a split's indices mean the same image
on both paths) and writes, per part, ``<part>.beton`` (JPEG images with their
shorter side resized down to ``short_side``, 256 by default: the 256/224 pipeline
reads nothing finer, and decompressing a 256-px JPEG instead of a ~500-px one is what
makes loading fast; and int labels) and ``<part>.json`` (classes, the
files in order, the settings, the beton's size). Each is written to a temporary
file and renamed into place, the manifest last, and the reader checks the
beton's size against its manifest: a killed write leaves nothing that is later
read as whole. Parts are resumable one by one: a part whose manifest matches
the folder and the settings is skipped; a part cut short is written again.

``demo`` turns Fashion-MNIST (Debian's dataset-fashion-mnist) into a few classes
of real JPEGs in the same layout, upsampled and non-square, so the ImageNet code
path (both loaders, this writer, the published-list reader) runs on real images
on any CPU in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.cli import Command, boolean, run_command, typed_keys
from harness.data.archive_betons import ARCHIVES, prepare_archive
from harness.data.files import (
    FASHION_MNIST_CLASSES,
    FolderScan,
    check_same_classes,
    idx_file,
    read_idx,
    read_manifest,
    require_ffcv,
    scan_folder,
    write_beton,
)
from harness.errors import UsageError, unknown
from harness.store import atomic_write_bytes

PARTS = ("train", "val")


class _DecodedImages:
    """What FFCV's writer reads: (HxWx3 uint8 array, label) per index, the shorter
    side resized down to ``short_side`` (0: as stored)."""

    def __init__(self, scan: FolderScan, short_side: int):
        self.scan, self.short_side = scan, short_side

    def __len__(self) -> int:
        return len(self.scan.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.scan.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                width, height = image.size
                scale = self.short_side / min(width, height)
                if self.short_side and scale < 1:
                    size = (max(1, round(width * scale)), max(1, round(height * scale)))
                    image = image.resize(size, Image.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except OSError as error:
            raise RuntimeError(f"unreadable image {path!r}: {error}") from None
        return array, int(self.scan.targets[index])


def _settings(
    short_side: int, max_resolution: int, jpeg_quality: int, write_mode: str
) -> dict[str, Any]:
    return {
        "short_side": short_side,
        "max_resolution": max_resolution,
        "jpeg_quality": jpeg_quality,
        "mode": write_mode,
    }


def _files_hash(files: list[str]) -> str:
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]


def write_part(
    scan: FolderScan,
    root: Path,
    out: Path,
    part: str,
    *,
    short_side: int,
    max_resolution: int,
    jpeg_quality: int,
    write_mode: str,
    workers: int,
) -> bool:
    """Write ``out/<part>.beton`` and its manifest; False if they were already up to date."""
    from ffcv.fields import RGBImageField  # an optional extra ([ffcv])

    relative = scan.relative(root / part)
    settings = _settings(short_side, max_resolution, jpeg_quality, write_mode)
    beton = out / f"{part}.beton"
    try:
        meta = read_manifest(beton)
        if meta.get("settings") == settings and meta.get("files_hash") == _files_hash(relative):
            return False
    except UsageError:
        pass
    image_field = RGBImageField(
        write_mode=write_mode, max_resolution=max_resolution or None, jpeg_quality=jpeg_quality
    )
    write_beton(beton, _DecodedImages(scan, short_side), image_field, workers, chunksize=100)
    meta = {
        "part": part,
        "root": str(root.resolve()),
        "classes": list(scan.classes),
        "files": relative,
        "files_hash": _files_hash(relative),
        "settings": settings,
        "beton_bytes": beton.stat().st_size,
    }
    atomic_write_bytes(beton.with_suffix(".json"), json.dumps(meta).encode())
    return True


def prepare_imagenet(
    root: Path,
    out: Path,
    *,
    short_side: int = 256,
    max_resolution: int = 0,
    jpeg_quality: int = 90,
    write_mode: str = "jpg",
    workers: int = 0,
    parts: tuple[str, ...] = PARTS,
) -> list[Path]:
    """Both parts' betons (see the module docstring); returns the paths written or kept."""
    require_ffcv()
    scans = {part: scan_folder(root / part) for part in parts}  # all checks before any write
    if len(parts) == 2:
        check_same_classes(root, scans["train"].classes, scans["val"].classes)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part, scan in scans.items():
        fresh = write_part(
            scan,
            root,
            out,
            part,
            short_side=short_side,
            max_resolution=max_resolution,
            jpeg_quality=jpeg_quality,
            write_mode=write_mode,
            workers=workers or len(os.sched_getaffinity(0)),
        )
        if not fresh:
            print(f"{out / f'{part}.beton'} is up to date", file=sys.stderr)
        written.append(out / f"{part}.beton")
    return written


def make_demo_folder(
    out: Path,
    source: Path,
    *,
    classes: int = 4,
    train_per_class: int = 150,
    val_per_class: int = 50,
    width: int = 48,
    height: int = 40,
) -> None:
    """Fashion-MNIST's first ``classes`` classes as RGB JPEGs in the ImageNet layout
    (``train/<class>/<class>_<n>.JPEG`` from its train set, ``val/`` from its test set),
    upsampled to ``width`` x ``height`` so the shorter-side resize and center crop matter."""
    if not 1 <= classes <= 10:
        raise UsageError(f"classes={classes} must lie in 1..10 (Fashion-MNIST has 10)")
    for part, prefix, per_class in (
        ("train", "train", train_per_class),
        ("val", "t10k", val_per_class),
    ):
        images = read_idx(idx_file(source, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(idx_file(source, f"{prefix}-labels-idx1-ubyte"))
        for label in range(classes):
            name = f"n{label:08d}"  # a WordNet-id-like folder name
            folder = out / part / name
            folder.mkdir(parents=True, exist_ok=True)
            chosen = np.flatnonzero(labels == label)[:per_class]
            if len(chosen) < per_class:
                raise UsageError(
                    f"{part}: class {FASHION_MNIST_CLASSES[label]!r} has {len(chosen)} images, "
                    f"fewer than {per_class}"
                )
            for n, index in enumerate(chosen):
                image = Image.fromarray(images[index]).convert("RGB")
                image = image.resize((width, height), Image.BICUBIC)
                target = folder / f"{name}_{n}.JPEG"
                if not target.exists():
                    buffer = _jpeg(image)
                    atomic_write_bytes(target, buffer)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


COMMANDS = {
    "imagenet": "root=DIR out=DIR [short_side=256] [max_resolution=0] [jpeg_quality=90] "
    "[write_mode=jpg|raw|smart] [workers=0] [parts=train,val]",
    "demo": "out=DIR [source=/usr/share/datasets/fashion-mnist] [classes=4] "
    "[train_per_class=150] [val_per_class=50] [width=48] [height=40]",
    **{name: "root=DIR out=DIR [workers=0]" for name in ARCHIVES},
}
COMMANDS["svhn"] += " [svhn_extra=false]"


IMAGENET_KEYS = {
    "root": Path,
    "out": Path,
    "short_side": int,
    "max_resolution": int,
    "jpeg_quality": int,
    "write_mode": str,
    "workers": int,
    "parts": str,
}
DEMO_KEYS = {
    "out": Path,
    "source": Path,
    "classes": int,
    "train_per_class": int,
    "val_per_class": int,
    "width": int,
    "height": int,
}
ARCHIVE_KEYS = {"root": Path, "out": Path, "workers": int, "svhn_extra": boolean}
COMMAND = Command(
    usage=f"python -m harness.data.prepare imagenet|demo|{'|'.join(ARCHIVES)} key=value ...",
    summary="imagenet: write <out>/train.beton and val.beton (FFCV) with their manifests from "
    "an ImageNet-layout folder (root/train/<wnid>/*, root/val/<wnid>/*); parts already up to "
    "date are skipped. demo: a small real JPEG folder in that layout from Fashion-MNIST. "
    "cifar10, cifar100, svhn, stl10: their official archives at root (the layout torchvision "
    "reads) as <out>/train.beton and val.beton, raw pixels at the native size.",
    keys=[(f"prepare {name}", keys) for name, keys in COMMANDS.items()],
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, _main, argv)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        raise unknown("command", argv[0] if argv else "(none)", COMMANDS)
    command, rest = argv[0], argv[1:]
    if command in ARCHIVES:
        args = typed_keys(rest, ARCHIVE_KEYS, f"prepare {command}")
        for key in ("root", "out"):
            if key not in args:
                raise UsageError(f"prepare {command} needs {key}=DIR: {COMMANDS[command]}")
        if args.get("workers", 0) < 0:
            raise UsageError(f"workers={args['workers']} must be >= 0 (0: one per CPU)")
        root, out = args.pop("root"), args.pop("out")
        for path in prepare_archive(command, root, out, **args):
            print(path)
        return 0
    if command == "imagenet":
        args = typed_keys(rest, IMAGENET_KEYS, "prepare imagenet")
        for key in ("root", "out"):
            if key not in args:
                raise UsageError(f"prepare imagenet needs {key}=DIR: {COMMANDS['imagenet']}")
        parts = tuple(p for p in args.pop("parts", "train,val").split(",") if p)
        for part in parts:
            if part not in PARTS:
                raise unknown("part", part, PARTS)
        if args.get("write_mode", "jpg") not in ("jpg", "raw", "smart"):
            raise unknown("write_mode", args["write_mode"], ("jpg", "raw", "smart"))
        if not 1 <= args.get("jpeg_quality", 90) <= 100:
            raise UsageError(f"jpeg_quality={args['jpeg_quality']} must lie in 1..100")
        for key in ("short_side", "max_resolution"):
            if args.get(key, 0) < 0:
                raise UsageError(f"{key} must be >= 0 (0: no limit)")
        root, out = args.pop("root"), args.pop("out")
        for path in prepare_imagenet(root, out, parts=parts, **args):
            print(path)
        return 0
    args = typed_keys(rest, DEMO_KEYS, "prepare demo")
    if "out" not in args:
        raise UsageError(f"prepare demo needs out=DIR: {COMMANDS['demo']}")
    source = args.pop("source", Path("/usr/share/datasets/fashion-mnist"))
    out = args.pop("out")
    make_demo_folder(out, source, **args)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
