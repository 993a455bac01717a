"""VAT's MNIST network in its TPAMI setting, registered as the model ``vat_mlp``
(Miyato, Maeda, Koyama & Ishii 2018; suites/mnist_vat.yaml runs it).

784-1200-600-300-150-10: each layer a Linear with bias, then batch normalization
(affine), then ReLU; the class layer is batch-normalized too, its output the class
scores (takerum/vat, ``models/fnn_mnist_semisup.py``: BatchNormalization after every
Linear, softmax last). Weights start as N(0, 1/fan_in), biases at 0
(``source/layers/linear.py``); batch norm adds 1e-6 to the variance and its running
statistics move by 1 - 0.9 per update (``source/layers/batch_normalization.py``:
``moving_avg_ratio=0.9``).

The widths and the noise are the TPAMI paper's, which has no public code: the first
author in takerum/vat issue #3 (2017-05-12) gives "784-1200-600-300-150-10" and
"gaussian noise (mean=0, stddev=0.5) on each hidden layer". Where the noise goes is
not said; here it is added to each hidden layer's output (after its ReLU, the input
of the next Linear), as a noise layer between layers would be in that code
(``source/layers/gaussian_noise.py`` takes a layer's output), in training mode only.
It draws from torch's global generator, so VAT's clean, probing and perturbed passes
of one unlabeled batch, which ``methods.vat`` starts from one RNG state, share their
noise: the power iteration then follows the perturbation, not the noise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.models import Encoder, register_model

WIDTHS = (1200, 600, 300, 150)  # takerum/vat issue #3: 784-1200-600-300-150-10
NOISE = 0.5  # std of the Gaussian noise on each hidden layer (takerum/vat issue #3)
BN_EPS = 1e-6  # batch_normalization.py: T.sqrt(1e-6 + var)
BN_MOMENTUM = 0.1  # batch_normalization.py: moving_avg_ratio = 0.9


class GaussianNoise(nn.Module):
    """``x`` plus N(0, std^2) noise in training mode (torch's global generator); ``x``
    itself in eval mode."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std == 0:
            return x
        return x + self.std * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"std={self.std}"


def linear(fan_in: int, width: int) -> nn.Linear:
    """A Linear with bias, weights N(0, 1/fan_in) and biases 0 (``linear.py``)."""
    layer = nn.Linear(fan_in, width)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(fan_in))
    nn.init.zeros_(layer.bias)
    return layer


def batch_norm(width: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(width, eps=BN_EPS, momentum=BN_MOMENTUM)


class VATMLP(Encoder):
    """``features`` flattens the image; ``classifier`` holds the batch-normalized
    layers, the class scores last."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        widths: tuple[int, ...] = WIDTHS,
        noise: float = NOISE,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_features
        for width in widths:
            layers += [linear(fan_in, width), batch_norm(width), nn.ReLU(), GaussianNoise(noise)]
            fan_in = width
        layers += [linear(fan_in, num_classes), batch_norm(num_classes)]
        self.features = nn.Flatten()
        self.classifier = nn.Sequential(*layers)
        self.num_classes = num_classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(pooled_top, 1))


@register_model("vat_mlp")
def vat_mlp(in_channels: int, num_classes: int, input_size: int, dropout: float) -> VATMLP:
    """VAT's TPAMI MNIST MLP on the flattened crop (no dropout: its noise regularizes)."""
    return VATMLP(in_channels * input_size**2, num_classes)
