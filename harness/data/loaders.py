"""Batches of images for training and evaluation.

The order of an epoch is a pure function of (train seed, stage, epoch), so a
resumed run replays the same batches without carrying loader state. In-memory
sets are indexed directly (no per-item collate: at 8-32 px that overhead would
rival the network's arithmetic); folder sets decode per item through a torch
DataLoader with workers (PIL); FFCV sets are read from their ``.beton`` by an
FFCV ``Loader`` given exactly those indices in that order (``indices=`` with
sequential order: the harness's seeded order is the explicit seed), so the two
file paths see the same batches and differ only in JPEG decompression. Random crops and
flips are applied to whole batches on the device by ``augment_batch``, with a
generator the trainer seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from harness.data.datasets import ImageSet, decode_square
from harness.seeding import numpy_rng


def epoch_batches(
    indices: np.ndarray, batch_size: int, *seed_parts: object, shuffle: bool = True
) -> list[np.ndarray]:
    """Split ``indices`` into batches, shuffled by a seed derived from ``seed_parts``.

    A set smaller than one batch still gives one (smaller) batch.
    """
    order = numpy_rng("order", *seed_parts).permutation(indices) if shuffle else indices
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cycled_batches(
    indices: np.ndarray, batch_size: int, *seed_parts: object
) -> Iterator[np.ndarray]:
    """Endless batches over ``indices``: a fresh permutation each pass, full batches only.

    Used for the labeled subset when a stage's epoch is a pass over the (larger)
    unlabeled pool; passes are numbered into the seed so the stream is replayable.
    """
    if len(indices) == 0:
        raise ValueError("cannot cycle over an empty set of images")
    buffer = np.empty(0, dtype=np.int64)
    cycle = 0
    while True:
        while len(buffer) < batch_size:
            buffer = np.concatenate(
                [buffer, numpy_rng("cycle", *seed_parts, cycle).permutation(indices)]
            )
            cycle += 1
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


class _FolderItems(TorchDataset):
    def __init__(self, files: tuple[str, ...], targets: np.ndarray, size: int):
        self.files, self.targets, self.size = files, targets, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return decode_square(self.files[index], self.size), int(self.targets[index])


# Idle FFCV Loaders by (file, batch size, resize, threads). A Loader compiles its
# pipeline with numba on first use (seconds); reusing it for every epoch and
# evaluation and only swapping its index stream makes that a one-time cost.
_IDLE_FFCV_LOADERS: dict[tuple[str, int, int, int], list[Any]] = {}


def _ffcv_loader(beton: str, batch_size: int, resize: int, threads: int) -> Any:
    # ffcv is an optional extra ([ffcv]): imported where a beton is read
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    idle = _IDLE_FFCV_LOADERS.setdefault((beton, batch_size, resize, threads), [])
    if idle:
        return idle.pop()
    return Loader(
        beton,
        batch_size=batch_size,
        num_workers=threads,
        os_cache=True,
        order=OrderOption.SEQUENTIAL,
        indices=np.zeros(1, dtype=np.int64),  # replaced per stream
        drop_last=False,
        pipelines={
            "image": [CenterCropRGBImageDecoder((resize, resize), ratio=1.0), ToTensor()],
            "label": [IntDecoder(), ToTensor()],
        },
    )


def ffcv_threads(num_workers: int) -> int:
    """The JPEG threads of an FFCV Loader for ``data.num_workers``: at least one, and
    at most what numba may start on this machine (a SLURM job's CPUs, not the
    submitter's). A larger count makes numba raise ``The number of threads must be
    between 1 and N`` from the loader's thread; the count changes speed, never pixels."""
    import numba  # comes with the optional ffcv extra

    return min(max(1, num_workers), numba.config.NUMBA_NUM_THREADS)


def ffcv_batches(
    beton: str, batches: list[np.ndarray], resize: int, num_workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images of ``batches`` from an FFCV file, decoded as ``decode_square`` does
    (the center square of the shorter side, resized to ``resize``), batch by batch.

    An FFCV Loader in sequential order reads the whole stream: its ``indices`` are
    every batch concatenated (repeats allowed), so its fixed-size batches are
    exactly ours; only the last may be smaller, which ``drop_last=False`` keeps (a
    labeled subset smaller than a batch still gives a batch).
    """
    if not batches:
        return
    size = len(batches[0])
    if any(len(b) != size for b in batches[:-1]) or len(batches[-1]) > size:
        raise ValueError("FFCV batches must all have one size, but for a smaller last one")
    threads = ffcv_threads(num_workers)
    loader = _ffcv_loader(beton, size, resize, threads)
    stream = np.concatenate(batches).astype(np.int64)
    # what Loader(indices=stream, order=SEQUENTIAL) would hold, set on a compiled Loader
    loader.indices = loader.traversal_order.indices = loader.first_traversal_order = stream
    for x, y in loader:
        # NHWC -> NCHW copies out of FFCV's reused buffers
        yield x.permute(0, 3, 1, 2).contiguous(), y.reshape(-1).to(torch.int64, copy=True)
    # only a loader whose epoch ran to its end is reused (a live epoch holds threads)
    _IDLE_FFCV_LOADERS[(beton, size, resize, threads)].append(loader)


def load_batches(
    images: ImageSet,
    batches: Iterator[np.ndarray] | list[np.ndarray],
    resize: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images [B, C, R, R] and int64 labels for each batch of indices."""
    if images.beton is not None:
        yield from ffcv_batches(images.beton, list(batches), resize, num_workers)
        return
    if images.images is not None:
        for batch in batches:
            index = torch.from_numpy(np.asarray(batch, dtype=np.int64))
            yield images.images[index], torch.from_numpy(images.targets[batch])
        return
    assert images.files is not None
    loader = DataLoader(
        _FolderItems(images.files, images.targets, resize),
        # lazy: ``batches`` may be endless (cycled labeled batches)
        batch_sampler=(list(map(int, b)) for b in batches),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    yield from loader


def center_crop_batches(
    images: ImageSet,
    indices: np.ndarray,
    batch_size: int,
    resize: int,
    crop: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device | None = None,
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Normalized center crops of ``indices``, in order, batch by batch (on ``device``)."""
    batches = epoch_batches(indices, batch_size, shuffle=False)
    for x, _ in load_batches(images, batches, resize, num_workers):
        x = x if device is None else x.to(device)
        yield normalize(center_crop(x, crop), mean, std)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float, per-channel standardized (mean/std in [0, 1] units)."""
    return (images.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def center_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    top = (images.shape[-2] - crop) // 2
    left = (images.shape[-1] - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """``images`` (N, C, H, W, any dtype) padded by ``pad`` pixels on each side with
    their mirror image (the edge pixel not repeated, as numpy's and TensorFlow's
    ``reflect``): FixMatch's weak view is a random crop of the image padded this way."""
    if pad == 0:
        return images
    height, width = images.shape[-2:]
    if pad >= min(height, width):
        raise ValueError(f"a reflect pad of {pad} needs images larger than {pad} px")

    def mirrored(size: int) -> torch.Tensor:
        index = torch.arange(-pad, size + pad).abs()
        return torch.where(index >= size, 2 * (size - 1) - index, index).to(images.device)

    return images[:, :, mirrored(height)][:, :, :, mirrored(width)]


def augment_batch(
    images: torch.Tensor,
    crop: int,
    hflip: bool,
    generator: torch.Generator,
    *,
    full: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """An independent random ``crop`` x ``crop`` window (and optional flip) per image.

    Offsets are drawn on the CPU from ``generator`` (so the stream is the same
    on any device) and applied with one gather on the images' device. Under DDP
    ``images`` are rows ``rank::world`` of a ``full``-image batch: the draws are
    made for the whole batch and sliced, so every image gets the crop it would
    get on one process.
    """
    batch, _, height, width = images.shape
    drawn = full or batch
    top = torch.randint(0, height - crop + 1, (drawn,), generator=generator)[rank::world]
    left = torch.randint(0, width - crop + 1, (drawn,), generator=generator)[rank::world]
    flip = (torch.rand(drawn, generator=generator) < 0.5)[rank::world] if hflip else None
    if images.device.type == "cpu":
        # on the CPU, one slice copy per image is ~7x faster than the gather below
        out = torch.empty((batch, images.shape[1], crop, crop), dtype=images.dtype)
        for i, (t, s) in enumerate(zip(top.tolist(), left.tolist(), strict=True)):
            window = images[i, :, t : t + crop, s : s + crop]
            out[i] = window.flip(-1) if flip is not None and flip[i] else window
        return out
    steps = torch.arange(crop)
    rows = (top[:, None] + steps).to(images.device)  # [B, crop]
    cols = left[:, None] + steps
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = cols.to(images.device)
    b = torch.arange(batch, device=images.device)[:, None, None]
    # advanced indexing puts the indexed dims first: [B, crop, crop, C] -> [B, C, crop, crop]
    return images.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
