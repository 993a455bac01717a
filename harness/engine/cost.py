"""What a plan's runs will cost before any trains: the images each stage reads and its
training FLOPs, for ``dry_run=true`` (``harness.run``), so that a cluster user can
size ``slurm.time_min`` from a device's throughput before submitting.

Images are counted as ``history.csv`` will count them (``batches.images_per_epoch``).
FLOPs are one training step's forward and backward pass of the method's own loss
(``Method.loss``, with the stage's parameters trainable, so a frozen part's weight
gradients are not counted), as ``torch.utils.flop_counter.FlopCounterMode`` counts
them (2 per multiply-add of matrix products and convolutions; element-wise work and
the optimizer's update are not counted). They are counted on a batch of a few images
on the ``meta`` device: shapes only, no arithmetic, so VGG-16 at 224 px counts in a
fraction of a second; a loss that needs real values is counted on CPU tensors
instead. A step's FLOPs are linear in its images, so the count gives a cost per
labeled image and per unlabeled image (all its views), counted once per (method,
model, input size, stage) and scaled by each run's images.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from harness.config import config_for
from harness.data import Dataset, Split, load_or_store_split
from harness.engine.batches import images_per_epoch, steps_per_epoch
from harness.engine.context import Context
from harness.engine.loop import set_trainable
from harness.method import Batch, Method, Stage, get_method
from harness.models import build_encoder
from harness.plan import RunSpec

# images per role in a counting batch: batch norm over a feature vector needs two
COUNT_IMAGES = 2


@dataclass(frozen=True)
class StageCost:
    """One stage of one run, over all its epochs (zeros for a stage it does not train)."""

    stage: str
    epochs: int
    steps: int  # per epoch
    labeled: int  # images read from the labeled subset
    unlabeled: int  # images read from the unlabeled pool
    flops: float  # training FLOPs, forward + backward

    @property
    def images(self) -> int:
        return self.labeled + self.unlabeled


# (method, model, crop, stage, reads labeled, reads unlabeled) -> FLOPs per image by role
FlopCache = dict[tuple[str, str, int, str, bool, bool], tuple[float, float]]


def plan_costs(
    cfg: DictConfig, plan: list[RunSpec], dataset: Dataset
) -> dict[str, list[StageCost]]:
    """Each run's stage costs, by run id; reads the stored splits, writes nothing."""
    cache: FlopCache = {}
    models: dict = {}  # each method's model, built once for all its stages
    splits: dict[tuple[object, int], Split] = {}
    costs = {}
    for spec in plan:
        key = (spec.labels, spec.split_seed)
        if key not in splits:
            splits[key] = load_or_store_split(
                Path(cfg.results),
                dataset,
                spec.labels,
                spec.split_seed,
                store=False,
                holdout=cfg.data.holdout,
            )
        own = config_for(cfg, spec.method)
        costs[spec.run_id] = run_cost(own, spec, dataset, splits[key], cache, models)
    return costs


def run_cost(
    cfg: DictConfig,
    spec: RunSpec,
    dataset: Dataset,
    split: Split,
    cache: FlopCache,
    models: dict | None = None,
) -> list[StageCost]:
    """The stage costs of one run (``cfg``: its method's, per_method keys merged in);
    ``cache`` keeps the per-image FLOPs for the plan's other runs."""
    method = get_method(spec.method)(cfg)
    ctx = Context(
        cfg,
        spec,
        dataset,
        split,
        torch.device("cpu"),
        torch.tensor(dataset.mean),
        torch.tensor(dataset.std),
        unlabeled_batch=method.unlabeled_batch_size(),
    )
    costs = []
    for stage in method.stages():
        epochs = cfg.schedule[stage.name].epochs
        if epochs == 0 or not trains(cfg, spec, stage):
            costs.append(StageCost(stage.name, 0, 0, 0, 0, 0.0))
            continue
        read = images_per_epoch(ctx, stage)
        # the roles stage_batches gives them: without a pool, the labeled images are the
        # batch's labeled images, or its unlabeled views in a stage that wants no labels
        pool = ctx.draws_pool(stage)
        as_labeled = read.labeled if pool or stage.labeled else 0
        as_unlabeled = read.unlabeled if pool else read.labeled - as_labeled
        key = (
            spec.method,
            cfg.model.name,
            cfg.data.crop,
            stage.name,
            as_labeled > 0,
            as_unlabeled > 0,
        )
        if key not in cache:
            cache[key] = per_image_flops(method, cfg, dataset, stage, *key[-2:], models=models)
        per_labeled, per_unlabeled = cache[key]
        flops = epochs * (per_labeled * as_labeled + per_unlabeled * as_unlabeled)
        steps = steps_per_epoch(ctx, stage)
        costs.append(
            StageCost(
                stage.name, epochs, steps, epochs * read.labeled, epochs * read.unlabeled, flops
            )
        )
    return costs


def trains(cfg: DictConfig, spec: RunSpec, stage: Stage) -> bool:
    """Whether the run trains ``stage`` itself: not where the trainer takes it from a
    file instead (``lifecycle._stage_source``: ``model.pretrained`` for the stage that
    initializes the classifier, else the same stage of the run it reuses)."""
    copied = (stage.initializes and bool(cfg.model.pretrained)) or stage.name in dict(spec.reuses)
    return not copied


def per_image_flops(
    method: Method,
    cfg: DictConfig,
    dataset: Dataset,
    stage: Stage,
    labeled: bool,
    unlabeled: bool,
    models: dict | None = None,
) -> tuple[float, float]:
    """Training FLOPs of ``stage`` per labeled image and per unlabeled image (with all
    its views), for the roles the stage's batches fill: counted on the ``meta`` device,
    or on CPU tensors where the loss needs real values."""
    roles = (labeled, unlabeled)
    try:
        return _per_image(method, cfg, dataset, stage, *roles, torch.device("meta"), models)
    except Exception:  # noqa: BLE001 - any op without a meta kernel: count for real
        return _per_image(method, cfg, dataset, stage, *roles, torch.device("cpu"), models)


def _per_image(
    method: Method,
    cfg: DictConfig,
    dataset: Dataset,
    stage: Stage,
    labeled: bool,
    unlabeled: bool,
    device: torch.device,
    models: dict | None = None,
) -> tuple[float, float]:
    model = _model(method, cfg, dataset, device, models)
    set_trainable(model, method, stage)
    model.train()
    count = _counter(model, method, stage, dataset, cfg.data.crop, device)
    n = COUNT_IMAGES
    if labeled and unlabeled:  # linear in each role: F = a * labeled + b * unlabeled
        both, more_unlabeled = count(n, n), count(n, 2 * n)
        per_unlabeled = (more_unlabeled - both) / n
        return (both - n * per_unlabeled) / n, per_unlabeled
    if labeled:
        return count(n, 0) / n, 0.0
    return 0.0, count(0, n) / n


def _model(
    method: Method, cfg: DictConfig, dataset: Dataset, device: torch.device, models: dict | None
) -> torch.nn.Module:
    """The method's model as it trains: built once for all of its stages in a plan (a
    VGG costs a fifth of a second even on meta) where given the plan's ``models``."""
    key = (type(method).__name__, device.type)  # one config per method in a plan
    if models is None or key not in models:
        with torch.device(device):
            encoder = build_encoder(
                cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop,
                cfg.model.dropout,
            )  # fmt: skip
            model = method.build_model(encoder, dataset)
        if models is None:
            return model
        models[key] = model
    return models[key]


def _counter(
    model: torch.nn.Module,
    method: Method,
    stage: Stage,
    dataset: Dataset,
    crop: int,
    device: torch.device,
) -> Callable[[int, int], int]:
    """A function of (labeled, unlabeled) images -> the FLOPs of one step on them."""
    shape = (dataset.channels, crop, crop)

    def count(labeled: int, unlabeled: int) -> int:
        x = torch.randn(labeled, *shape, device=device) if labeled else None
        y = torch.randint(0, dataset.num_classes, (labeled,), device=device) if labeled else None
        views = [torch.randn(unlabeled, *shape, device=device) for _ in method.unlabeled_views]
        # mid-stage and far into it, so a ramped-up term is computed as most steps compute
        # it, and a warm-up counted in steps (Dash's) is over
        middle = 10**6
        batch = Batch(x=x, y=y, u=views if unlabeled else [], step=middle, total_steps=2 * middle)
        if labeled:
            batch.x_views = [torch.randn_like(x) for _ in method.labeled_extra_views]
        batch.u_index, batch.pool_size = torch.arange(unlabeled, device=device), unlabeled
        batch.x_index, batch.labeled_size = torch.arange(labeled, device=device), labeled
        # a copy: a method's running state (FlexMatch's records) must not keep this step
        counted = copy.deepcopy(method)
        counter = FlopCounterMode(display=False)
        with counter:
            loss = sum(counted.loss(model, stage, batch).values())
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                loss.backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    return count
