"""The supervised baseline: cross-entropy on the labeled subset only.

Two stages, so that comparisons with the decoding pathways are fair: ``pretrain``
(step 1 of the paper's procedure: train the classifier on the labeled subset)
and ``finetune``, a classification-only fine-tune as long as the decoder
methods' joint fine-tune (step 4). Set ``schedule.finetune.epochs=0`` to train
the classifier alone; with ``model.pretrained`` set, ``pretrain`` loads that
checkpoint instead of training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.method import Batch, Method, Stage, register_method


@register_method("baseline")
class Baseline(Method):
    def stages(self) -> list[Stage]:
        return [Stage("pretrain", initializes=True), Stage("finetune")]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        return {"cls": F.cross_entropy(model(batch.x), batch.y)}
