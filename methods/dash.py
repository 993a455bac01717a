"""Dash (Xu, Shang, Ye, Qian, Li, Sun, Li & Jin 2021, "Dash: semi-supervised learning
with dynamic thresholding", ICML).

A weak view trains the strong view where its own loss against its target is at most
ρ_t, a loss threshold that falls as training goes on: ρ_t = max(C γ^(-⌊t / period⌋)
ρ̂, ρ_min), ρ̂ the labeled loss at the end of a supervised warm-up. Targets are soft,
softmax(z_weak / T), until ρ_t reaches ρ_min, then hard.

Defaults (``dash`` section), from USB's PyTorch port (microsoft/Semi-supervised-learning:
semilearn/algorithms/dash/dash.py and utils.py ``DashThresholdingHook``;
config/classic_cv/dash/*.yaml): ``gamma`` 1.27, ``c`` 1.0001, ``rho_min`` 0.05,
``temperature`` 0.5, ``warmup_steps`` 2048 (num_wu_iter; supervised steps on the
labeled batch alone), ``period_steps`` 10,240 (ρ moves every 10 of USB's 1,024-step
epochs), λ_u 1, μ 7, EMA 0.999. Where we depart: USB sets ρ̂ to the loss on its
evaluation set after the warm-up, which is the test set; here ρ̂ is an EMA (0.9) of the
labeled batches' loss over the warm-up, so the test set is never read in training.
The warm-up is the first ``warmup_steps`` of the training stage (USB runs it before
and then counts from 0, as ρ's period does here). ρ̂ is in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import check_positive, check_weight, register_settings
from harness.errors import UsageError
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost
from methods._weak_strong import WeakStrong, WeakStrongSettings

WARMUP_MOMENTUM = 0.9  # of ρ̂, the warm-up's labeled loss


@register_settings("dash")
@dataclass
class DashSettings(WeakStrongSettings):
    temperature: float = 0.5  # T of the soft targets
    gamma: float = 1.27  # ρ's decay per period
    c: float = 1.0001  # ρ's start, times ρ̂
    rho_min: float = 0.05  # ρ's floor, where targets turn hard
    warmup_steps: int = 2048  # supervised steps before the unlabeled term
    period_steps: int = 10240  # steps between two moves of ρ

    def __post_init__(self) -> None:
        self.check("dash")
        check_positive("dash.temperature", self.temperature)
        check_positive("dash.c", self.c)
        check_positive("dash.rho_min", self.rho_min)
        check_positive("dash.period_steps", self.period_steps, integer=True)
        check_weight("dash.warmup_steps", self.warmup_steps)
        if not self.gamma >= 1:
            raise UsageError(f"dash.gamma must be >= 1 (ρ falls), got {self.gamma}")


def loss_threshold(step: int, rho_hat: float, settings: Any) -> float:
    """ρ at ``step`` steps after the warm-up."""
    moves = step // int(settings.period_steps)
    return max(float(settings.c) * float(settings.gamma) ** -moves * rho_hat, settings.rho_min)


@register_method("dash")
class Dash(WeakStrong):
    config_sections = ("dash",)
    section = "dash"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.rho_hat: torch.Tensor | None = None

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        settings = self.settings
        after = batch.step - int(settings.warmup_steps)
        if after < 0:  # the warm-up: the labeled batch alone, and ρ̂ follows its loss
            terms = labeled_cost(model.encoder, batch)
            seen = terms["cls"].detach().float()
            self.rho_hat = (
                seen
                if self.rho_hat is None
                else WARMUP_MOMENTUM * self.rho_hat.to(seen.device) + (1 - WARMUP_MOMENTUM) * seen
            )
            return terms
        if self.rho_hat is None:  # no warm-up at all: the first step's labeled loss
            self.rho_hat = labeled_cost(model.encoder, batch)["cls"].detach().float()
        labeled, weak, strong = self.three_logits(model, batch)
        mask, targets = self.dynamic_mask(weak.detach().float(), after)
        self.log_scalar("mask", mask.mean())
        per_image = -(targets * F.log_softmax(strong.float(), dim=1)).sum(dim=1)
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": settings.weight * (per_image * mask).mean(),
        }

    @torch.no_grad()
    def dynamic_mask(self, weak: torch.Tensor, after: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, targets as distributions) of the weak views ``after`` steps past the
        warm-up: soft targets until ρ reaches ρ_min, then one-hot."""
        settings = self.settings
        rho = loss_threshold(after, float(self.rho_hat), settings)
        if rho == settings.rho_min:
            targets = F.one_hot(weak.argmax(dim=1), weak.shape[1]).float()
        else:
            targets = torch.softmax(weak / float(settings.temperature), dim=1)
        own_loss = -(targets * F.log_softmax(weak, dim=1)).sum(dim=1)
        return (own_loss <= rho).float(), targets

    def state_dict(self) -> dict[str, Any]:
        return {} if self.rho_hat is None else {"rho_hat": self.rho_hat.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.rho_hat = state["rho_hat"]
