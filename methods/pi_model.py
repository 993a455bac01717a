"""The Π-model (Laine & Aila 2017, "Temporal ensembling for semi-supervised
learning", ICLR, section 2.1).

Each unlabeled image is seen twice in a step, under two independent draws of the
augmentation (two ``weak`` views) and of the network's own noise (dropout); the
squared difference of the two softmax outputs, averaged over classes and images, is
the consistency cost, added to the labeled cross-entropy with a weight that ramps up
from 0 along exp(-5 (1 - t)^2) (their appendix):

    loss = CE(labeled) + w(t) · mean((softmax f(u₁) - softmax f(u₂))²)

Both evaluations carry gradient (the paper's Π-model; Mean Teacher is the variant
with a fixed target), and the cost covers the unlabeled batch (Laine & Aila also add
it on the labeled images). Defaults (``pi_model`` section) are Oliver et al. 2018's
(brain-research/realistic-ssl-evaluation, lib/hparams.py):

- ``weight`` = 20.0: the ramp's maximum (Laine & Aila's w_max = 100 times the
  labeled fraction, smlaine2/tempens config.py: 0.17 at 100 of 60,000 labels);
- ``ramp`` = 0.4: the ramp-up length, a fraction of the stage (Oliver et al.: 200,000
  of 500,000 steps; Laine & Aila: 80 of 300 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import check_fraction, check_weight, register_settings
from harness.method import Batch, Method, Stage, register_method
from harness.ramps import sigmoid_rampup
from methods._common import labeled_cost, logits_of, softmax_mse


@register_settings("pi_model")
@dataclass
class PiModelSettings:
    weight: float = 20.0  # w_max
    ramp: float = 0.4  # ramp-up length, fraction of the stage

    def __post_init__(self) -> None:
        check_weight("pi_model.weight", self.weight)
        check_fraction("pi_model.ramp", self.ramp, closed_low=True, closed_high=True)


@register_method("pi_model")
class PiModel(Method):
    config_sections = ("pi_model",)
    unlabeled_views = ("weak", "weak")

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        settings = self.cfg.pi_model
        if not batch.u:
            return labeled_cost(model, batch)
        labeled, first, second = logits_of(model, batch.x, *batch.u)
        weight = settings.weight * sigmoid_rampup(batch.progress, settings.ramp)
        self.log_scalar("weight", weight)
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "consistency": weight * softmax_mse(first, torch.softmax(second.float(), dim=1)),
        }
