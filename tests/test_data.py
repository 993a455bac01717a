from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from harness.data import augment_batch, center_crop, cycled_batches, load_batches, load_dataset
from harness.data.files import read_idx
from harness.errors import UsageError
from tests.conftest import FASHION_MNIST, needs_fashion_mnist


def data_cfg(name: str, path=None, resize: int = 16):
    return OmegaConf.create(
        {"name": name, "path": None if path is None else str(path), "resize": resize}
    )


def test_digits_has_fixed_train_val_parts():
    digits = load_dataset(data_cfg("digits"))
    assert (len(digits.train), len(digits.val)) == (1348, 449)
    assert digits.train.images.shape == (1348, 1, 16, 16)
    assert digits.train.images.dtype == torch.uint8
    assert 0 < digits.mean[0] < 1 and digits.num_classes == 10


@needs_fashion_mnist
def test_fashion_mnist_reads_the_debian_idx_files():
    fmnist = load_dataset(data_cfg("fashion_mnist", FASHION_MNIST, 36))
    assert (len(fmnist.train), len(fmnist.val)) == (60000, 10000)
    assert fmnist.train.images.shape[1:] == (1, 36, 36)
    assert np.bincount(fmnist.train.targets).tolist() == [6000] * 10


@needs_fashion_mnist
def test_truncated_idx_file_is_a_usage_error(tmp_path):
    for name in (
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        shutil.copy(FASHION_MNIST / name, tmp_path / name)
    raw = gzip.open(FASHION_MNIST / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    with pytest.raises(UsageError, match="truncated or corrupt"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(UsageError, match="truncated or corrupt"):
        load_dataset(data_cfg("fashion_mnist", tmp_path, 33))


def test_missing_data_path_names_the_key(tmp_path):
    with pytest.raises(UsageError, match="data.path .*does not exist"):
        load_dataset(data_cfg("fashion_mnist", tmp_path / "absent"))
    with pytest.raises(UsageError, match="unknown dataset .* valid choices: .*digits"):
        load_dataset(data_cfg("mnist3d"))


def write_digit_folder(root, per_class: int = 6, classes: int = 3):
    """A small ImageNet-layout folder of real digit images (PNG), 3 classes."""
    digits = load_dataset(data_cfg("digits"))
    for part, images in (("train", digits.train), ("val", digits.val)):
        for label in range(classes):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True)
            chosen = np.flatnonzero(images.targets == label)[:per_class]
            for index in chosen:
                pixels = images.images[index, 0].numpy()
                Image.fromarray(pixels).convert("RGB").save(folder / f"{index}.png")
    return root


def test_image_folder_reads_the_imagenet_layout(tmp_path):
    root = write_digit_folder(tmp_path / "folder")
    data = load_dataset(data_cfg("image_folder", root, 12))
    assert data.classes == ("class0", "class1", "class2")
    assert len(data.train) == 18 and data.channels == 3
    from harness.data.datasets import decode_square

    assert decode_square(data.train.files[0], 12).shape == (3, 12, 12)


def test_unreadable_image_is_a_usage_error(tmp_path):
    root = write_digit_folder(tmp_path / "folder")
    (root / "train" / "class1" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UsageError, match="unreadable image .*broken.png"):
        load_dataset(data_cfg("image_folder", root, 13))


def test_augment_batch_takes_windows_of_the_original():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    crops = augment_batch(images, 4, hflip=False, generator=torch.Generator().manual_seed(0))
    for b in range(2):
        found = [
            (i, j)
            for i in range(3)
            for j in range(3)
            if torch.equal(crops[b], images[b, :, i : i + 4, j : j + 4])
        ]
        assert len(found) == 1
    flipped = augment_batch(images, 6, hflip=True, generator=torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(flipped[b], images[b]) or torch.equal(flipped[b], images[b].flip(-1))
    assert torch.equal(center_crop(images, 4), images[..., 1:5, 1:5])


def test_folder_batches_accept_an_endless_batch_stream(tmp_path):
    # stages using the pool cycle the labeled subset: the batch stream never ends
    root = write_digit_folder(tmp_path / "folder")
    data = load_dataset(data_cfg("image_folder", root, 12))
    stream = load_batches(data.train, cycled_batches(np.arange(len(data.train)), 4, 0), 12)
    for _ in range(6):  # more than one pass over the 18 images
        x, y = next(stream)
        assert x.shape == (4, 3, 12, 12) and y.shape == (4,)
