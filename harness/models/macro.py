"""Macro-layers: what a mirror network copies and what one encoder pass exposes to it.

A macro-layer is a run of convs, each followed by ReLU, then a max-pool. A model
that offers ``macro_layers`` keeps them, in order, in an ``nn.Sequential``
called ``features``; the helpers here read any such Sequential (VGG's 3x3/2x2
stack, AlexNet's strided convs and overlapping 3x3 stride-2 pools alike), so no
mirror or tool needs to know which network it faces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.base import MACRO_LAYERS, SWITCHES, Encoder


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


@dataclass(frozen=True)
class Tap:
    """A place to read an activation and start a mirror from, in a model's own
    layer numbering: macro-layer ``level`` (0-based) after its max-pool
    (``conv=None``), or the ReLU output of its conv number ``conv`` (0-based)."""

    name: str
    level: int
    conv: int | None = None


@dataclass
class Encoding:
    """What one encoder pass exposes to a mirror network, one entry per macro-layer."""

    pooled: list[torch.Tensor]  # pool_l outputs
    switches: list[torch.Tensor | None]  # max-pool argmax indices (None unless asked for)
    sizes: list[torch.Size]  # spatial size before each pool (to undo floor division)
    inputs: list[torch.Size]  # spatial size at each macro-layer's input (to undo strides)
    # the ReLU output of every conv, per macro-layer (empty unless asked for): where a
    # mirror starts from a conv inside a macro-layer
    activations: list[list[torch.Tensor]] = field(default_factory=list)


def macro_specs_of(features: nn.Sequential) -> list[MacroSpec]:
    """The macro-layers of a conv/ReLU/max-pool Sequential, bottom first."""
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


def encode_features(
    features: nn.Sequential, x: torch.Tensor, switches: bool, activations: bool = False
) -> Encoding:
    """Run ``features`` on ``x`` and keep what a mirror needs (see ``Encoding``)."""
    out = Encoding([], [], [], [x.shape[-2:]])
    level: list[torch.Tensor] = []
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
            if activations:
                out.activations.append(level)
            level = []
        else:
            x = module(x)
            if activations and isinstance(module, nn.ReLU):
                level.append(x)
    out.inputs.pop()  # the last pool's output feeds no macro-layer
    return out


def pooled_taps(specs: list[MacroSpec]) -> list[Tap]:
    """One tap per macro-layer, after its pool: pool1, pool2, ... (VGG's numbering)."""
    return [Tap(f"pool{level + 1}", level) for level in range(len(specs))]


def conv_taps(specs: list[MacroSpec]) -> list[Tap]:
    """One tap per conv, numbered through the network (conv1, conv2, ...); a macro-layer's
    last conv is read after its pool (a mirror undoes the pool first), so it is
    named by that pool (AlexNet's layers 1-5: pool1, pool2, conv3, conv4, pool5)."""
    taps, number = [], 0
    for level, spec in enumerate(specs):
        for index in range(len(spec.convs)):
            number += 1
            if index == len(spec.convs) - 1:
                taps.append(Tap(f"pool{number}", level))
            else:
                taps.append(Tap(f"conv{number}", level, index))
    return taps


def output_size(specs: list[MacroSpec], size: int) -> int:
    """The spatial size after every macro-layer, for a ``size`` x ``size`` input
    (floor division, as ``nn.Conv2d`` and ``nn.MaxPool2d`` without ceil mode)."""
    for spec in specs:
        for conv in spec.convs:
            size = (size + 2 * conv.padding - conv.kernel) // conv.stride + 1
        size = (size - spec.pool.kernel) // spec.pool.stride + 1
        if size < 1:
            return 0
    return size


class MacroEncoder(Encoder):
    """An encoder whose ``features`` Sequential is a stack of macro-layers: it offers
    them to mirror networks, with their max-pool switches."""

    offers = frozenset({MACRO_LAYERS, SWITCHES})
    features: nn.Sequential

    def macro_specs(self) -> list[MacroSpec]:
        return macro_specs_of(self.features)

    def encode(
        self, x: torch.Tensor, switches: bool = False, activations: bool = False
    ) -> Encoding:
        return encode_features(self.features, x, switches, activations)

    def taps(self) -> list[Tap]:
        """Where a mirror can start from, bottom first (default: after each pool)."""
        return pooled_taps(self.macro_specs())
