"""Wide ResNets (Zagoruyko & Komodakis 2016) as the semi-supervised papers build them:
WRN-28-2, the backbone of Oliver et al. 2018's realistic evaluation and of MixMatch
and FixMatch on CIFAR-10 and SVHN; WRN-28-8, FixMatch's CIFAR-100 network; and
WRN-37-2, FixMatch's STL-10 network at 96 px (a fourth group of 256 channels).

Depth 28: a 3x3 stem of 16 channels, then three groups of four pre-activation
residual blocks (BN, leaky ReLU, conv 3x3, BN, leaky ReLU, conv 3x3) of 32, 64 and
128 channels (16, 32, 64 times the widening factor 2), the second and third groups
starting with stride 2; a last BN and leaky ReLU, global average pooling, and a
fully connected layer. As in those papers' code: leaky ReLU slope 0.1, batch-norm
momentum 0.001 (TensorFlow's decay 0.999), no dropout, a 1x1 convolution on the
shortcut where the shape changes. About 1.5 M parameters; it offers no switches or
macro-layers.

WRN-28-8 is the same at widening factor 8 (128, 256, 512 channels; about 23 M
parameters). WRN-37-2 adds a fourth group of four blocks at 256 channels, stride 2
(google-research/fixmatch's ResNet with ``scales=4``; USB's ``wrn_var_37_2``): 33
convolutions and 4 shortcut ones. Its four downsamplings want the 96 px of STL-10,
so it refuses crops under 64 px, where its last group would see 4x4 or less.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import UsageError
from harness.models.base import Encoder, register_model

SLOPE = 0.1
BN_MOMENTUM = 0.001
DEPTH, WIDEN = 28, 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class Block(nn.Module):
    """One pre-activation residual block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = _bn(in_channels), _bn(out_channels)
        self.act = nn.LeakyReLU(SLOPE)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        same = in_channels == out_channels and stride == 1
        self.shortcut = (
            None if same else nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.bn1(x))
        out = self.conv2(self.act(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(Encoder):
    """``groups`` groups of ``blocks`` residual blocks, of 16 x widen x 2^g channels."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = DEPTH,
        widen: int = WIDEN,
        groups: int = 3,
    ):
        super().__init__()
        blocks = (depth - 4) // 6
        widths = [16] + [16 * widen * 2**group for group in range(groups)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for group in range(groups):
            for index in range(blocks):
                stride = 2 if group > 0 and index == 0 else 1
                source = widths[group] if index == 0 else widths[group + 1]
                layers.append(Block(source, widths[group + 1], stride))
        layers += [_bn(widths[-1]), nn.LeakyReLU(SLOPE), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(widths[-1], num_classes))
        self.num_classes = num_classes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled_top)


@register_model("wrn_28_2")
def wrn_28_2(in_channels: int, num_classes: int, input_size: int, dropout: float) -> WideResNet:
    """WRN-28-2 (any crop size: it ends in global average pooling; no dropout)."""
    return WideResNet(in_channels, num_classes)


@register_model("wrn_28_8")
def wrn_28_8(in_channels: int, num_classes: int, input_size: int, dropout: float) -> WideResNet:
    """WRN-28-8, FixMatch's CIFAR-100 network (any crop size; no dropout)."""
    return WideResNet(in_channels, num_classes, widen=8)


# below this crop WRN-37-2's fourth group would work on 4x4 maps or less
WRN_37_2_MIN_CROP = 64


@register_model("wrn_37_2")
def wrn_37_2(in_channels: int, num_classes: int, input_size: int, dropout: float) -> WideResNet:
    """WRN-37-2, FixMatch's STL-10 network at 96 px (no dropout)."""
    if input_size < WRN_37_2_MIN_CROP:
        raise UsageError(
            f"model wrn_37_2 is STL-10's network at 96 px and needs a crop of at least "
            f"{WRN_37_2_MIN_CROP} px, got data.crop={input_size}; valid: data.crop >= "
            f"{WRN_37_2_MIN_CROP}, or wrn_28_2 at 32 px"
        )
    return WideResNet(in_channels, num_classes, groups=4)
