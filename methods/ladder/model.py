"""The Ladder's encoder: an MLP batch-normalized at every layer, with a clean and a
corrupted pass (Rasmus et al. 2015, Algorithm 1; github.com/CuriousAI/ladder,
``ladder.py``).

Layer l maps h(l-1) to z_pre = W h (no bias), normalizes it with the batch's mean
and variance, z = (z_pre - mean) / sqrt(var + eps), adds Gaussian noise in the
corrupted pass, then h = act(gamma * (z + beta)): a per-unit shift beta on every
layer and a scale gamma on the top one only (ReLU does not need one; the code's
``top_c=True`` keeps it on the softmax layer). The input is z(0) = x in pixel units
[0, 1] (the published code's MNIST), noised in the corrupted pass. The top's
``gamma * (z + beta)`` are the class scores; softmax turns them into h(L).

Population statistics: every clean pass over labeled images that ``track``s
updates a running mean and (unbiased) variance per unit, an exponential average
with weight 0.1 (the code's running average is a 1/counter average with the
counter capped at 10, i.e. the same after 10 steps). In ``eval()`` mode a layer
normalizes with them, so a prediction never depends on the other images of a
batch. Weights start as randn / sqrt(fan_in), as ``rand_init`` there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness.models import Encoder, register_model

HIDDEN = (1000, 500, 250, 250, 250)  # Rasmus et al. 2015, section 4.1 (MNIST MLP)
EPS = 1e-10  # ladder.py adds 1e-10 to the variance
MOMENTUM = 0.1  # running statistics: the code's counter average capped at 10


@dataclass
class Pass:
    """One encoder pass, per layer l = 0 (input) .. L (top): ``z`` (normalized, noised
    in a corrupted pass; the lateral input of the decoder, and the clean pass's
    targets), the batch ``mean`` and ``std`` of z_pre (None at the input), and the
    class scores."""

    z: list[torch.Tensor]
    mean: list[torch.Tensor | None]
    std: list[torch.Tensor | None]
    logits: torch.Tensor


class LadderLayer(nn.Module):
    """Linear (no bias), batch normalization, [noise], shift (and scale), activation."""

    def __init__(self, fan_in: int, width: int, top: bool):
        super().__init__()
        self.linear = nn.Linear(fan_in, width, bias=False)
        nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(fan_in))
        self.beta = nn.Parameter(torch.zeros(width))
        self.gamma = nn.Parameter(torch.ones(width)) if top else None
        self.top = top
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def normalize(
        self, h: torch.Tensor, track: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mean, std) of W h: the batch's statistics in training mode (added to the
        running ones where ``track``), the population's in eval mode."""
        z_pre = self.linear(h)
        if self.training:
            mean, var = z_pre.mean(0), z_pre.var(0, unbiased=False)
            if track:
                n = z_pre.shape[0]
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach(), MOMENTUM)
                    self.running_var.lerp_(var.detach() * n / max(n - 1, 1), MOMENTUM)
        else:
            mean, var = self.running_mean, self.running_var
        std = torch.sqrt(var + EPS)
        return (z_pre - mean) / std, mean, std

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """h from z: ReLU(z + beta) below, class scores gamma * (z + beta) at the top."""
        shifted = z + self.beta
        if self.top:
            return shifted * self.gamma
        return torch.relu(shifted)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.activate(self.normalize(h, track=self.training)[0])


class PixelUnits(nn.Module):
    """Flatten the normalized crop and return it in pixel units [0, 1]: the Ladder's
    noise and its input cost are defined there. ``set_stats`` gives the dataset's
    normalization (identity until then)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def set_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean.copy_(torch.tensor(mean))
        self.std.copy_(torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std[:, None, None] + self.mean[:, None, None]
        return torch.flatten(pixels, 1)


class LadderMLP(Encoder):
    """784-1000-500-250-250-250-10 for MNIST: ``features`` is the image in pixel units,
    ``classifier`` the batch-normalized layers; ``encode`` is a clean or corrupted pass."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, hidden=HIDDEN):
        super().__init__()
        self.widths = (in_channels * input_size**2, *hidden, num_classes)
        self.features = PixelUnits(in_channels)
        pairs = list(zip(self.widths[:-1], self.widths[1:], strict=True))
        self.classifier = nn.Sequential(
            *(LadderLayer(a, b, top=i == len(pairs) - 1) for i, (a, b) in enumerate(pairs))
        )
        self.num_classes = num_classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled_top)

    def encode(
        self, x: torch.Tensor, input_noise: float = 0.0, noise: float = 0.0, track: bool = False
    ) -> Pass:
        """A pass over normalized images ``x``: clean with no noise, corrupted with
        Gaussian noise of std ``input_noise`` on the input and ``noise`` after every
        normalization (the global RNG, which the trainer seeds per epoch). ``track``
        adds the batch's statistics to the population's (clean labeled passes only)."""
        h = self.features(x)
        if input_noise > 0:
            h = h + input_noise * torch.randn_like(h)
        zs: list[torch.Tensor] = [h]
        means: list[torch.Tensor | None] = [None]
        stds: list[torch.Tensor | None] = [None]
        for layer in self.classifier:
            z, mean, std = layer.normalize(h, track)
            if noise > 0:
                z = z + noise * torch.randn_like(z)
            zs.append(z)
            means.append(mean)
            stds.append(std)
            h = layer.activate(z)
        return Pass(zs, means, stds, h)


@register_model("ladder_mlp")
def ladder_mlp(in_channels: int, num_classes: int, input_size: int, dropout: float) -> LadderMLP:
    """The Ladder's MNIST MLP (no dropout: its noise is the regularizer)."""
    return LadderMLP(in_channels, num_classes, input_size)
