"""The "conv-large" network of the consistency methods on small images (Laine &
Aila 2017, Table 5; the same network in Tarvainen & Valpola 2017 and Miyato et al.
2018): 13 layers.

    Gaussian noise σ = 0.15 on the input (training only)
    3 x [conv 3x3, 128, BN, leaky ReLU 0.1]; max-pool 2x2; dropout 0.5
    3 x [conv 3x3, 256, BN, leaky ReLU 0.1]; max-pool 2x2; dropout 0.5
    conv 3x3 512 (valid), conv 1x1 256, conv 1x1 128 (each BN, leaky ReLU 0.1)
    global average pool; fully connected to the classes

Batch normalization stands where the paper has mean-only batch normalization and
weight normalization (Tarvainen & Valpola's PyTorch code uses batch normalization).
It offers no switches or macro-layers, so every method that needs none can train
it. At 32x32 one forward pass costs about 0.7 GMAC per image: a GPU network; the
CPU-sized suites use the small VGGs.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import UsageError
from harness.models.base import Encoder, register_model

NOISE_STD = 0.15
SLOPE = 0.1  # leaky ReLU's negative slope


def _conv(in_channels: int, out_channels: int, kernel: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(SLOPE, inplace=True),
    ]


class GaussianNoise(nn.Module):
    """Adds N(0, std²) noise in training (global RNG, seeded per epoch), nothing in eval."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.std * torch.randn_like(x) if self.training and self.std > 0 else x


class ConvLarge(Encoder):
    def __init__(self, in_channels: int, num_classes: int, input_size: int, dropout: float):
        super().__init__()
        if input_size < 12:
            raise UsageError(
                f"conv_large needs crops of at least 12 px, got data.crop={input_size}"
            )
        layers: list[nn.Module] = [GaussianNoise(NOISE_STD)]
        layers += _conv(in_channels, 128, 3, 1) + _conv(128, 128, 3, 1) + _conv(128, 128, 3, 1)
        layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
        layers += _conv(128, 256, 3, 1) + _conv(256, 256, 3, 1) + _conv(256, 256, 3, 1)
        layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
        layers += _conv(256, 512, 3, 0) + _conv(512, 256, 1, 0) + _conv(256, 128, 1, 0)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(128, num_classes))
        self.num_classes = num_classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled_top)


@register_model("conv_large")
def conv_large(in_channels: int, num_classes: int, input_size: int, dropout: float) -> ConvLarge:
    """Laine & Aila's 13-layer network; ``model.dropout`` after each max-pool."""
    return ConvLarge(in_channels, num_classes, input_size, dropout)
