"""FreeMatch (Wang, Chen, Heng, Hou, Fan, Wu, Wang, Savvides, Shinozaki, Raj, Schiele
& Xie 2023, "FreeMatch: self-adaptive thresholding for semi-supervised learning",
ICLR).

FixMatch with a self-adaptive threshold: a global τ_t, the EMA of the weak views'
mean top probability (from 1/C), scaled per class by p̃_t(c) / max_c p̃_t, where p̃_t
is the EMA of the mean class probabilities (from uniform); a weak view whose top class
c has probability at least τ_t · p̃_t(c) / max p̃_t trains the strong view with the hard
label c. A fairness term weighted λ_f pulls the confidently trained strong views' mean
prediction, normalized by their label histogram, towards p̃_t normalized by the EMA
label histogram h_t (the paper's negative cross-entropy, as the reference adds it).

Defaults (``freematch`` section), from USB's PyTorch port
(microsoft/Semi-supervised-learning: semilearn/algorithms/freematch/freematch.py,
utils.py ``FreeMatchThresholingHook``, config/classic_cv/freematch/*.yaml):
``momentum`` 0.999 (ema_p), ``fairness`` 0.001 (ent_loss_ratio in the configs; the
script's own default is 0.01), hard labels, λ_u 1, μ 7, EMA 0.999; the mean, not a
quantile, of the top probabilities (use_quantile false), no clipping. The statistics
move before the mask reads them, as in the reference; they are in every checkpoint
and, under DDP, move with every rank's images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import check_fraction, check_weight, register_settings
from harness.engine.distributed import all_rows
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost
from methods._weak_strong import WeakStrong, WeakStrongSettings, masked_cross_entropy


@register_settings("freematch")
@dataclass
class FreeMatchSettings(WeakStrongSettings):
    momentum: float = 0.999  # of τ_t, p̃_t and h_t
    fairness: float = 0.001  # λ_f

    def __post_init__(self) -> None:
        self.check("freematch")
        check_fraction("freematch.momentum", self.momentum)
        check_weight("freematch.fairness", self.fairness)


def _inverse(values: torch.Tensor) -> torch.Tensor:
    """1 / values with 1/0 read as 0 (a class never predicted weighs nothing)."""
    inverse = 1.0 / values
    return torch.where(torch.isinf(inverse), torch.zeros_like(inverse), inverse)


def fairness_term(
    mask: torch.Tensor, strong: torch.Tensor, p_model: torch.Tensor, label_hist: torch.Tensor
) -> torch.Tensor:
    """Σ_c SumNorm(p̃_t / h_t)(c) · log SumNorm(p̄ / h̄)(c) over the kept strong views
    (p̄ their mean prediction, h̄ their label histogram): the reference's
    ``entropy_loss``."""
    kept = strong[mask.bool()].float()
    probs = kept.softmax(dim=-1)
    hist = torch.bincount(probs.argmax(dim=-1), minlength=kept.shape[1]).to(probs.dtype)
    hist = hist / hist.sum()
    target = p_model * _inverse(label_hist).detach()
    target = target / target.sum()
    mean = probs.mean(dim=0) * _inverse(hist).detach()
    mean = mean / mean.sum()
    return (target * torch.log(mean + 1e-12)).sum()


@register_method("freematch")
class FreeMatch(WeakStrong):
    config_sections = ("freematch",)
    section = "freematch"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.p_model: torch.Tensor | None = None  # p̃_t
        self.label_hist: torch.Tensor | None = None  # h_t
        self.tau: torch.Tensor | None = None  # τ_t

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        labeled, weak, strong = self.three_logits(model, batch)
        probs = torch.softmax(weak.detach().float(), dim=1)
        mask, targets = self.adaptive_mask(probs)
        self.log_scalar("mask", mask.mean())
        self.log_scalar("tau", self.tau)
        terms = {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": self.settings.weight * masked_cross_entropy(strong, targets, mask),
        }
        fairness = torch.zeros((), device=strong.device)
        if mask.sum() > 0:
            fairness = fairness_term(mask, strong, self.p_model, self.label_hist)
        terms["fairness"] = self.settings.fairness * fairness
        return terms

    @torch.no_grad()
    def adaptive_mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move τ_t, p̃_t and h_t with every rank's weak views, then (mask, hard labels)
        of this rank's."""
        classes, m = probs.shape[1], float(self.settings.momentum)
        if self.p_model is None:
            self.p_model = torch.full((classes,), 1.0 / classes)
            self.label_hist = torch.full((classes,), 1.0 / classes)
            self.tau = self.p_model.mean()
        every = all_rows(probs)
        top, top_class = every.max(dim=1)
        self.tau = self.tau.to(probs.device) * m + (1 - m) * top.mean()
        self.p_model = self.p_model.to(probs.device) * m + (1 - m) * every.mean(dim=0)
        hist = torch.bincount(top_class, minlength=classes).to(probs.dtype)
        self.label_hist = self.label_hist.to(probs.device) * m + (1 - m) * hist / hist.sum()
        confidence, targets = probs.max(dim=1)
        scale = self.p_model / self.p_model.max()
        return (confidence >= self.tau * scale[targets]).float(), targets

    def state_dict(self) -> dict[str, Any]:
        if self.p_model is None:
            return {}
        return {
            "p_model": self.p_model.cpu(),
            "label_hist": self.label_hist.cpu(),
            "tau": self.tau.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.p_model, self.label_hist, self.tau = (
                state["p_model"],
                state["label_hist"],
                state["tau"],
            )
