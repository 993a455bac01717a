"""The Ladder's encoders, batch-normalized at every layer, with a clean and a corrupted
pass (Rasmus et al. 2015, Algorithm 1; github.com/CuriousAI/ladder, ``ladder.py``):
``ladder_mlp`` (784-1000-500-250-250-250-10, the paper's MNIST MLP) and
``ladder_conv_small`` (the paper's Conv-Small for MNIST, the Γ-model's encoder).

Layer l maps h(l-1) to z_pre = W h (no bias; or a convolution, or a pooling),
normalizes it with the batch's mean and variance, z = (z_pre - mean) / sqrt(var +
eps), adds Gaussian noise in the corrupted pass, then h = act(gamma * (z + beta)):
a per-unit shift beta on every layer and a scale gamma on the top one only (ReLU
does not need one; the code's ``top_c=True`` keeps it on the softmax layer). The
input is z(0) = x in pixel units [0, 1] (the published code's MNIST), noised in the
corrupted pass. The top's ``gamma * (z + beta)`` are the class scores; softmax
turns them into h(L).

Population statistics: every clean pass over labeled images that ``track``s
updates a running mean and (unbiased) variance per unit, an exponential average
with weight 0.1 (the code's running average is a 1/counter average with the
counter capped at 10, i.e. the same after 10 steps). In ``eval()`` mode a layer
normalizes with them, so a prediction never depends on the other images of a
batch. Weights start as randn / sqrt(fan_in) (fc) or uniform within
+-sqrt(3 / fan_in) (convolutions), as ``rand_init`` and ``rand_init_conv`` there.
A convolution's or a pooling's statistics are per channel, over the batch and the
positions; a pooling layer has no shift and no activation (the code's ``linear``).

Conv-Small (run.py's ``convf:32:5-maxpool:2:2-convv:64:3-convf:64:3-maxpool:2:2-
convv:128:3-convv:10:1-globalmeanpool:6:6-fc:10``): ``convf`` is a "full"
convolution (zero padding k-1, the map grows), ``convv`` a "valid" one; on 28 px
MNIST the maps are 32, 16, 14, 16, 8, 6, 6, then 1 and the 10 class scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import UsageError
from harness.models import Encoder, register_model

HIDDEN = (1000, 500, 250, 250, 250)  # Rasmus et al. 2015, section 4.1 (MNIST MLP)
EPS = 1e-10  # ladder.py adds 1e-10 to the variance
MOMENTUM = 0.1  # running statistics: the code's counter average capped at 10
# Conv-Small, layer by layer: (kind, channels, kernel, "full" padding)
CONV_SMALL = (
    ("conv", 32, 5, True),
    ("pool", 0, 2, False),
    ("conv", 64, 3, False),
    ("conv", 64, 3, True),
    ("pool", 0, 2, False),
    ("conv", 128, 3, False),
    ("conv", 10, 1, False),
    ("mean", 0, 0, False),
)


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


class FullyConnected(nn.Linear):
    """A Linear without bias on the flattened input, randn / sqrt(fan_in) at first."""

    def __init__(self, fan_in: int, width: int):
        super().__init__(fan_in, width, bias=False)
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(fan_in))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.flatten(h, 1))


def conv(in_channels: int, out_channels: int, kernel: int, full: bool) -> nn.Conv2d:
    """A convolution without bias, "full" (padding kernel - 1) or "valid"."""
    layer = nn.Conv2d(
        in_channels, out_channels, kernel, padding=kernel - 1 if full else 0, bias=False
    )
    bound = math.sqrt(3.0 / (in_channels * kernel * kernel))
    nn.init.uniform_(layer.weight, -bound, bound)
    return layer


class GlobalMeanPool(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3), keepdim=True)


def _per_unit(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-unit (per-channel) vector shaped to broadcast against ``like``."""
    return t.view(1, -1, *([1] * (like.dim() - 2)))


class LadderLayer(nn.Module):
    """``op`` (fc, convolution or pooling), batch normalization, [noise], shift (and
    scale), activation: ``kind`` relu | pool (no shift, no activation) | top (scale and
    shift: the class scores)."""

    def __init__(self, op: nn.Module, width: int, kind: str):
        super().__init__()
        self.op, self.kind = op, kind
        self.beta = nn.Parameter(torch.zeros(width)) if kind != "pool" else None
        self.gamma = nn.Parameter(torch.ones(width)) if kind == "top" else None
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    @property
    def top(self) -> bool:
        return self.kind == "top"

    def normalize(
        self, h: torch.Tensor, track: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, mean, std) of op(h): the batch's statistics in training mode (added to the
        running ones where ``track``), the population's in eval mode; mean and std are
        shaped to broadcast against z."""
        z_pre = self.op(h).float()  # statistics in fp32, also under bf16 autocast
        if self.training:
            dims = (0,) if z_pre.dim() == 2 else (0, 2, 3)
            mean = z_pre.mean(dims, keepdim=True)
            var = z_pre.var(dims, unbiased=False, keepdim=True)
            if track:
                n = z_pre.numel() // z_pre.shape[1]
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach().flatten(), MOMENTUM)
                    self.running_var.lerp_(var.detach().flatten() * n / max(n - 1, 1), MOMENTUM)
        else:
            mean = _per_unit(self.running_mean, z_pre)
            var = _per_unit(self.running_var, z_pre)
        std = torch.sqrt(var + EPS)
        return (z_pre - mean) / std, mean, std

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """h from z: ReLU(z + beta), z itself after a pooling, gamma * (z + beta) at the top."""
        if self.beta is None:
            return z
        shifted = z + _per_unit(self.beta, z)
        if self.gamma is not None:
            return shifted * _per_unit(self.gamma, z)
        return torch.relu(shifted)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.activate(self.normalize(h, track=self.training)[0])


class PixelUnits(nn.Module):
    """The normalized crop back in pixel units [0, 1] (flattened for an MLP): the
    Ladder's noise and its input cost are defined there. ``set_stats`` gives the
    dataset's normalization (identity until then)."""

    def __init__(self, channels: int, flatten: bool):
        super().__init__()
        self.flatten = flatten
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def set_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean.copy_(torch.tensor(mean))
        self.std.copy_(torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std[:, None, None] + self.mean[:, None, None]
        return torch.flatten(pixels, 1) if self.flatten else pixels


class LadderEncoder(Encoder):
    """``features`` is the image in pixel units, ``classifier`` the batch-normalized
    layers (the class scores at the top); ``encode`` is a clean or corrupted pass.
    ``widths`` holds the units (channels) of every layer, input first."""

    def __init__(self, features: PixelUnits, layers: list[LadderLayer], widths: tuple[int, ...]):
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(*layers)
        self.widths = widths
        self.num_classes = widths[-1]

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


def build_mlp(in_channels: int, num_classes: int, input_size: int, hidden=HIDDEN) -> LadderEncoder:
    widths = (in_channels * input_size**2, *hidden, num_classes)
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    layers = [
        LadderLayer(FullyConnected(a, b), b, "top" if i == len(pairs) - 1 else "relu")
        for i, (a, b) in enumerate(pairs)
    ]
    return LadderEncoder(PixelUnits(in_channels, flatten=True), layers, widths)


def build_conv_small(in_channels: int, num_classes: int, input_size: int) -> LadderEncoder:
    layers, widths, channels, size = [], [in_channels], in_channels, input_size
    for kind, out, kernel, full in CONV_SMALL:
        if kind == "conv":
            layers.append(LadderLayer(conv(channels, out, kernel, full), out, "relu"))
            channels, size = out, size + (kernel - 1 if full else 1 - kernel)
        elif kind == "pool":
            layers.append(LadderLayer(nn.MaxPool2d(kernel, ceil_mode=True), channels, "pool"))
            size = -(-size // kernel)
        else:
            layers.append(LadderLayer(GlobalMeanPool(), channels, "pool"))
            size = 1
        if size < 1:
            raise UsageError(f"model ladder_conv_small cannot take {input_size} px crops")
        widths.append(channels)
    layers.append(LadderLayer(FullyConnected(channels, num_classes), num_classes, "top"))
    widths.append(num_classes)
    return LadderEncoder(PixelUnits(in_channels, flatten=False), layers, tuple(widths))


@register_model("ladder_mlp")
def ladder_mlp(
    in_channels: int, num_classes: int, input_size: int, dropout: float
) -> LadderEncoder:
    """The Ladder's MNIST MLP (no dropout: its noise is the regularizer)."""
    return build_mlp(in_channels, num_classes, input_size)


@register_model("ladder_conv_small")
def ladder_conv_small(
    in_channels: int, num_classes: int, input_size: int, dropout: float
) -> LadderEncoder:
    """The Ladder paper's Conv-Small (no dropout: its noise is the regularizer)."""
    return build_conv_small(in_channels, num_classes, input_size)
