"""An exponential moving average (EMA) of a network's weights, kept beside it.

Mean Teacher's teacher (Tarvainen & Valpola 2017) and the evaluation model of
MixMatch and FixMatch (Berthelot et al. 2019; Sohn et al. 2020) are EMA copies of
the trained network. The copy is a submodule of the method's model (``EMA`` inside
it), so it is saved in every checkpoint and restored on resume with no extra
state, and its parameters never reach the optimizer (``trained_parameters``).

The update is θ' <- decay θ' + (1 - decay) θ on parameters; buffers (batch-norm
running statistics, counters) are copied from the trained network, as the
PyTorch ports of FixMatch and USB do: statistics averaged over weights that no
longer exist would not match the averaged weights any better than the current ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from harness.models import Encoder


class EMA(nn.Module):
    """An EMA copy of ``network`` (``.module``), updated by ``update``; never trained."""

    def __init__(self, network: Encoder):
        super().__init__()
        self.module = copy.deepcopy(network)
        for param in self.module.parameters():
            param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @torch.no_grad()
    def update(self, network: nn.Module, decay: float) -> None:
        """θ' <- decay θ' + (1 - decay) θ for each parameter; buffers copied."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        mine = list(self.module.parameters())
        theirs = list(network.parameters())
        torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        for own, other in zip(self.module.buffers(), network.buffers(), strict=True):
            own.copy_(other)


def trained_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """``model``'s parameters outside any ``EMA`` copy (what an optimizer may train)."""
    copies = {
        id(p) for module in model.modules() if isinstance(module, EMA) for p in module.parameters()
    }
    return (p for p in model.parameters() if id(p) not in copies)


class WithEMA(nn.Module):
    """A trained network (``.encoder``, what the engine's ``classifier_of`` finds) and
    its EMA copy (``.ema``): Mean Teacher's student and teacher, FixMatch's and
    MixMatch's network and evaluation model."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.ema = EMA(encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)
