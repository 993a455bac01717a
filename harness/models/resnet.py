"""ResNet-50 (He et al. 2016), the backbone of the ImageNet semi-supervised protocols
(FixMatch's and USB's ImageNet tables at 1% and 10% labels).

torchvision's ``resnet50`` built from scratch (no weights are downloaded), split into
the harness's ``features`` (the stem, the four stages, global average pooling) and a
one-layer ``classifier``; its module names are torchvision's under ``features``, so a
torchvision checkpoint maps onto it by a prefix. Batch norm, no dropout. It offers no
switches or macro-layers.
"""

from __future__ import annotations

import torch
from torch import nn

from harness._torchvision_compat import import_torchvision
from harness.errors import UsageError
from harness.models.base import Encoder, register_model

# the stem and four stages downsample 32x: below this the last stage sees a 1x1 map
RESNET50_MIN_CROP = 32


class ResNet50(Encoder):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        torchvision = import_torchvision()
        net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.features = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool,
            net.layer1, net.layer2, net.layer3, net.layer4,
            net.avgpool, nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Sequential(net.fc)
        self.num_classes = num_classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled_top)


@register_model("resnet50")
def resnet50(in_channels: int, num_classes: int, input_size: int, dropout: float) -> ResNet50:
    """ResNet-50 for crops of at least 32 px (ImageNet's 224 in its suites)."""
    if input_size < RESNET50_MIN_CROP:
        raise UsageError(
            f"model resnet50 downsamples 32x and needs a crop of at least {RESNET50_MIN_CROP} "
            f"px, got data.crop={input_size}; valid: data.crop >= {RESNET50_MIN_CROP}"
        )
    return ResNet50(in_channels, num_classes)
