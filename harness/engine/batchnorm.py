"""Batch-norm statistics recomputed from the training images at the end of training
(``eval.bn_recompute``).

During training a batch norm keeps an exponential average of the batches' statistics,
weighted toward the last few hundred steps. Some published code replaces it before
testing by the exact average over one pass of its unlabeled pool, in training-mode
forward passes (each batch normalized by its own statistics, as in training): the mean
of the batches' means and of their unbiased variances (a suite that reproduces such a
paper cites where, e.g. suites/mnist_vat.yaml). Here that pass reads the images the
run trained on: the labeled subset and, where a stage drew from it, the pool (such a
pool may hold the labeled images too), in a seeded order, in batches of the size
training read them (the pool's where there is one), dropping a last partial batch as
that code does. The global RNG is seeded for the pass, so a model's
noise draws, and the statistics, are the same on every attempt of a run.

Only torch's batch-norm modules are touched (``_BatchNorm`` with running
statistics); a model with normalization layers of its own keeps their statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from harness.data import epoch_batches, load_batches
from harness.engine.context import Context
from harness.method import Method
from harness.seeding import seed_everything


def batch_norms(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms of ``network`` that keep running statistics."""
    return [
        m
        for m in network.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def average_statistics(network: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set every batch norm's running mean and variance of ``network`` to the plain
    average, over ``batches``, of each batch's mean and unbiased variance, from
    training-mode passes (torch's cumulative average: ``momentum=None`` after a reset)."""
    norms = batch_norms(network)
    momenta = [m.momentum for m in norms]
    was_training = network.training
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    network.train()
    try:
        for x in batches:
            network(x)
    finally:
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
        network.train(was_training)


def recompute_statistics(ctx: Context, network: nn.Module, method: Method) -> None:
    """``average_statistics`` of ``network`` over the images this run trained on (see
    the module): the labeled subset, plus the pool where one of the method's stages
    drew from it."""
    if not batch_norms(network):
        return
    cfg = ctx.cfg
    reads_pool = any(ctx.draws_pool(stage) for stage in method.stages())
    indices, size = ctx.split.labeled, cfg.optim.batch_size
    if reads_pool:
        indices = np.concatenate([ctx.split.labeled, ctx.split.unlabeled])
        size = ctx.unlabeled_batch_size
    seed = ctx.spec.train_seed
    order = epoch_batches(indices, size, seed, "bn_recompute")
    whole = [b for b in order if len(b) == size] or order  # the reference drops a partial one
    seed_everything("bn_recompute", seed)
    images = load_batches(ctx.dataset.train, whole, cfg.data.resize, cfg.data.num_workers, ctx.cuda)
    generator = torch.Generator()  # "none" (the center crop) draws nothing from it
    average_statistics(network, (ctx.prepare(x, generator, len(x), "none") for x, _ in images))
