"""What the consistency and pseudo-labelling methods share (not a plugin: the
loader skips modules whose name starts with ``_``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import Dataset
from harness.ema import WithEMA
from harness.method import Batch, Method, Stage
from harness.models import Encoder


def logits_of(network: nn.Module, *batches: torch.Tensor) -> list[torch.Tensor]:
    """Class scores of several batches from one forward pass of their concatenation:
    one pass is cheaper than several, and batch-norm statistics are those of the whole
    step's images (what FixMatch's and MixMatch's code get by interleaving)."""
    scores = network(torch.cat(batches))
    return list(scores.split([len(b) for b in batches]))


def has_dropout(network: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in network.modules())


@contextmanager
def dropout_off(network: nn.Module) -> Iterator[None]:
    """Every dropout layer of ``network`` in eval mode for the while, nothing else: a
    pass that makes targets (a pseudo-label, a teacher's guess) without dropout's noise,
    batch norm still in training mode."""
    layers = [
        m for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training
    ]
    try:
        for layer in layers:
            layer.eval()
        yield
    finally:
        for layer in layers:
            layer.train()


@contextmanager
def teacher_mode(network: nn.Module) -> Iterator[None]:
    """How a pass that only makes targets runs with ``teacher_dropout=false``: no
    gradient, dropout off, batch-norm running statistics untouched (they follow the
    trained pass alone, as in a reference whose one pass holds every view)."""
    with torch.no_grad(), dropout_off(network), batch_norm_stats_kept(network):
        yield


def teacher_pass(network: nn.Module, *batches: torch.Tensor) -> list[torch.Tensor]:
    """Scores that only make targets, in ``teacher_mode``."""
    with teacher_mode(network):
        return logits_of(network, *batches)


def logits_with_targets(
    network: nn.Module, batches: list[torch.Tensor], targets_at: int, teacher_dropout: bool
) -> list[torch.Tensor]:
    """``logits_of(network, *batches)``, except that with ``teacher_dropout`` false and
    dropout in the network, the batch at ``targets_at`` (one that only makes targets,
    e.g. FixMatch's weak view) comes from a ``teacher_pass``. The reference code's
    networks (WRN) have no dropout, so its one pass is ours for them either way."""
    if teacher_dropout or not has_dropout(network):
        return logits_of(network, *batches)
    trained = logits_of(network, *batches[:targets_at], *batches[targets_at + 1 :])
    (target,) = teacher_pass(network, batches[targets_at])
    return [*trained[:targets_at], target, *trained[targets_at:]]


def map_and_top(encoder: Encoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the feature map before a final global pooling, the top representation that
    ``classify`` reads); a model without such a pooling gives its top twice."""
    layers = encoder.features
    pooled = (
        isinstance(layers, nn.Sequential)
        and len(layers) > 2
        and isinstance(layers[-1], nn.Flatten)
        and isinstance(layers[-2], nn.modules.pooling._AdaptiveAvgPoolNd)
    )
    if not pooled:
        top = layers(x)
        return top, top
    feature_map = layers[:-2](x)
    return feature_map, layers[-2:](feature_map)


def feature_sizes(encoder: Encoder, channels: int, crop: int) -> tuple[int, int]:
    """(elements per image of ``map_and_top``'s map, of its top): the widths of the
    heads a method builds around the encoder, from one zero image in eval mode."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        feature_map, top = map_and_top(encoder, torch.zeros(1, channels, crop, crop))
    encoder.train(was_training)
    return feature_map[0].numel(), top[0].numel()


class ProjectionHead(nn.Module):
    """An MLP from the encoder's top representation to an L2-normalized embedding:
    SimMatch's and CoMatch's ``mlp_proj`` (Linear, ReLU, Linear). With ``count`` > 1,
    the mean of that many such MLPs, normalized (USB's EPASS, ``use_epass``)."""

    def __init__(self, top_size: int, width: int, size: int, count: int = 1):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(top_size, width), nn.ReLU(), nn.Linear(width, size))
            for _ in range(count)
        )

    def forward(self, top: torch.Tensor) -> torch.Tensor:
        flat = top.flatten(1)
        mean = torch.stack([mlp(flat) for mlp in self.mlps]).mean(dim=0)
        return F.normalize(mean.float(), dim=1)


def tops_and_logits(
    network: Encoder, batches: list[torch.Tensor], targets_at: int, teacher_dropout: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The top representations and class scores of several batches from one forward
    pass of their concatenation, as ``logits_with_targets``: with ``teacher_dropout``
    false and dropout in the network, the batch at ``targets_at`` comes from a
    separate pass in ``teacher_mode``."""

    def one_pass(*parts: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        top = network.features(torch.cat(parts))
        sizes = [len(part) for part in parts]
        return list(top.split(sizes)), list(network.classify(top).split(sizes))

    if teacher_dropout or not has_dropout(network):
        return one_pass(*batches)
    tops, scores = one_pass(*batches[:targets_at], *batches[targets_at + 1 :])
    with teacher_mode(network):
        (top,), (score,) = one_pass(batches[targets_at])
    tops.insert(targets_at, top)
    scores.insert(targets_at, score)
    return tops, scores


def labeled_cost(network: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The labeled batch's cross-entropy alone: what these methods train on where a
    stage has no pool (every image labeled) and so no unlabeled views."""
    return {"cls": F.cross_entropy(network(batch.x), batch.y)}


@contextmanager
def batch_norm_stats_kept(network: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every batch norm's running statistics as they were
    (the batch's own statistics still normalize it): VAT's reference code updates them
    on the labeled pass only, never on the unlabeled or perturbed ones, whose inputs
    (ξ and ε off the data) are not the distribution evaluation sees.

    The norms stop tracking for the while (a training-mode pass then reads no running
    statistics and writes none) rather than having their buffers copied back after:
    autograd keeps the buffers of a pass whose backward is still to come (the labeled
    one), and a copy into them would fail that backward as an in-place change."""
    norms = [
        m
        for m in network.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    try:
        for module in norms:
            module.track_running_stats = False
        yield
    finally:
        for module in norms:
            module.track_running_stats = True


def softmax_mse(scores: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over images and classes of (softmax(scores) - target)^2: the consistency
    cost of the Π-model and Mean Teacher, and MixMatch's unlabeled cost."""
    return F.mse_loss(torch.softmax(scores.float(), dim=1), target_probs.float())


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T), renormalized per row (MixMatch, equation 7)."""
    powered = probs.pow(1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


def soft_cross_entropy_per_image(scores: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-Σ_c target_c log softmax(scores)_c per image: USB's ``ce_loss`` with soft targets."""
    return -(target_probs * F.log_softmax(scores.float(), dim=1)).sum(dim=1)


def soft_cross_entropy(scores: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution per image, averaged over images."""
    return soft_cross_entropy_per_image(scores, target_probs).mean()


def warmed_up_decay(step: int, decay: float) -> float:
    """min(decay, (1 + k) / (10 + k)) at optimizer step k (from 0): TensorFlow's
    ExponentialMovingAverage with ``num_updates``. The EMA then forgets its random start
    within a few hundred steps, where a constant 0.999 keeps 5% of it after 3,000."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMAEvaluated(Method):
    """A method whose model keeps an EMA copy of its network (``harness.ema.WithEMA``),
    updated after every step with ``ema_decay`` and used for every reported error;
    the trained network's val error is recorded beside it as ``<trained_name>_top1_val``."""

    trained_name: ClassVar[str] = "raw"

    def ema_decay(self, batch: Batch) -> float:
        raise NotImplementedError

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        return WithEMA(encoder)

    def after_step(self, model: nn.Module, stage: Stage, batch: Batch) -> None:
        assert isinstance(model, WithEMA)
        decay = self.ema_decay(batch)
        if self.cfg.optim.ema_warmup:
            decay = warmed_up_decay(batch.step, decay)
        model.ema.update(model.encoder, decay)

    def eval_model(self, model: nn.Module) -> Encoder:
        assert isinstance(model, WithEMA)
        return model.ema.module

    def also_evaluate(self, model: nn.Module) -> dict[str, Encoder]:
        assert isinstance(model, WithEMA)
        return {self.trained_name: model.encoder}
