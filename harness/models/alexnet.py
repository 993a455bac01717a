"""AlexNet, the paper's second network, shaped for the suite's image size.

Three macro-layers: conv1 + pool1, conv2 + pool2, conv3-5 + pool5, every pool an
overlapping 3x3 stride-2 max-pool (the reference's), ReLU after every conv, no
LRN (removed, as in the paper's reference). Then fc6, fc7 (dropout before each,
torchvision's order) and fc8.

- At 224 px and above: torchvision's layout and widths exactly (conv1 11x11
  stride 4, widths 64-192-384-256-256, fc 4096, a 6x6 adaptive average pool
  before fc6), so a torchvision ``alexnet`` state_dict loads unchanged.
- Below 224 px: the same layout (the same module indices) scaled for small
  images and a CPU: conv1 5x5 stride 1 (an 11x11 stride-4 conv would leave a
  28-px image 6 px wide before its first pool), widths halved, fc 512, and
  fc6 reading pool5 whole at the crop size. The three pools need at least 15 px.

Both keep PyTorch's default initialization, as torchvision's AlexNet does. The
average pool is the identity at the crop size (224 px, or any scaled size), so
``classify`` and the dense head (``fc_as_convolutions``) agree there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import UsageError
from harness.models.base import DENSE, register_model
from harness.models.dense import fc_as_convolutions
from harness.models.macro import MacroEncoder, Tap, conv_taps, output_size

TORCHVISION_SIZE = 224  # crops this large get torchvision's AlexNet


@dataclass(frozen=True)
class Shape:
    conv1: tuple[int, int, int]  # kernel, stride, padding
    widths: tuple[int, int, int, int, int]  # conv1..conv5 output channels
    fc: tuple[int, int]  # fc6, fc7 widths
    head: int | None  # fc6's spatial input (adaptive average pool); None = pool5's size


TORCHVISION = Shape((11, 4, 2), (64, 192, 384, 256, 256), (4096, 4096), head=6)
SCALED = Shape((5, 1, 2), (32, 96, 192, 128, 128), (512, 512), head=None)


class AlexNet(MacroEncoder):
    offers = MacroEncoder.offers | {DENSE}

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        input_size: int = TORCHVISION_SIZE,
        dropout: float = 0.5,
        shape: Shape | None = None,
    ):
        super().__init__()
        shape = shape or (TORCHVISION if input_size >= TORCHVISION_SIZE else SCALED)
        kernel, stride, padding = shape.conv1
        w1, w2, w3, w4, w5 = shape.widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, kernel, stride=stride, padding=padding),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(w1, w2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(w2, w3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w3, w4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w4, w5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        top = output_size(self.macro_specs(), input_size)
        if top < 1:
            smallest = next(s for s in range(1, 1024) if output_size(self.macro_specs(), s) >= 1)
            raise UsageError(
                f"input size {input_size} is too small for model alexnet: its three 3x3 "
                f"stride-2 max-pools need crops of at least {smallest} px"
            )
        self.head_size = shape.head or top
        self.avgpool = nn.AdaptiveAvgPool2d((self.head_size, self.head_size))
        fc6, fc7 = shape.fc
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(w5 * self.head_size**2, fc6),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc6, fc7),
            nn.ReLU(inplace=True),
            nn.Linear(fc7, num_classes),
        )
        self.num_classes = num_classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(pooled_top), 1))

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at every ``head_size`` window of pool5: [B, classes, h, w]."""
        return fc_as_convolutions(self.classifier, self.features(x), self.head_size)

    def taps(self) -> list[Tap]:
        """AlexNet counts its layers by conv: pool1, pool2, conv3, conv4, pool5."""
        return conv_taps(self.macro_specs())


@register_model("alexnet")
def alexnet(in_channels: int, num_classes: int, input_size: int, dropout: float) -> AlexNet:
    """torchvision's AlexNet from 224 px, a scaled one below (see the module)."""
    return AlexNet(in_channels, num_classes, input_size, dropout)
