"""UDA (Xie, Dai, Hovy, Luong & Le 2020, "Unsupervised data augmentation for consistency
training", NeurIPS).

The strong view of each unlabeled image is trained towards the weak view's prediction
sharpened by a temperature, softmax(z_weak / T), where the weak view's top probability
is at least the confidence threshold β (the mask); optionally, training-signal
annealing (TSA) drops from the labeled cost the images the model is already sure of,
whose top probability exceeds η_t (as USB's code has it; the paper reads the correct
class's), η_t rising from 1/C to 1 over the stage (linear, exp or log).

Defaults (``uda`` section), from USB's PyTorch port (microsoft/Semi-supervised-learning:
semilearn/algorithms/uda/uda.py; config/classic_cv/uda/*.yaml): ``threshold`` 0.8
(p_cutoff), ``temperature`` 0.4 (T), ``tsa`` none, λ_u 1, μ 7, EMA 0.999. Where we
depart: USB hands the pseudo-labeling hook probabilities with softmax=False, which
returns them as they are, so its UDA trains on unsharpened targets and T does nothing;
here the targets are sharpened as the paper says (``temperature=1`` gives USB's). The
TSA threshold reads the fraction of the stage done, as USB reads it/num_train_iter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import check_fraction, check_positive, register_settings
from harness.errors import unknown
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost
from methods._weak_strong import WeakStrong, WeakStrongSettings

TSA_SCHEDULES = ("none", "linear", "exp", "log")


@register_settings("uda")
@dataclass
class UDASettings(WeakStrongSettings):
    threshold: float = 0.8  # β: the weak view's top probability that keeps an image
    temperature: float = 0.4  # T of the sharpened targets
    tsa: str = "none"  # training-signal annealing: none | linear | exp | log

    def __post_init__(self) -> None:
        self.check("uda")
        check_fraction("uda.threshold", self.threshold)
        check_positive("uda.temperature", self.temperature)
        if self.tsa not in TSA_SCHEDULES:
            raise unknown("uda.tsa", self.tsa, TSA_SCHEDULES)


def tsa_threshold(schedule: str, progress: float, classes: int) -> float:
    """η_t: a labeled image whose correct-class probability exceeds it is left out of
    the labeled cost (1 = none is)."""
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        alpha = progress
    elif schedule == "exp":
        alpha = math.exp((progress - 1) * 5)
    else:
        alpha = 1 - math.exp(-progress * 5)
    return alpha * (1 - 1 / classes) + 1 / classes


@register_method("uda")
class UDA(WeakStrong):
    config_sections = ("uda",)
    section = "uda"

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        settings = self.settings
        labeled, weak, strong = self.three_logits(model, batch)
        eta = tsa_threshold(settings.tsa, batch.progress, labeled.shape[1])
        with torch.no_grad():
            kept = (torch.softmax(labeled.float(), 1).max(1).values <= eta).float()
            probs = torch.softmax(weak.float(), dim=1)
            mask = (probs.max(dim=1).values >= settings.threshold).float()
            targets = torch.softmax(weak.float() / settings.temperature, dim=1)
        per_image = -(targets * F.log_softmax(strong.float(), dim=1)).sum(dim=1)
        self.log_scalar("mask", mask.mean())
        return {
            "cls": (F.cross_entropy(labeled, batch.y, reduction="none") * kept).mean(),
            "consistency": settings.weight * (per_image * mask).mean(),
        }
