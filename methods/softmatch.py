"""SoftMatch (Chen, Tao, Wang, Wang, Hou, Fan, Wu, Savvides, Shinozaki, Raj, Schiele &
Xie 2023, "SoftMatch: addressing the quantity-quality trade-off in semi-supervised
learning", ICLR).

FixMatch with a soft weight for every weak view instead of a hard mask: the weak
views' probabilities are distribution-aligned to uniform (``harness.alignment``),
their top probability p is weighted exp(-(min(p - μ_t, 0))² / (2 σ_t² / n²)), a
Gaussian truncated at its mean, where μ_t and σ_t² are EMAs of the mean and the
(unbiased) variance of the aligned top probabilities (from 1/C and 1). The hard label
is the top class of the weak view's own (unaligned) scores, as in the reference.

Defaults (``softmatch`` section), from USB's PyTorch port
(microsoft/Semi-supervised-learning: semilearn/algorithms/softmatch/softmatch.py,
utils.py ``SoftMatchWeightingHook``, hooks/dist_align.py ``DistAlignEMAHook``,
config/classic_cv/softmatch/*.yaml): ``momentum`` 0.999 (ema_p, of μ_t, σ_t² and the
alignment's p_model), ``n_sigma`` 2, alignment to uniform (dist_uniform), one μ_t for
all classes (per_class false), hard labels, λ_u 1, μ 7, EMA 0.999. The statistics are
in every checkpoint and, under DDP, move with every rank's images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.alignment import DistributionAlignment
from harness.config import check_fraction, check_positive, register_settings
from harness.engine.distributed import all_rows
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost
from methods._weak_strong import WeakStrong, WeakStrongSettings, masked_cross_entropy


@register_settings("softmatch")
@dataclass
class SoftMatchSettings(WeakStrongSettings):
    momentum: float = 0.999  # of μ_t, σ_t² and the alignment's running mean
    n_sigma: float = 2.0  # the Gaussian's width: σ_t / n_sigma

    def __post_init__(self) -> None:
        self.check("softmatch")
        check_fraction("softmatch.momentum", self.momentum)
        check_positive("softmatch.n_sigma", self.n_sigma)


@register_method("softmatch")
class SoftMatch(WeakStrong):
    config_sections = ("softmatch",)
    section = "softmatch"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.alignment: DistributionAlignment | None = None
        self.mean = torch.tensor(0.0)  # μ_t (set to 1/C on the first step)
        self.variance = torch.tensor(1.0)  # σ_t²

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        labeled, weak, strong = self.three_logits(model, batch)
        weights = self.soft_weights(weak.detach().float(), labeled.detach().float())
        targets = weak.detach().argmax(dim=1)
        self.log_scalar("mask", weights.mean())
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": self.settings.weight * masked_cross_entropy(strong, targets, weights),
        }

    @torch.no_grad()
    def soft_weights(self, weak: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
        """The truncated-Gaussian weight of each of this rank's weak views, after the
        alignment and the statistics moved with every rank's."""
        classes, m = weak.shape[1], float(self.settings.momentum)
        if self.alignment is None:
            self.alignment = DistributionAlignment(classes, m, "uniform")
            self.mean = torch.tensor(1.0 / classes)
        probs = self.alignment(torch.softmax(weak, dim=1), torch.softmax(labeled, dim=1))
        top = all_rows(probs).max(dim=1).values
        self.mean = m * self.mean.to(probs.device) + (1 - m) * top.mean()
        self.variance = m * self.variance.to(probs.device) + (1 - m) * top.var(unbiased=True)
        confidence = probs.max(dim=1).values
        below = torch.clamp(confidence - self.mean, max=0.0)
        return torch.exp(-(below**2) / (2 * self.variance / float(self.settings.n_sigma) ** 2))

    def state_dict(self) -> dict[str, Any]:
        if self.alignment is None:
            return {}
        return {
            "alignment": self.alignment.state_dict(),
            "mean": self.mean.cpu(),
            "variance": self.variance.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            classes = len(state["alignment"]["p_target"])
            self.alignment = DistributionAlignment(classes, float(self.settings.momentum))
            self.alignment.load_state_dict(state["alignment"])
            self.mean, self.variance = state["mean"], state["variance"]
