"""The Ladder networks' suite sections: one per method, so that a run id holds only
what that method reads (``ladder.weights`` never enters the Γ-model's id).

Defaults are the published code's MNIST 100-label commands (github.com/CuriousAI/
ladder, README, "MNIST 100 labels"), whose ``run.py`` defaults give the noise:
``--super-noise-std 0.3`` (input) and ``--f-local-noise-std 0.3`` (after every
normalization). At 1000 labels that README uses other values (full: costs
2000,20,0.1,... and noise 0.2; Γ: 10); a suite sets them per budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.config import register_settings
from harness.errors import UsageError

# the full Ladder's denoising-cost weights, input first: README `mnist_100_full`
FULL_WEIGHTS = [1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1]


def _check(section: str, key: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):  # `not >=` also catches nan
        raise UsageError(f"{section}.{key} must be a finite number >= 0, got {value}")


@dataclass
class Noise:
    """Gaussian corruption of the corrupted pass: std at the input (pixels in [0, 1])
    and after every batch normalization (unit variance there)."""

    input_noise: float = 0.3  # run.py --super-noise-std
    noise: float = 0.3  # run.py --f-local-noise-std

    def _check_noise(self, section: str) -> None:
        _check(section, "input_noise", self.input_noise)
        _check(section, "noise", self.noise)


@register_settings("ladder")
@dataclass
class LadderSettings(Noise):
    """The full Ladder: a denoising cost at every layer, input first."""

    # denoising-cost weight per layer, input first (CuriousAI/ladder's mnist_100_full)
    weights: list[float] = field(default_factory=lambda: list(FULL_WEIGHTS))

    def __post_init__(self) -> None:
        self._check_noise("ladder")
        for value in self.weights:
            _check("ladder", "weights", value)


@register_settings("ladder_gamma")
@dataclass
class LadderGammaSettings(Noise):
    """The Γ-model: the denoising cost of the top layer only (README `mnist_100_gamma`:
    ``--denoising-cost-x 0,0,0,0,0,0,0.5``)."""

    weight: float = 0.5  # the top layer's denoising-cost weight

    def __post_init__(self) -> None:
        self._check_noise("ladder_gamma")
        _check("ladder_gamma", "weight", self.weight)


@register_settings("ladder_supervised")
@dataclass
class LadderSupervisedSettings(Noise):
    """The supervised baseline of the same encoder: the labeled cost on the corrupted
    pass only (README `mnist_100_baseline`: ``--f-local-noise-std 0.5``)."""

    noise: float = 0.5

    def __post_init__(self) -> None:
        self._check_noise("ladder_supervised")
