"""Mean Teacher (Tarvainen & Valpola 2017, "Mean teachers are better role models:
weight-averaged consistency targets improve semi-supervised deep learning
results", NIPS).

The teacher is an exponential moving average of the student's weights
(``harness.ema``, kept in the model and so in every checkpoint). Each unlabeled image
is seen under two draws of the augmentation: the student's softmax on one view is
pulled towards the teacher's (no gradient) on the other by a squared-error
consistency cost, with a weight ramped up along exp(-5 (1 - t)^2); the labeled cost
is the student's cross-entropy. After each step the teacher moves:
θ' <- α θ' + (1 - α) θ with α = min(1 - 1/(step + 1), ema_decay), the paper's
ramp of α, which lets the teacher forget its random start.

Evaluation is with the teacher (``eval_model``); the student's val error is recorded
beside it (``student_top1_val`` in ``metrics.json``). The agreement of teacher and
student on the unlabeled batch is logged as ``agreement``.

Defaults (``mean_teacher`` section):

- ``ema_decay`` = 0.99: α in CuriousAI/mean-teacher's default (its TensorFlow
  model.py: 0.99 during the ramp-up, 0.999 after); one value here, for short runs;
- ``weight`` = 8.0: the consistency weight of Oliver et al. 2018 (lib/hparams.py),
  which is Mean Teacher's CIFAR-10 value 100 x 4,000 / 50,000;
- ``ramp`` = 0.4: the sigmoid ramp-up length, a fraction of the stage (Oliver et al.).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import check_fraction, check_weight, register_settings
from harness.ema import WithEMA
from harness.method import Batch, Stage, register_method
from harness.ramps import sigmoid_rampup
from methods._common import (
    EMAEvaluated,
    dropout_off,
    labeled_cost,
    logits_of,
    softmax_mse,
)


@register_settings("mean_teacher")
@dataclass
class MeanTeacherSettings:
    ema_decay: float = 0.99  # α, the teacher's EMA decay (after its warm-up)
    weight: float = 8.0  # the consistency cost's maximum weight
    ramp: float = 0.4  # sigmoid ramp-up of the weight, fraction of the stage
    # false: the teacher's pass without dropout, where the model has it (Tarvainen &
    # Valpola's teacher gets the student's noise, dropout included)
    teacher_dropout: bool = True

    def __post_init__(self) -> None:
        check_fraction("mean_teacher.ema_decay", self.ema_decay, closed_low=True)
        check_weight("mean_teacher.weight", self.weight)
        check_fraction("mean_teacher.ramp", self.ramp, closed_low=True, closed_high=True)


def teacher_decay(step: int, ema_decay: float) -> float:
    """α at optimizer step ``step`` (counted from 0): min(1 - 1/(step + 1), ema_decay)."""
    return min(1.0 - 1.0 / (step + 1), ema_decay)


@register_method("mean_teacher")
class MeanTeacher(EMAEvaluated):
    config_sections = ("mean_teacher",)
    unlabeled_views = ("weak", "weak")
    trained_name = "student"

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, WithEMA)
        settings = self.cfg.mean_teacher
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        labeled, student = logits_of(model.encoder, batch.x, batch.u[0])
        with (
            torch.no_grad(),
            dropout_off(model.ema) if not settings.teacher_dropout else nullcontext(),
        ):
            teacher = model.ema(batch.u[1]).float()
            self.log_scalar("agreement", (teacher.argmax(1) == student.argmax(1)).float().mean())
        weight = settings.weight * sigmoid_rampup(batch.progress, settings.ramp)
        self.log_scalar("weight", weight)
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "consistency": weight * softmax_mse(student, torch.softmax(teacher, dim=1)),
        }

    def ema_decay(self, batch: Batch) -> float:
        return teacher_decay(batch.step, self.cfg.mean_teacher.ema_decay)
