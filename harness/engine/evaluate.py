"""Top-1 / top-5 error, single crop and dense, per the paper's protocol.

Single crop: the image at ``resize`` (shorter side), its ``crop`` x ``crop``
center. Dense: the whole ``resize`` x ``resize`` image through the fc layers
applied as convolutions; softmax scores are averaged over positions. The paper
(VGG-16 on ImageNet) uses resize 256 / crop 224; smaller suites scale both.
Folder datasets are stored as their center ``resize`` square, so dense
evaluation covers that square rather than the full non-square image. Dense
evaluation needs a model that offers it (``harness.models.DENSE``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import (
    ImageSet,
    center_crop,
    center_crop_batches,
    epoch_batches,
    load_batches,
    normalize,
)
from harness.engine import distributed
from harness.engine.context import Context
from harness.models import DENSE, Encoder
from harness.store import RunRecord, targets_key, topk_key

TOPK = 5  # the paper's second error column


@torch.no_grad()
def predict_topk(
    model: Encoder,
    images: ImageSet,
    indices: np.ndarray,
    *,
    dense: bool,
    crop: int,
    resize: int,
    k: int,
    batch_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    num_workers: int = 0,
    channels_last: bool = False,
) -> np.ndarray:
    """The ``k`` highest-scoring classes of each image in ``indices``, best first: [N, k]."""
    was_training = model.training
    model.eval()
    k = min(k, model.num_classes)
    out = []
    batches = epoch_batches(indices, batch_size, shuffle=False)
    for x, _ in load_batches(images, batches, resize, num_workers):
        x = x.to(device, non_blocking=True)
        if not dense:
            x = center_crop(x, crop)
        x = normalize(x, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if dense:
            scores = F.softmax(model.dense_logits(x).float(), dim=1).mean(dim=(2, 3))
        else:
            scores = F.softmax(model(x).float(), dim=1)
        out.append(scores.topk(k, dim=1).indices.cpu())
    model.train(was_training)
    dtype = np.int16 if k < 2**15 else np.int64
    return torch.cat(out).numpy().astype(dtype) if out else np.empty((0, k), dtype)


def error_rates(topk: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(top-1 error %, top-k error %) of predictions ``topk`` [N, k] against ``targets``."""
    hits = topk == targets[:, None]
    return 100.0 * (1.0 - hits[:, 0].mean()), 100.0 * (1.0 - hits.any(axis=1).mean())


def part_images(ctx: Context, part: str) -> tuple[ImageSet, np.ndarray]:
    """The images an evaluation of ``part`` reads, as (set, indices): ``train`` the
    labeled subset; ``val`` the validation split where ``data.holdout`` holds one out
    (every evaluation during training, the learning curves, the final val columns),
    else the official test set; ``test`` the official test set (read once, by the final
    model, where there is a validation split)."""
    if part == "train":
        return ctx.dataset.train, ctx.split.labeled
    if part == "val" and len(ctx.split.holdout):
        return ctx.dataset.train, ctx.split.holdout
    return ctx.dataset.val, np.arange(len(ctx.dataset.val))


def part_targets(ctx: Context, part: str) -> np.ndarray:
    images, indices = part_images(ctx, part)
    return images.targets[indices]


def evaluate_split(ctx: Context, classifier: Encoder, part: str, dense: bool) -> np.ndarray:
    """Top-k of every image of ``part`` (``part_images``), in order; under DDP each rank
    predicts every world-th image and the rows are gathered, so each image counts once."""
    images, indices = part_images(ctx, part)
    cfg = ctx.cfg
    local = predict_topk(
        classifier,
        images,
        distributed.shard(indices, ctx.place),
        dense=dense,
        crop=cfg.data.crop,
        resize=cfg.data.resize,
        k=TOPK,
        batch_size=cfg.eval.batch_size,
        mean=ctx.mean,
        std=ctx.std,
        device=ctx.device,
        num_workers=cfg.data.num_workers,
        channels_last=ctx.cuda,
    )
    return distributed.gather_rows(local, len(indices), ctx.place)


def final_metrics(ctx: Context, classifier: Encoder, record: RunRecord) -> dict[str, float]:
    """Top-1/top-k error on train (the labeled subset) and val, single crop, and on val
    dense where the model offers it (an MLP has no positions to score: its dense
    columns are left out, and the report shows them as missing).

    Every evaluation's per-example top-k goes to ``predictions.npz`` with the
    targets, so the report can pair a method with the baseline image by image.
    """
    metrics: dict[str, float] = {}
    # with a validation split (data.holdout), the official test set too, read here only
    parts = ("train", "val", "test") if len(ctx.split.holdout) else ("train", "val")
    targets = {part: part_targets(ctx, part) for part in parts}
    arrays = {targets_key(part): targets[part] for part in parts}
    # the paper's table: single crop on train and val, dense on val only (a dense pass
    # over the training set would cost a whole epoch on ImageNet for nothing reported)
    passes = [(False, part) for part in parts]
    if DENSE in classifier.offers:
        passes += [(True, part) for part in parts if part != "train"]
    for dense, part in passes:
        prefix = "dense_" if dense else ""
        topk = evaluate_split(ctx, classifier, part, dense)
        top1, top5 = error_rates(topk, targets[part])
        metrics[f"{prefix}top1_{part}"] = top1
        metrics[f"{prefix}top5_{part}"] = top5
        arrays[topk_key(part, dense)] = topk
    if ctx.place.is_main:
        record.write_predictions(arrays)
    return metrics


def also_evaluated(ctx: Context, networks: dict[str, Encoder]) -> dict[str, float]:
    """``<name>_top1_val`` / ``<name>_top5_val`` (single crop) of each extra network
    a method names (``Method.also_evaluate``: the student beside an EMA teacher)."""
    metrics: dict[str, float] = {}
    for name, network in networks.items():
        topk = evaluate_split(ctx, network, "val", dense=False)
        top1, top5 = error_rates(topk, part_targets(ctx, "val"))
        metrics |= {f"{name}_top1_val": top1, f"{name}_top5_val": top5}
    return metrics


def val_crops(ctx: Context) -> Iterator[torch.Tensor]:
    """The val images (``part_images``) as normalized center crops, in eval-sized
    batches, on the device: under DDP this rank's contiguous block of them (rank 0's
    holds the first images)."""
    cfg = ctx.cfg
    images, indices = part_images(ctx, "val")
    for x in center_crop_batches(
        images,
        distributed.block(indices, ctx.place),
        cfg.eval.batch_size,
        cfg.data.resize,
        cfg.data.crop,
        ctx.mean,
        ctx.std,
        ctx.device,
        cfg.data.num_workers,
    ):
        yield x.contiguous(memory_format=torch.channels_last) if ctx.cuda else x
