"""MixMatch (Berthelot, Carlini, Goodfellow, Papernot, Oliver & Raffel 2019,
"MixMatch: a holistic approach to semi-supervised learning", NeurIPS; Algorithm 1).

Each step: K weak views of each unlabeled image; the guessed label is the mean of
the network's softmax over the K views, sharpened with temperature T (no gradient).
The labeled batch (one-hot labels) and the K unlabeled batches (guessed labels) are
each mixed with a shuffle of all of them (MixUp with λ' = max(λ, 1 - λ),
λ ~ Beta(α, α) per image, so that a mixed image stays closest to its own). The
labeled cost is the cross-entropy on the mixed labeled images, the unlabeled cost
the squared error between softmax outputs and mixed guesses (mean over classes and
images), weighted λ_u and ramped up linearly. Evaluation is with an EMA of the
weights (``harness.ema``; the raw network's val error is ``raw_top1_val``).

Defaults (``mixmatch`` section; google-research/mixmatch, mixmatch.py and the
paper's runs/*.sh): ``views`` = 2 (K), ``temperature`` = 0.5 (T), ``alpha`` = 0.75
(α), ``weight`` = 75.0 (λ_u for CIFAR-10), ``ema_decay`` = 0.999; ``ramp`` = 0.4,
λ_u's linear ramp over the first 40 % of the stage, as the other consistency
methods here (Oliver et al. 2018). The paper ramps over its first 16,000 steps,
1/64 of its 2^26 images; that fraction of a CPU-length run (48 of 3,000 steps on
``mnist_ssl``) gives the full weight to the sharpened guesses of a network that
has not yet learned its labeled images, and they reinforce themselves: on MNIST
at 100 labels every val image's top-1 class was the same (90.2% error) for the
first 800 steps, in the trained network and its EMA alike (measured).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import check_fraction, check_positive, check_weight, register_settings
from harness.ema import WithEMA
from harness.method import Batch, Stage, register_method
from harness.ramps import linear_rampup
from methods._common import (
    EMAEvaluated,
    dropout_off,
    labeled_cost,
    logits_of,
    sharpen,
    soft_cross_entropy,
    softmax_mse,
)


@register_settings("mixmatch")
@dataclass
class MixMatchSettings:
    views: int = 2  # K, augmented views per unlabeled image for the guess
    temperature: float = 0.5  # T, the sharpening temperature
    alpha: float = 0.75  # the Beta(α, α) of mixup
    weight: float = 75.0  # λ_u, the unlabeled term's maximum weight
    ramp: float = 0.4  # of the stage; the paper's 16,000 steps are 1/64 of its 2^20
    ema_decay: float = 0.999  # the evaluated EMA of the weights
    # false: the label-guessing pass without dropout, where the model has it (the
    # reference's WRN has none)
    teacher_dropout: bool = True

    def __post_init__(self) -> None:
        check_positive("mixmatch.views", self.views, integer=True)
        check_fraction("mixmatch.temperature", self.temperature, closed_high=True)
        check_positive("mixmatch.alpha", self.alpha)
        check_weight("mixmatch.weight", self.weight)
        check_fraction("mixmatch.ramp", self.ramp, closed_low=True, closed_high=True)
        check_fraction("mixmatch.ema_decay", self.ema_decay, closed_low=True)


def mix(
    images: torch.Tensor, targets: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp of each row with a random other row (global RNG, seeded per epoch), with
    λ' = max(λ, 1 - λ) per row, λ ~ Beta(α, α)."""
    n = len(images)
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    lam = beta.sample((n,)).to(images.device)
    lam = torch.maximum(lam, 1.0 - lam)
    order = torch.randperm(n).to(images.device)
    shape = (n, *([1] * (images.dim() - 1)))
    mixed = lam.view(shape) * images + (1.0 - lam.view(shape)) * images[order]
    mixed_targets = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[order]
    return mixed, mixed_targets


@register_method("mixmatch")
class MixMatch(EMAEvaluated):
    config_sections = ("mixmatch",)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.unlabeled_views = ("weak",) * int(cfg.mixmatch.views)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, WithEMA)
        settings = self.cfg.mixmatch
        network = model.encoder
        if not batch.u:
            return labeled_cost(network, batch)
        classes = network.num_classes
        with torch.no_grad(), nullcontext() if settings.teacher_dropout else dropout_off(network):
            guesses = [torch.softmax(s.float(), 1) for s in logits_of(network, *batch.u)]
            guess = sharpen(torch.stack(guesses).mean(0), settings.temperature)
        images = torch.cat([batch.x, *batch.u])
        targets = torch.cat([F.one_hot(batch.y, classes).float(), guess.repeat(len(batch.u), 1)])
        mixed, mixed_targets = mix(images, targets, settings.alpha)
        n = len(batch.x)
        labeled, unlabeled = logits_of(network, mixed[:n], mixed[n:])
        weight = settings.weight * linear_rampup(batch.progress, 0.0, settings.ramp)
        self.log_scalar("weight", weight)
        return {
            "cls": soft_cross_entropy(labeled, mixed_targets[:n]),
            "consistency": weight * softmax_mse(unlabeled, mixed_targets[n:]),
        }

    def ema_decay(self, batch: Batch) -> float:
        return float(self.cfg.mixmatch.ema_decay)
