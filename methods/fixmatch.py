"""FixMatch (Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang & Raffel
2020, "FixMatch: simplifying semi-supervised learning with consistency and
confidence", NeurIPS; Algorithm 1).

Each unlabeled image is seen twice: a ``weak`` view (the suite's crop and flip) and
a ``strong`` one (that, then RandAugment with a random magnitude per operation and
Cutout: ``harness.data.randaugment``). The network's class on the weak view, where
its probability is at least τ, is the hard pseudo-label that trains the strong
view; images below τ count zero (the mask, logged as ``mask``: the fraction kept).
The unlabeled batch is μ times the labeled one, and all three batches go through
one forward pass (the reference code's interleaving serves the same purpose:
batch-norm statistics of the whole step). Evaluation is with an EMA of the weights
(``harness.ema``); the raw network's val error is ``raw_top1_val``.

    loss = CE(labeled) + λ_u · mean_u 1[max p(weak) ≥ τ] · CE(strong, argmax p(weak))

Defaults (``fixmatch`` section; google-research/fixmatch, fixmatch.py): ``threshold``
= 0.95 (τ), ``mu`` = 7 (μ), ``weight`` = 1.0 (λ_u), ``ema_decay`` = 0.999; the
views' augmentations ``weak`` = weak and ``strong`` = strong
(``harness.config.AUGMENTATIONS``; an ablation may set e.g. ``fixmatch.strong=weak``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import (
    check_augmentation,
    check_fraction,
    check_positive,
    check_weight,
    register_settings,
)
from harness.ema import WithEMA
from harness.method import Batch, Stage, register_method
from methods._common import EMAEvaluated, labeled_cost, logits_with_targets


@register_settings("fixmatch")
@dataclass
class FixMatchSettings:
    threshold: float = 0.95  # τ: a weak view's confidence that keeps its pseudo-label
    mu: int = 7  # unlabeled images per labeled one
    weight: float = 1.0  # λ_u, the unlabeled term's weight
    ema_decay: float = 0.999  # the evaluated EMA of the weights
    weak: str = "weak"  # the augmentation of the view that makes the pseudo-label
    strong: str = "strong"  # ... and of the view it trains
    # false: the pseudo-label pass without dropout where the model has it (WRN has none)
    teacher_dropout: bool = True

    def __post_init__(self) -> None:
        check_augmentation("fixmatch.weak", self.weak)
        check_augmentation("fixmatch.strong", self.strong)
        check_fraction("fixmatch.threshold", self.threshold)
        check_positive("fixmatch.mu", self.mu, integer=True)
        check_weight("fixmatch.weight", self.weight)
        check_fraction("fixmatch.ema_decay", self.ema_decay, closed_low=True)


def confident_targets(
    weak_scores: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard pseudo-labels, mask): argmax of the weak view's softmax, and 1.0 where its
    probability is at least ``threshold`` (no gradient)."""
    confidence, targets = torch.softmax(weak_scores.detach().float(), dim=1).max(dim=1)
    return targets, (confidence >= threshold).float()


@register_method("fixmatch")
class FixMatch(EMAEvaluated):
    config_sections = ("fixmatch",)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.unlabeled_views = (cfg.fixmatch.weak, cfg.fixmatch.strong)

    def unlabeled_batch_size(self) -> int:
        return int(self.cfg.fixmatch.mu) * int(self.cfg.optim.batch_size)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, WithEMA)
        settings = self.cfg.fixmatch
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        weak_view, strong_view = batch.u
        labeled, weak, strong = logits_with_targets(
            model.encoder, [batch.x, weak_view, strong_view], 1, settings.teacher_dropout
        )
        targets, mask = confident_targets(weak, settings.threshold)
        per_image = F.cross_entropy(strong, targets, reduction="none")
        self.log_scalar("mask", mask.mean())
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": settings.weight * (per_image * mask).mean(),
        }

    def ema_decay(self, batch: Batch) -> float:
        return float(self.cfg.fixmatch.ema_decay)
