"""What FixMatch's descendants share (FlexMatch, FreeMatch, SoftMatch): a weak and a
strong view of each unlabeled image, μ times the labeled batch, one forward pass of
all three batches, and an EMA of the weights evaluated (USB evaluates every algorithm
with ``ema_m`` 0.999). Each method adds how it turns the weak view's prediction into
a target and a per-image weight. Not a plugin (its name starts with ``_``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import check_augmentation, check_fraction, check_positive, check_weight
from harness.ema import WithEMA
from harness.method import Batch, Stage
from methods._common import EMAEvaluated, logits_with_targets


@dataclass
class WeakStrongSettings:
    """The settings every weak/strong method has, at FixMatch's values."""

    mu: int = 7  # unlabeled images per labeled one (USB uratio)
    weight: float = 1.0  # λ_u (USB ulb_loss_ratio)
    ema_decay: float = 0.999  # the evaluated EMA (USB ema_m)
    weak: str = "weak"  # the augmentation of the view that makes the target
    strong: str = "strong"  # ... and of the view it trains
    # false: the weak view's pass runs without dropout, where the model has it (the
    # references' WRN has none, so their one pass is ours either way)
    teacher_dropout: bool = True

    def check(self, section: str) -> None:
        check_augmentation(f"{section}.weak", self.weak)
        check_augmentation(f"{section}.strong", self.strong)
        check_positive(f"{section}.mu", self.mu, integer=True)
        check_weight(f"{section}.weight", self.weight)
        check_fraction(f"{section}.ema_decay", self.ema_decay, closed_low=True)


class WeakStrong(EMAEvaluated):
    """One training stage over the pool; the section named ``section`` holds the
    ``WeakStrongSettings`` fields."""

    section: ClassVar[str] = ""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        settings = cfg[self.section]
        self.unlabeled_views = (settings.weak, settings.strong)

    @property
    def settings(self) -> DictConfig:
        return self.cfg[self.section]

    def unlabeled_batch_size(self) -> int:
        return int(self.settings.mu) * int(self.cfg.optim.batch_size)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def ema_decay(self, batch: Batch) -> float:
        return float(self.settings.ema_decay)

    def three_logits(
        self, model: nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of the labeled batch, the weak views and the strong views."""
        assert isinstance(model, WithEMA)
        labeled, weak, strong = logits_with_targets(
            model.encoder, [batch.x, *batch.u], 1, self.settings.teacher_dropout
        )
        return labeled, weak, strong


def masked_cross_entropy(
    strong: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """mean_u weight · CE(strong, target), over every unlabeled image (USB's
    ``consistency_loss(..., 'ce', mask)``: masked images count zero in the mean)."""
    return (F.cross_entropy(strong.float(), targets, reduction="none") * weights).mean()
