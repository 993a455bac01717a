"""ReMixMatch (Berthelot, Carlini, Cubuk, Kurakin, Sohn, Zhang & Raffel 2020,
"ReMixMatch: semi-supervised learning with distribution alignment and augmentation
anchoring", ICLR).

MixMatch with three changes. Distribution alignment: the weak view's class
probabilities are multiplied by p_target / p_model (p_model the running mean of the
model's predictions on unlabeled images, p_target the labeled data's class
distribution) and renormalized, then sharpened (T). Augmentation anchoring: that guess
is the target of K strong views of the same image, mixed up (MixUp) with the labeled
batch and the weak view; the first strong view also learns the guess before mixing
(the "pre-mixup" term). A self-supervised rotation head predicts by how many quarter
turns the first strong view was rotated.

Defaults (``remixmatch`` section), from USB's PyTorch port, our yardstick
(microsoft/Semi-supervised-learning: semilearn/algorithms/remixmatch/remixmatch.py,
hooks/dist_align.py ``DistAlignEMAHook`` with p_target "gt",
config/classic_cv/remixmatch/*.yaml): K = 2 strong views, T 0.5, MixUp α 0.75 with
λ' = max(λ, 1 − λ), λ_u 1.5 (ulb_loss_ratio), the pre-mixup weight 0.5
(kl_loss_ratio), the rotation weight 0.5 (rot_loss_ratio), the unlabeled weights
ramped linearly over the first 1/64 of training (unsup_warm_up; the rotation term is
not ramped), alignment momentum 0.999, μ 1 (uratio), EMA 0.999. As in USB, only the
mixed labeled batch moves the batch-norm statistics; the weak, strong, other mixed
and rotated passes normalize with their own statistics and leave them alone.

Where we depart from USB, and why:
- p_target: USB counts the labeled subset's classes up front. A method here sees its
  labels through its batches, so it counts the labels of the labeled batches seen so
  far (every rank's): after one pass over the labeled subset that is USB's p_target
  (class-balanced budgets: uniform), and before it, close to it.
- MixUp draws λ per image, as MixMatch's reference code and ``methods/mixmatch.py``
  do (USB draws one λ per batch), with one permutation over the whole mixed batch.
- The rotation head is a linear layer on the model's flattened top representation
  (``Encoder.features``): a WRN's pooled features as in USB, a VGG's last feature map.
The alignment's running means and the label counts are in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.alignment import DistributionAlignment
from harness.config import check_fraction, check_positive, check_weight, register_settings
from harness.data import Dataset
from harness.ema import WithEMA
from harness.engine.distributed import all_rows
from harness.method import Batch, Stage, register_method
from harness.models import Encoder
from methods._common import (
    EMAEvaluated,
    batch_norm_stats_kept,
    feature_sizes,
    labeled_cost,
    sharpen,
    soft_cross_entropy,
)
from methods.mixmatch import mix


@register_settings("remixmatch")
@dataclass
class ReMixMatchSettings:
    strong_views: int = 2  # K, strong views of each unlabeled image (USB: 2; the paper: 8)
    temperature: float = 0.5  # T, the sharpening temperature of the aligned guess
    alpha: float = 0.75  # the Beta(α, α) of MixUp
    weight: float = 1.5  # λ_u, the mixed unlabeled term's weight (ulb_loss_ratio)
    pre_mixup_weight: float = 0.5  # the first strong view's own term (kl_loss_ratio)
    rotation_weight: float = 0.5  # the rotation head's term; 0 builds no head
    ramp: float = 0.015625  # linear ramp of the unlabeled weights, fraction of the stage
    momentum: float = 0.999  # of the alignment's running mean of the predictions
    mu: int = 1  # unlabeled images per labeled one (uratio)
    ema_decay: float = 0.999  # the evaluated EMA of the weights

    def __post_init__(self) -> None:
        check_positive("remixmatch.strong_views", self.strong_views, integer=True)
        check_fraction("remixmatch.temperature", self.temperature, closed_high=True)
        check_positive("remixmatch.alpha", self.alpha)
        check_weight("remixmatch.weight", self.weight)
        check_weight("remixmatch.pre_mixup_weight", self.pre_mixup_weight)
        check_weight("remixmatch.rotation_weight", self.rotation_weight)
        check_fraction("remixmatch.ramp", self.ramp, closed_high=True)
        check_fraction("remixmatch.momentum", self.momentum)
        check_positive("remixmatch.mu", self.mu, integer=True)
        check_fraction("remixmatch.ema_decay", self.ema_decay, closed_low=True)


def rotate_quarters(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Each image [C, H, W] of a square batch rotated by ``turns[i]`` quarter turns."""
    rotated = images.clone()
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            rotated[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
    return rotated


@register_method("remixmatch")
class ReMixMatch(EMAEvaluated):
    config_sections = ("remixmatch",)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        settings = cfg.remixmatch
        self.unlabeled_views = ("weak",) + ("strong",) * int(settings.strong_views)
        self.alignment: DistributionAlignment | None = None
        self.label_counts: torch.Tensor | None = None

    @property
    def settings(self) -> DictConfig:
        return self.cfg.remixmatch

    def unlabeled_batch_size(self) -> int:
        return int(self.settings.mu) * int(self.cfg.optim.batch_size)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def ema_decay(self, batch: Batch) -> float:
        return float(self.settings.ema_decay)

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        model = super().build_model(encoder, dataset)
        if self.settings.rotation_weight > 0:
            _, top_size = feature_sizes(encoder, dataset.channels, int(self.cfg.data.crop))
            model.rotation = nn.Linear(top_size, 4)  # trained with the encoder
        return model

    @torch.no_grad()
    def guess(self, weak_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weak views' probabilities aligned to the labels' class distribution, then
        sharpened: every view's target."""
        classes = weak_logits.shape[1]
        counts = torch.bincount(all_rows(labels), minlength=classes).float().cpu()
        self.label_counts = counts if self.label_counts is None else self.label_counts + counts
        if self.alignment is None:
            self.alignment = DistributionAlignment(classes, float(self.settings.momentum))
        self.alignment.p_target = self.label_counts / self.label_counts.sum()
        aligned = self.alignment(torch.softmax(weak_logits.float(), dim=1))
        return sharpen(aligned, float(self.settings.temperature))

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, WithEMA)
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        network, settings = model.encoder, self.settings
        weak, strong = batch.u[0], batch.u[1:]
        with torch.no_grad(), batch_norm_stats_kept(network):
            target = self.guess(network(weak), batch.y)
        with batch_norm_stats_kept(network):
            first_strong = network(strong[0])
        n = len(batch.x)
        images = torch.cat([batch.x, *strong, weak])
        labels = F.one_hot(batch.y, network.num_classes).float()
        targets = torch.cat([labels, target.repeat(len(strong) + 1, 1)])
        mixed, mixed_targets = mix(images, targets, float(settings.alpha))
        # only the first (labeled-sized) chunk moves the batch-norm statistics
        chunks = list(mixed.split(n))
        logits = [network(chunks[0])]
        with batch_norm_stats_kept(network):
            logits += [network(chunk) for chunk in chunks[1:]]
        ramp = min(1.0, batch.progress / float(settings.ramp))
        self.log_scalar("ramp", ramp)
        terms = {
            "cls": soft_cross_entropy(logits[0], mixed_targets[:n]),
            "mixed": settings.weight
            * ramp
            * soft_cross_entropy(torch.cat(logits[1:]), mixed_targets[n:]),
            "pre_mixup": settings.pre_mixup_weight
            * ramp
            * soft_cross_entropy(first_strong, target),
        }
        if settings.rotation_weight > 0:
            turns = torch.randint(0, 4, (len(strong[0]),)).to(strong[0].device)
            with batch_norm_stats_kept(network):
                top = network.features(rotate_quarters(strong[0], turns))
            rotation = model.rotation(top.flatten(1))
            terms["rotation"] = settings.rotation_weight * F.cross_entropy(rotation, turns)
        return terms

    def state_dict(self) -> dict[str, Any]:
        if self.alignment is None:
            return {}
        assert self.label_counts is not None
        return {"alignment": self.alignment.state_dict(), "label_counts": self.label_counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.label_counts = state["label_counts"]
            classes = len(self.label_counts)
            self.alignment = DistributionAlignment(classes, float(self.settings.momentum))
            self.alignment.load_state_dict(state["alignment"])
