"""Small files in exactly the official formats of CIFAR-10, CIFAR-100, SVHN and STL-10.

None of these archives can be downloaded where the tests run, so the tests write
their own, byte for byte in the official layouts, from real images: Fashion-MNIST
(Debian's dataset-fashion-mnist) and MNIST (``tools/fetch_mnist.sh``), resized and
colored (a foreground and a background color per image), so the readers see real
image content, not noise.

- CIFAR "python version": dicts pickled by Python 2's cPickle at protocol 2, so
  Python 2 ``str`` (keys such as ``'data'``, numpy's raw bytes) is written as
  ``BINSTRING``: it loads as ``b'data'`` with ``encoding="bytes"`` (CIFAR's page)
  and as ``'data'`` with ``encoding="latin1"`` (torchvision). ``data`` is uint8
  [N, 3072], each row the R, G and B planes of a 32 x 32 image, row-major.
- SVHN format 2: MATLAB v5 files (``scipy.io.savemat``), ``X`` uint8 [32, 32, 3, N],
  ``y`` uint8 [N, 1] in 1..10, 10 standing for the digit 0.
- STL-10 binary: raw uint8 bytes, per image 3 planes of 96 x 96 each stored
  column-major; labels one byte each in 1..10; ``fold_indices.txt`` 10 lines of
  space-separated 0-based indices into the training images.
"""

from __future__ import annotations

import pickle
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F

from harness.data.files import idx_file, read_idx

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MNIST = Path("~/.cache/harness/mnist").expanduser()


@lru_cache(maxsize=4)
def _idx_pair(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return images, labels


def real_images(
    count: int, side: int, *, source: Path = FASHION_MNIST, test: bool = False, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images of an MNIST-format set as uint8 [N, 3, side, side] RGB (resized,
    each with its own foreground and background color) and their labels 0..9."""
    images, labels = _idx_pair(source, "t10k" if test else "train")
    if offset + count > len(images):
        raise ValueError(f"{source} holds {len(images)} images, not {offset + count}")
    gray = torch.from_numpy(images[offset : offset + count].copy())[:, None].float()
    gray = F.interpolate(gray, size=(side, side), mode="bilinear", antialias=True)
    gray = gray.clamp(0, 255).div(255)
    rng = np.random.default_rng(offset + 7 * count + side)
    ink = torch.from_numpy(rng.integers(0, 256, (count, 3, 1, 1))).float()
    paper = torch.from_numpy(rng.integers(0, 256, (count, 3, 1, 1))).float()
    rgb = gray * ink + (1 - gray) * paper
    return rgb.round().to(torch.uint8).numpy(), labels[offset : offset + count]


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did at protocol 2: ``str`` and ``bytes`` are both
    Python 2 ``str`` (``SHORT_BINSTRING``/``BINSTRING``), numpy under ``numpy.core``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
            self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def python2_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        _Python2Pickler(handle, protocol=2).dump(entry)


def _cifar_entry(images: np.ndarray, labels: dict[bytes, list[int]], batch: str) -> dict:
    names = [f"real_image_{batch}_{i:05d}.png".encode() for i in range(len(images))]
    return {
        b"batch_label": batch.encode(),
        **labels,
        b"data": np.ascontiguousarray(images.reshape(len(images), 3 * 32 * 32)),
        b"filenames": names,
    }


def write_cifar10(root: Path, per_batch: int, test: int) -> Path:
    """``root/cifar-10-batches-py/`` with 5 training batches of ``per_batch`` images, a
    test batch of ``test`` and ``batches.meta``; the train images and labels in order."""
    folder = root / "cifar-10-batches-py"
    for n in range(5):
        images, labels = real_images(per_batch, 32, offset=n * per_batch)
        entry = _cifar_entry(images, {b"labels": labels.tolist()}, f"training batch {n + 1} of 5")
        python2_pickle(folder / f"data_batch_{n + 1}", entry)
    images, labels = real_images(test, 32, test=True)
    entry = _cifar_entry(images, {b"labels": labels.tolist()}, "testing batch 1 of 1")
    python2_pickle(folder / "test_batch", entry)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    python2_pickle(folder / "batches.meta", meta)
    return folder


def cifar100_labels(labels: np.ndarray, offset: int) -> np.ndarray:
    """100 fine classes from 10: the Fashion-MNIST class, then the image's index mod 10."""
    return labels * 10 + (offset + np.arange(len(labels))) % 10


def write_cifar100(root: Path, train: int, test: int) -> Path:
    """``root/cifar-100-python/`` with ``train``, ``test`` and ``meta``."""
    from harness.data.archives import CIFAR100_CLASSES

    folder = root / "cifar-100-python"
    for part, count, is_test in (("train", train, False), ("test", test, True)):
        images, labels = real_images(count, 32, test=is_test)
        fine = cifar100_labels(labels, 0)
        keys = {b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
        python2_pickle(folder / part, _cifar_entry(images, keys, part))
    meta = {
        b"fine_label_names": [name.encode() for name in CIFAR100_CLASSES],
        b"coarse_label_names": [f"superclass_{i}".encode() for i in range(20)],
    }
    python2_pickle(folder / "meta", meta)
    return folder


def write_svhn(root: Path, sizes: dict[str, int]) -> Path:
    """``root/{train,test,extra}_32x32.mat`` (the parts ``sizes`` names) from MNIST."""
    files = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
    offset = 0
    root.mkdir(parents=True, exist_ok=True)
    for part, count in sizes.items():
        images, digits = real_images(count, 32, source=MNIST, offset=offset)
        offset += count
        labels = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # [N, C, H, W] -> [H, W, C, N]
        scipy.io.savemat(root / files[part], {"X": x, "y": labels})
    return root


def write_stl10(root: Path, train: int, test: int, unlabeled: int, fold: int) -> Path:
    """``root/stl10_binary/`` with every file of the binary archive; 10 folds of ``fold``
    training indices each."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    offset = 0
    for stem, count in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images, labels = real_images(count, 96, offset=offset)
        offset += count
        # each 96 x 96 plane stored column-major: the bytes of its transpose
        (folder / f"{stem}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        if stem != "unlabeled":
            (folder / f"{stem}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, rng.permutation(train)[:fold])) + " " for _ in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(lines) + "\n")
    classes = "airplane bird car cat deer dog horse monkey ship truck".split()
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    return folder
