"""A multilayer perceptron: the model with no pooling at all.

Features are the flattened image, the classifier two ReLU hidden layers (dropout
after each) and the class scores. It offers nothing beyond features and a
classifier (no macro-layers, no switches, no dense evaluation), which makes it
the model that shows a method's ``needs`` being refused, and a plain baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.base import Encoder, fc_head, register_model

HIDDEN = (256, 256)


class MLP(Encoder):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: int,
        dropout: float = 0.5,
        hidden: tuple[int, int] = HIDDEN,
    ):
        super().__init__()
        self.features = nn.Flatten()
        self.classifier = fc_head(in_channels * input_size**2, hidden, num_classes, dropout)
        self.num_classes = num_classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(pooled_top, 1))


@register_model("mlp")
def mlp(in_channels: int, num_classes: int, input_size: int, dropout: float) -> MLP:
    """Two hidden layers of 256 on the flattened crop."""
    return MLP(in_channels, num_classes, input_size, dropout)
