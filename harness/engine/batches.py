"""The batches of one epoch of a stage: a pure function of (seed, stage, epoch).

The labeled subset and the unlabeled pool are drawn, cycled and sharded here, and
augmented on the device; unlabeled labels never leave this module. ``ImagesRead``
counts what a stage loaded (``history.csv``), the record that every method of a
comparison did the same work per step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from harness.data import (
    cycled_batches,
    epoch_batches,
    load_batches,
)
from harness.engine import distributed
from harness.engine.context import Context
from harness.method import Batch, Method, Stage
from harness.seeding import torch_generator


def steps_per_epoch(ctx: Context, stage: Stage) -> int:
    """``schedule.<stage>.steps`` if set, else one pass over the stage's data (the pool,
    for stages that draw from it). A set ``steps`` makes stages of different methods equally
    long: the baseline's labeled-only fine-tune as long as a method's joint one."""
    steps = ctx.cfg.schedule[stage.name].steps
    if steps > 0:
        return steps
    if ctx.draws_pool(stage):
        return math.ceil(len(ctx.split.unlabeled) / ctx.unlabeled_batch_size)
    return math.ceil(len(ctx.split.labeled) / ctx.cfg.optim.batch_size)


def _epoch_indices(
    ctx: Context, indices: np.ndarray, batch_size: int, stage: Stage, epoch: int
) -> list[np.ndarray]:
    """An epoch's batches of ``indices``: a shuffled pass, or exactly ``steps`` batches
    cycled over fresh permutations when the stage sets ``steps``."""
    seed = ctx.spec.train_seed
    steps = ctx.cfg.schedule[stage.name].steps
    if steps > 0:
        cycled = cycled_batches(indices, batch_size, seed, stage.name, epoch)
        batches = list(itertools.islice(cycled, steps))
    else:
        batches = epoch_batches(indices, batch_size, seed, stage.name, epoch)
    return distributed.trim_for_world(batches, ctx.place)


@dataclass
class ImagesRead:
    """Images a stage loaded in one epoch, by role (``history.csv``): the record that
    every method of a comparison did the same work per step."""

    labeled: int = 0
    unlabeled: int = 0


def images_per_epoch(ctx: Context, stage: Stage) -> ImagesRead:
    """The images one epoch of ``stage`` reads, by role, as ``stage_batches`` counts
    them into ``history.csv``, from the same batch indices but without loading an
    image: what ``dry_run=true`` prints before any run starts (every epoch of a stage
    reads as many)."""
    cfg = ctx.cfg
    if not ctx.draws_pool(stage):
        batches = _epoch_indices(ctx, ctx.split.labeled, cfg.optim.batch_size, stage, 0)
        return ImagesRead(labeled=sum(len(b) for b in batches))
    pool = _epoch_indices(ctx, ctx.split.unlabeled, ctx.unlabeled_batch_size, stage, 0)
    labeled = cfg.optim.batch_size * len(pool) if stage.labeled else 0
    return ImagesRead(labeled=labeled, unlabeled=sum(len(b) for b in pool))


def stage_batches(
    ctx: Context, method: Method, stage: Stage, epoch: int, read: ImagesRead | None = None
) -> Iterator[Batch]:
    """The batches of one epoch of ``stage``, a pure function of (seed, stage, epoch).

    A stage that draws from the unlabeled pool iterates over the pool and cycles
    the labeled subset beside it; unlabeled labels never leave this function.
    Without a pool (every image labeled) such a stage gets the labeled batch alone.
    Under DDP each rank loads its shard of every batch (``distributed.shard``) and
    the batch carries the share that weights its gradient. ``read`` counts the
    images loaded (whole batches, over all ranks).
    """
    seed = ctx.spec.train_seed
    generator = torch_generator("augment", seed, stage.name, epoch)
    train, cfg = ctx.dataset.train, ctx.cfg
    read = read if read is not None else ImagesRead()

    def load(batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shards = [distributed.shard(b, ctx.place) for b in batches]
        return load_batches(train, shards, cfg.data.resize, cfg.data.num_workers, ctx.cuda)

    def share(full: np.ndarray) -> float:
        return ctx.place.size * len(distributed.shard(full, ctx.place)) / len(full)

    def positions(subset: np.ndarray, full: np.ndarray) -> torch.Tensor:
        """Where this rank's images of the batch ``full`` sit in the sorted ``subset``."""
        where = np.searchsorted(subset, distributed.shard(full, ctx.place))
        return torch.from_numpy(where).to(ctx.device)

    if not ctx.draws_pool(stage):
        batches = _epoch_indices(ctx, ctx.split.labeled, cfg.optim.batch_size, stage, epoch)
        for full, (images, y) in zip(batches, load(batches), strict=True):
            read.labeled += len(full)
            if stage.labeled:
                x = ctx.prepare(images, generator, len(full), method.labeled_view)
                extra = [
                    ctx.prepare(images, generator, len(full), v) for v in method.labeled_extra_views
                ]
                y = y.to(ctx.device, non_blocking=True)
                yield Batch(x=x, y=y, x_views=extra, share=share(full))
            else:  # a pool-only stage without a pool: the labeled images, labels hidden
                views = [
                    ctx.prepare(images, generator, len(full), v) for v in method.unlabeled_views
                ]
                yield Batch(u=views, share=share(full))
        return
    pool = _epoch_indices(ctx, ctx.split.unlabeled, ctx.unlabeled_batch_size, stage, epoch)
    labeled, labeled_batches = None, []
    if stage.labeled:
        cycled = cycled_batches(
            ctx.split.labeled, cfg.optim.batch_size, seed, stage.name, epoch, "x"
        )
        labeled_batches = list(itertools.islice(cycled, len(pool)))
        labeled = load(labeled_batches)
    for step, (full, (u, _hidden_labels)) in enumerate(zip(pool, load(pool), strict=True)):
        read.unlabeled += len(full)
        views = [ctx.prepare(u, generator, len(full), v) for v in method.unlabeled_views]
        batch = Batch(
            u=views,
            share=share(full),
            u_index=positions(ctx.split.unlabeled, full),
            pool_size=len(ctx.split.unlabeled),
        )
        if labeled is not None:
            x, y = next(labeled)
            read.labeled += cfg.optim.batch_size
            size = cfg.optim.batch_size
            batch.x = ctx.prepare(x, generator, size, method.labeled_view)
            batch.x_views = [ctx.prepare(x, generator, size, v) for v in method.labeled_extra_views]
            batch.y = y.to(ctx.device, non_blocking=True)
            batch.x_index = positions(ctx.split.labeled, labeled_batches[step])
            batch.labeled_size = len(ctx.split.labeled)
        yield batch
    if labeled is not None:
        next(labeled, None)  # runs the stream to its end, which frees an FFCV loader
