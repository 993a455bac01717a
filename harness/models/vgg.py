"""VGG (the paper's network) and smaller VGGs of the same shape for small images.

Macro-layers of 3x3 pad-1 convs + ReLU, each ending in a 2x2 max-pool; then
fc6, fc7 (ReLU, dropout) and fc8. The module layout is torchvision's exactly
(``features`` and ``classifier`` Sequentials with the same indices), so a
torchvision ``vgg16`` state_dict loads unchanged, and so is the initialization,
so that from-scratch training matches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import UsageError
from harness.models.base import DENSE, fc_head, register_model
from harness.models.dense import fc_as_convolutions
from harness.models.macro import MacroEncoder


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
    # vgg_small_3 at 1/8 of its width: on Fashion-MNIST with every label it still errs on
    # more than 10% of its training images once converged, as VGG-16 does on ImageNet
    # (17.43% top-1 train): the paper's regime (suites/fashion_mnist_full.yaml)
    "vgg_narrow_3": Architecture(((4, 4), (8, 8), (16, 16)), (64, 64)),
}


class VGG(MacroEncoder):
    offers = MacroEncoder.offers | {DENSE}

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
        self.classifier = fc_head(channels * self.head_size**2, arch.fc, num_classes, dropout)
        self.arch = arch
        self.num_classes = num_classes
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

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        """fc6..fc8 on the last macro-layer's output (the single-crop head)."""
        if pooled_top.shape[-1] != self.head_size or pooled_top.shape[-2] != self.head_size:
            raise ValueError(
                f"classifier expects {self.head_size}x{self.head_size} features, "
                f"got {tuple(pooled_top.shape[-2:])}; use dense_logits"
            )
        return self.classifier(torch.flatten(pooled_top, 1))

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at every position: [B, classes, h, w] (``fc_as_convolutions``)."""
        return fc_as_convolutions(self.classifier, self.features(x), self.head_size)


def _builder(name: str) -> None:
    def build(in_channels: int, num_classes: int, input_size: int, dropout: float) -> VGG:
        return VGG(ARCHITECTURES[name], in_channels, num_classes, input_size, dropout)

    build.__doc__ = f"{name}: VGG with macro-layers {ARCHITECTURES[name].macro_layers}."
    register_model(name)(build)


for _name in ARCHITECTURES:
    _builder(_name)


def load_torchvision_vgg(model: VGG, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a torchvision-format VGG state_dict (same keys; checked strictly)."""
    model.load_state_dict(state_dict, strict=True)
