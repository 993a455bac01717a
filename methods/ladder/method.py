"""The Ladder networks' three methods: ``ladder`` (the full Ladder), ``ladder_gamma``
(the Γ-model) and ``ladder_supervised`` (the same encoder, labeled cost only).

Each step (Rasmus et al. 2015, Algorithm 1; github.com/CuriousAI/ladder, ladder.py):

- a corrupted pass over the labeled batch gives the classification cost
  (cross-entropy of its class scores), as the paper's "labeled cost on the
  corrupted pass";
- a clean pass over the labeled batch, without gradient, adds its batch
  statistics to the population's (``track``; ladder.py's running averages are
  those of the clean labeled part). Predictions are clean passes, and in
  evaluation they use the population statistics;
- for the full Ladder and the Γ-model, a clean and a corrupted pass over the
  unlabeled batch (each normalized with its own batch's statistics, as ladder.py
  normalizes its labeled and unlabeled parts apart), and the decoder from the
  corrupted top: u(L) = batchnorm(softmax(class scores)), u(l) = batchnorm(V(l+1)
  ẑ(l+1)), ẑ(l) = g(z̃(l), u(l)). Layer l's denoising cost is
  ``weight(l) * mean((ẑ_BN(l) - z(l))^2)``, with ẑ_BN normalized by the clean
  pass's batch mean and std (the code's ``zestbn="bugfix"``; the input is not
  normalized) and z(l) the clean pass's normalized activations. The mean over
  units and images is the paper's ``λ_l / (N m_l) Σ ||·||²``. The Γ-model has the
  top layer's combinator and cost only.

g is the combinator of the paper's equation (2), called ``gauss`` in the code and
"vanilla" in later work: ten parameters per unit, μ(u) = a1 σ(a2 u + a3) + a4 u + a5,
v(u) = a6 σ(a7 u + a8) + a9 u + a10, ẑ = (z̃ - μ(u)) v(u) + μ(u); a2 = a7 = 1 and the
others 0 at the start (ladder.py's initial values).

Optimizer and schedule come from the suite (``suites/mnist_ladder.yaml``): Adam at
0.002, 100 labeled + 100 unlabeled images per step, constant and then linear to
zero over the last third (``optim.lr_schedule=linear_last_third``), 150 epochs of
600 steps in the paper.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.data import Dataset
from harness.errors import UsageError
from harness.method import Batch, Method, Stage, register_method
from harness.models import Encoder
from methods.ladder.model import EPS, LadderEncoder, Pass

# the encoders each method trains: the full Ladder's decoder mirrors fc layers only
MLP_ONLY = ("ladder_mlp",)
LADDER_MODELS = ("ladder_mlp", "ladder_conv_small")


class Combinator(nn.Module):
    """g(z̃, u) of one layer: ten parameters per unit (the module docstring)."""

    def __init__(self, width: int):
        super().__init__()
        a = torch.zeros(10, width)
        a[1] = 1.0  # a2
        a[6] = 1.0  # a7
        self.a = nn.Parameter(a)

    def forward(self, z_noisy: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = self.a
        mu = a1 * torch.sigmoid(a2 * u + a3) + a4 * u + a5
        v = a6 * torch.sigmoid(a7 * u + a8) + a9 * u + a10
        return (z_noisy - mu) * v + mu


def batch_normalize(u: torch.Tensor) -> torch.Tensor:
    """Each unit to zero mean and unit variance over the batch (no parameters)."""
    return (u - u.mean(0)) / torch.sqrt(u.var(0, unbiased=False) + EPS)


class LadderDecoder(nn.Module):
    """Top-down from the corrupted top to layer ``lowest`` (0: the input, for the full
    Ladder; L: the top alone, for the Γ-model), one combinator per layer and a
    vertical map V(l+1) (no bias) between layers."""

    def __init__(self, widths: tuple[int, ...], lowest: int):
        super().__init__()
        top = len(widths) - 1
        self.lowest, self.top = lowest, top
        # combinators[i] is layer lowest + i's; vertical[i] maps layer lowest + i + 1 down
        self.combinators = nn.ModuleList(Combinator(widths[k]) for k in range(lowest, top + 1))
        self.vertical = nn.ModuleList(
            nn.Linear(widths[k + 1], widths[k], bias=False) for k in range(lowest, top)
        )
        for linear in self.vertical:
            nn.init.normal_(linear.weight, std=1.0 / math.sqrt(linear.in_features))

    def forward(self, corrupted: Pass) -> dict[int, torch.Tensor]:
        """ẑ(l) for every decoded layer l (keyed by the encoder's numbering)."""
        u = batch_normalize(torch.softmax(corrupted.logits, dim=1))
        estimates: dict[int, torch.Tensor] = {}
        for layer in range(self.top, self.lowest - 1, -1):
            if layer < self.top:
                u = batch_normalize(self.vertical[layer - self.lowest](estimates[layer + 1]))
            estimates[layer] = self.combinators[layer - self.lowest](corrupted.z[layer], u)
        return estimates


def denoising_costs(
    estimates: dict[int, torch.Tensor], clean: Pass, weights: dict[int, float]
) -> dict[str, torch.Tensor]:
    """``denoise<l>``: weight(l) * mean squared error between ẑ_BN(l) and the clean z(l)."""
    costs = {}
    for layer, weight in weights.items():
        if weight == 0:
            continue
        estimate = estimates[layer]
        mean, std = clean.mean[layer], clean.std[layer]
        if mean is not None and std is not None:
            estimate = (estimate - mean) / std
        costs[f"denoise{layer}"] = weight * F.mse_loss(estimate, clean.z[layer])
    return costs


class LadderNet(nn.Module):
    """The encoder (``.encoder``, the classifier the engine evaluates), its decoder, and
    the denoising-cost weight of each decoded layer (read and checked once, at build)."""

    def __init__(self, encoder: LadderEncoder, decoder: LadderDecoder, weights: dict[int, float]):
        super().__init__()
        self.encoder, self.decoder, self.weights = encoder, decoder, weights


class _LadderFamily(Method):
    """What the three share: a Ladder encoder in pixel units, one training stage, the
    corrupted labeled cost and the clean labeled pass for the population statistics."""

    models: ClassVar[tuple[str, ...]] = LADDER_MODELS
    section: ClassVar[str] = ""
    # fp32 on CUDA too: the input layer's cost (weight 1000) is a mean of small squared
    # residuals, which bf16's 8-bit mantissa would swamp
    precision = "fp32"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        settings = cfg[self.section]
        self.input_noise, self.noise = float(settings.input_noise), float(settings.noise)

    def encoder_of(self, encoder: Encoder, dataset: Dataset) -> LadderEncoder:
        if not isinstance(encoder, LadderEncoder):  # run.py's check_model refuses it first
            raise UsageError(f"{self.name} trains only model.name={' | '.join(self.models)}")
        encoder.features.set_stats(dataset.mean, dataset.std)
        return encoder

    def labeled_cost(self, encoder: LadderEncoder, batch: Batch) -> dict[str, torch.Tensor]:
        corrupted = encoder.encode(batch.x, self.input_noise, self.noise)
        with torch.no_grad():
            encoder.encode(batch.x, track=True)  # population statistics
        return {"cls": F.cross_entropy(corrupted.logits, batch.y)}


@register_method("ladder_supervised")
class LadderSupervised(_LadderFamily):
    """The Ladder's encoder with its noise and batch normalization, labeled cost only."""

    config_sections = ("ladder_supervised",)
    section = "ladder_supervised"

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        return self.encoder_of(encoder, dataset)

    def stages(self) -> list[Stage]:
        return [Stage("train")]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, LadderEncoder)
        return self.labeled_cost(model, batch)


class _Decoded(_LadderFamily):
    """A Ladder with a decoder: the labeled cost plus denoising costs on the pool."""

    def layer_weights(self, top: int) -> dict[int, float]:
        raise NotImplementedError

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        ladder = self.encoder_of(encoder, dataset)
        top = len(ladder.widths) - 1
        weights = self.layer_weights(top)
        lowest = min((layer for layer, w in weights.items() if w > 0), default=top)
        return LadderNet(ladder, LadderDecoder(ladder.widths, lowest), weights)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, LadderNet)
        encoder = model.encoder
        terms = self.labeled_cost(encoder, batch)
        unlabeled = batch.u[0]
        corrupted = encoder.encode(unlabeled, self.input_noise, self.noise)
        clean = encoder.encode(unlabeled)
        return terms | denoising_costs(model.decoder(corrupted), clean, model.weights)


@register_method("ladder")
class Ladder(_Decoded):
    """The full Ladder: a denoising cost at every layer (``ladder.weights``, input first)."""

    models = MLP_ONLY
    config_sections = ("ladder",)
    section = "ladder"

    def layer_weights(self, top: int) -> dict[int, float]:
        weights = [float(w) for w in self.cfg.ladder.weights]
        if len(weights) != top + 1:
            raise UsageError(
                f"ladder.weights has {len(weights)} values; model {self.cfg.model.name} has "
                f"{top + 1} layers (input first): give {top + 1}"
            )
        return dict(enumerate(weights))


@register_method("ladder_gamma")
class LadderGamma(_Decoded):
    """The Γ-model: the top layer's denoising cost only (``ladder_gamma.weight``)."""

    config_sections = ("ladder_gamma",)
    section = "ladder_gamma"

    def layer_weights(self, top: int) -> dict[int, float]:
        return {top: float(self.cfg.ladder_gamma.weight)}
