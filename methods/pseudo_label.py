"""Pseudo-Label (Lee 2013, "Pseudo-Label: the simple and efficient semi-supervised
learning method for deep neural networks", ICML workshop on challenges in
representation learning).

Each step, the network's own class with the highest score on an unlabeled image is
taken as that image's label (recomputed every step, no gradient through it), and
the cross-entropy against it is added to the labeled cost with a weight that grows
from 0 over the first part of training (Lee 2013, equations 15-16):

    loss = CE(labeled) + w(t) · mean over unlabeled images of 1[conf ≥ τ] · CE(u, argmax f(u))

Defaults (``pseudo_label`` section) are those of Oliver et al. 2018's realistic
evaluation (brain-research/realistic-ssl-evaluation, lib/hparams.py), the setting in
which the family is usually compared:

- ``threshold`` = 0.95 (τ): only pseudo-labels at least this confident count (Lee
  keeps all: ``threshold=0``); the fraction kept is logged as ``mask``;
- ``weight`` = 1.0: the weight's maximum (Lee's α_f is 3);
- ``ramp`` = 0.4: the weight's ramp-up, exp(-5 (1 - t)²), over the first 40 % of the
  stage (Oliver et al.: 200,000 of 500,000 steps; Lee's ramp is linear, between
  epochs T1 and T2 of his schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import check_fraction, check_weight, register_settings
from harness.method import Batch, Method, Stage, register_method
from harness.ramps import sigmoid_rampup
from methods._common import has_dropout, labeled_cost, logits_of, teacher_pass


@register_settings("pseudo_label")
@dataclass
class PseudoLabelSettings:
    threshold: float = 0.95  # τ; 0 keeps every pseudo-label (Lee)
    weight: float = 1.0  # the ramp's maximum
    ramp: float = 0.4  # ramp-up length, fraction of the stage
    # false: the pseudo-labels come from a second pass without dropout (Lee 2013 takes
    # them from the trained pass, dropout on), where the model has dropout
    teacher_dropout: bool = True

    def __post_init__(self) -> None:
        check_weight("pseudo_label.weight", self.weight)
        check_fraction("pseudo_label.ramp", self.ramp, closed_low=True, closed_high=True)
        check_fraction("pseudo_label.threshold", self.threshold, closed_low=True)


@register_method("pseudo_label")
class PseudoLabel(Method):
    config_sections = ("pseudo_label",)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        settings = self.cfg.pseudo_label
        if not batch.u:  # every image labeled: no pool to pseudo-label
            return labeled_cost(model, batch)
        labeled, unlabeled = logits_of(model, batch.x, batch.u[0])
        if not settings.teacher_dropout and has_dropout(model):
            (scores,) = teacher_pass(model, batch.u[0])
        else:
            scores = unlabeled
        with torch.no_grad():
            confidence, targets = torch.softmax(scores.float(), dim=1).max(dim=1)
            keep = (confidence >= settings.threshold).float()
        per_image = F.cross_entropy(unlabeled, targets, reduction="none")
        ramp = sigmoid_rampup(batch.progress, settings.ramp)
        self.log_scalar("mask", keep.mean())
        self.log_scalar("weight", settings.weight * ramp)
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": settings.weight * ramp * (per_image * keep).mean(),
        }
