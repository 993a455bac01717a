"""AdaMatch (Berthelot, Roelofs, Sohn, Carlini & Kurakin 2022, "AdaMatch: a unified
approach to semi-supervised learning and domain adaptation", ICLR).

FixMatch with a relative confidence threshold and distribution alignment: the weak
views' probabilities are aligned to the labeled batches' running class distribution
(``harness.alignment``, target "labeled"), and a weak view keeps its hard label (the
aligned top class) where its aligned top probability is at least τ times the labeled
batch's mean top probability, so the threshold follows how confident the model is on
data it knows.

Defaults (``adamatch`` section), from USB's PyTorch port
(microsoft/Semi-supervised-learning: semilearn/algorithms/adamatch/adamatch.py and
utils.py ``AdaMatchThresholdingHook``, hooks/dist_align.py with p_target_type
"model"; config/classic_cv/adamatch/*.yaml): ``threshold`` 0.95 (τ, p_cutoff),
``momentum`` 0.999 (ema_p), hard labels, λ_u 1, μ 7, EMA 0.999. As USB's port, the
paper's random logit interpolation (a domain-adaptation device) is left out. The
alignment's state is in every checkpoint; under DDP the labeled mean is every rank's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.alignment import DistributionAlignment
from harness.config import check_fraction, register_settings
from harness.engine.distributed import all_rows
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost
from methods._weak_strong import WeakStrong, WeakStrongSettings, masked_cross_entropy


@register_settings("adamatch")
@dataclass
class AdaMatchSettings(WeakStrongSettings):
    threshold: float = 0.95  # τ, relative to the labeled batch's mean top probability
    momentum: float = 0.999  # of the alignment's running means

    def __post_init__(self) -> None:
        self.check("adamatch")
        check_fraction("adamatch.threshold", self.threshold)
        check_fraction("adamatch.momentum", self.momentum)


@register_method("adamatch")
class AdaMatch(WeakStrong):
    config_sections = ("adamatch",)
    section = "adamatch"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.alignment: DistributionAlignment | None = None

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        labeled, weak, strong = self.three_logits(model, batch)
        mask, targets = self.relative_mask(weak.detach().float(), labeled.detach().float())
        self.log_scalar("mask", mask.mean())
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": self.settings.weight * masked_cross_entropy(strong, targets, mask),
        }

    @torch.no_grad()
    def relative_mask(
        self, weak: torch.Tensor, labeled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, hard labels) of this rank's weak views, aligned."""
        if self.alignment is None:
            self.alignment = DistributionAlignment(
                weak.shape[1], float(self.settings.momentum), "labeled"
            )
        probs_labeled = torch.softmax(labeled, dim=1)
        aligned = self.alignment(torch.softmax(weak, dim=1), probs_labeled)
        cutoff = float(self.settings.threshold) * all_rows(probs_labeled).max(dim=1).values.mean()
        confidence, targets = aligned.max(dim=1)
        return (confidence >= cutoff).float(), targets

    def state_dict(self) -> dict[str, Any]:
        return {} if self.alignment is None else {"alignment": self.alignment.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            classes = len(state["alignment"]["p_target"])
            self.alignment = DistributionAlignment(
                classes, float(self.settings.momentum), "labeled"
            )
            self.alignment.load_state_dict(state["alignment"])
