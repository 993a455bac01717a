"""Encoders made of macro-layers, with a classifier head: VGG and AlexNet.

A macro-layer is a run of convs, each followed by ReLU, then a max-pool (VGG:
3x3 pad-1 convs and 2x2 pools; AlexNet: strided 11x11 and 5x5 convs and
overlapping 3x3 stride-2 pools, LRN removed as in the paper's reference). The
module layouts mirror torchvision's exactly (``features`` and ``classifier``
Sequentials with the same indices), so a torchvision ``state_dict`` loads
unchanged. ``macro_specs`` describes the macro-layers for decoders to mirror;
``encode`` exposes what they need (each pooled output, its max-pool switches,
the sizes before each pool and at each macro-layer's input); ``dense_logits``
runs the fc layers as convolutions over a larger image for dense evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UsageError, unknown


@dataclass(frozen=True)
class Architecture:
    macro_layers: tuple[tuple[int, ...], ...]  # output channels of each conv, per macro-layer
    fc: tuple[int, ...]  # hidden fc widths (fc6, fc7)


ARCHITECTURES: dict[str, Architecture] = {
    "vgg16": Architecture(
        ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)), (4096, 4096)
    ),
    # For 8-16 px inputs (digits): two macro-layers.
    "vgg_small_2": Architecture(((32, 32), (64, 64)), (256, 256)),
    # For 28-32 px inputs (Fashion-MNIST, CIFAR-sized images): three macro-layers.
    "vgg_small_3": Architecture(((32, 32), (64, 64), (128, 128)), (512, 512)),
}


@dataclass(frozen=True)
class ConvSpec:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class PoolSpec:
    kernel: int
    stride: int


@dataclass(frozen=True)
class MacroSpec:
    """One macro-layer: its convs (each followed by ReLU), then a max-pool."""

    convs: tuple[ConvSpec, ...]
    pool: PoolSpec


@dataclass
class Encoding:
    """What one encoder pass exposes to decoders, one entry per macro-layer."""

    pooled: list[torch.Tensor]  # pool_l outputs
    switches: list[torch.Tensor | None]  # max-pool argmax indices (None unless asked for)
    sizes: list[torch.Size]  # spatial size before each pool (to undo floor division)
    inputs: list[torch.Size]  # spatial size at each macro-layer's input (to undo strides)


def _macro_specs(features: nn.Sequential) -> list[MacroSpec]:
    specs, convs = [], []
    for module in features:
        if isinstance(module, nn.Conv2d):
            convs.append(
                ConvSpec(
                    module.in_channels,
                    module.out_channels,
                    module.kernel_size[0],
                    module.stride[0],
                    module.padding[0],
                )
            )
        elif isinstance(module, nn.MaxPool2d):
            specs.append(MacroSpec(tuple(convs), PoolSpec(module.kernel_size, module.stride)))
            convs = []
    return specs


def _encode(features: nn.Sequential, x: torch.Tensor, switches: bool) -> Encoding:
    out = Encoding([], [], [], [x.shape[-2:]])
    for module in features:
        if isinstance(module, nn.MaxPool2d):
            out.sizes.append(x.shape[-2:])
            kernel, stride = module.kernel_size, module.stride
            if switches:
                x, index = F.max_pool2d(x, kernel, stride, return_indices=True)
                out.switches.append(index)
            else:
                x = F.max_pool2d(x, kernel, stride)
                out.switches.append(None)
            out.pooled.append(x)
            out.inputs.append(x.shape[-2:])
        else:
            x = module(x)
    out.inputs.pop()  # the last pool's output feeds no macro-layer
    return out


class VGG(nn.Module):
    def __init__(
        self,
        arch: Architecture,
        in_channels: int,
        num_classes: int,
        input_size: int,
        dropout: float = 0.5,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for widths in arch.macro_layers:
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.head_size = input_size // 2 ** len(arch.macro_layers)
        if self.head_size < 1:
            raise UsageError(
                f"input size {input_size} is too small for {len(arch.macro_layers)} max-pools"
            )
        fc6, fc7 = arch.fc
        self.classifier = nn.Sequential(
            nn.Linear(channels * self.head_size**2, fc6),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc6, fc7),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc7, num_classes),
        )
        self.arch = arch
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's VGG initialization, so from-scratch training matches it."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def macro_specs(self) -> list[MacroSpec]:
        return _macro_specs(self.features)

    def encode(self, x: torch.Tensor, switches: bool = False) -> Encoding:
        return _encode(self.features, x, switches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        """fc6..fc8 on the last macro-layer's output (the single-crop head)."""
        if pooled_top.shape[-1] != self.head_size or pooled_top.shape[-2] != self.head_size:
            raise ValueError(
                f"classifier expects {self.head_size}x{self.head_size} features, "
                f"got {tuple(pooled_top.shape[-2:])}; use dense_logits"
            )
        return self.classifier(torch.flatten(pooled_top, 1))

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at every position: fc layers applied as convolutions.

        fc6 becomes a ``head_size`` x ``head_size`` conv, fc7 and fc8 1x1 convs,
        sharing the Linear weights (views, no copies). Returns [B, classes, h, w].
        """
        x = self.features(x)
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for i, linear in enumerate(linears):
            kernel = self.head_size if i == 0 else 1
            weight = linear.weight.view(linear.out_features, -1, kernel, kernel)
            x = F.conv2d(x, weight, linear.bias)
            if i < len(linears) - 1:
                x = F.relu(x)  # dropout is the identity in eval mode
        return x


class AlexNet(nn.Module):
    """torchvision's AlexNet layout (the paper's second inverted network), LRN-free.

    Three macro-layers: conv1 (11x11 stride 4) + pool1, conv2 (5x5) + pool2,
    conv3-5 + pool5, all pools 3x3 stride 2 (overlapping). The classifier sees
    pool5 through torchvision's 6x6 adaptive average pool, so at 224 px (pool5
    6x6) fc6 reads pool5 exactly.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        self.head_size = 6

    def macro_specs(self) -> list[MacroSpec]:
        return _macro_specs(self.features)

    def encode(self, x: torch.Tensor, switches: bool = False) -> Encoding:
        return _encode(self.features, x, switches)

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(pooled_top), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def build_encoder(
    name: str, in_channels: int, num_classes: int, input_size: int, dropout: float = 0.5
) -> VGG:
    if name not in ARCHITECTURES:
        raise unknown("model (model.name)", name, ARCHITECTURES)
    return VGG(ARCHITECTURES[name], in_channels, num_classes, input_size, dropout)


def load_torchvision_vgg(model: VGG, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a torchvision-format VGG state_dict (same keys; checked strictly)."""
    model.load_state_dict(state_dict, strict=True)


def classifier_of(model: torch.nn.Module) -> nn.Module:
    """The encoder+head inside a method's model (the model itself for the baseline)."""
    if isinstance(model, VGG):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, VGG):
        raise TypeError("a method's model must be a VGG or expose it as `.encoder`")
    return encoder
