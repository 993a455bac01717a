"""DeFixMatch (Schmutz, Humbert & Mattei 2022, "Don't fear the unlabelled: safe
semi-supervised learning via debiasing", ICLR 2023).

FixMatch's pseudo-label cost made unbiased: the same cost computed on the labeled
images, as if they were unlabeled (their weak view's confident class trains their
strong view), is subtracted, so that the unlabeled term's bias (what it would do to
data whose labels we know) cancels. The labeled cost is the mean of the
cross-entropies of the labeled images' weak and strong views.

    loss = ½ (CE(x_weak, y) + CE(x_strong, y))
           + λ_u (mean_u 1[p̂_u ≥ τ] CE(u_strong, p̂_u) − mean_x 1[p̂_x ≥ τ] CE(x_strong, p̂_x))

Defaults (``defixmatch`` section), from USB's PyTorch port
(microsoft/Semi-supervised-learning: semilearn/algorithms/defixmatch/defixmatch.py;
config/classic_cv/defixmatch/*.yaml): ``threshold`` 0.95 (p_cutoff), ``weight`` 0.5
(ulb_loss_ratio in its configs), hard labels, μ 7, EMA 0.999. The labeled images'
strong view is the engine's (``Method.labeled_extra_views``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import check_fraction, register_settings
from harness.ema import WithEMA
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost, logits_with_targets
from methods._weak_strong import WeakStrong, WeakStrongSettings, masked_cross_entropy
from methods.fixmatch import confident_targets


@register_settings("defixmatch")
@dataclass
class DeFixMatchSettings(WeakStrongSettings):
    threshold: float = 0.95  # τ
    weight: float = 0.5  # λ_u (USB's configs)

    def __post_init__(self) -> None:
        self.check("defixmatch")
        check_fraction("defixmatch.threshold", self.threshold)


@register_method("defixmatch")
class DeFixMatch(WeakStrong):
    config_sections = ("defixmatch",)
    section = "defixmatch"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.labeled_extra_views = (cfg.defixmatch.strong,)

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        assert isinstance(model, WithEMA)
        (x_strong,) = batch.x_views
        # teacher_dropout=false: the unlabeled weak view's pass without dropout (the
        # labeled weak view is trained on, so it stays in the trained pass)
        labeled, labeled_strong, weak, strong = logits_with_targets(
            model.encoder, [batch.x, x_strong, *batch.u], 2, self.settings.teacher_dropout
        )
        tau, weight = float(self.settings.threshold), float(self.settings.weight)
        targets, mask = confident_targets(weak, tau)
        targets_labeled, mask_labeled = confident_targets(labeled, tau)
        self.log_scalar("mask", mask.mean())
        self.log_scalar("mask_labeled", mask_labeled.mean())
        return {
            "cls": 0.5
            * (F.cross_entropy(labeled, batch.y) + F.cross_entropy(labeled_strong, batch.y)),
            "pseudo": weight * masked_cross_entropy(strong, targets, mask),
            "debias": -weight * masked_cross_entropy(labeled_strong, targets_labeled, mask_labeled),
        }
