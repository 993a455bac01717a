"""The model contract, its capabilities, and the registry ``model.name`` looks up.

Every model is an ``Encoder``: ``features`` (the image -> its top representation),
``classifier`` (a Sequential ending in the class scores), ``classify(top)`` and
``forward(x) = classify(features(x))``. What else it can do it declares in
``offers``, so that a method that needs more (``harness.method.Method.needs``) is
refused with one line before any work rather than failing inside a run:

- ``macro_layers``: ``features`` is a stack of macro-layers (convs, then a
  max-pool); ``macro_specs()`` describes them for a method to mirror,
  ``encode(x)`` returns their outputs (``harness.models.macro.Encoding``) and
  ``taps()`` names the places a mirror can start from, in the model's numbering;
- ``switches``: ``encode(x, switches=True)`` also records the max-pool argmax
  indices (where each max came from);
- ``dense``: ``dense_logits(x)`` gives class scores at every position of a larger
  image (the paper's dense evaluation); without it, only single-crop errors exist.

Models register with ``@register_model(name)`` on a builder
``(in_channels, num_classes, input_size, dropout) -> Encoder``; the builder
shapes the network for the suite's crop size (and refuses one it cannot take).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar

import torch
from torch import nn

from harness.errors import UsageError, unknown
from harness.plugins import import_plugins

SWITCHES = "switches"
MACRO_LAYERS = "macro_layers"
DENSE = "dense"
# each capability as the one-line error says a model lacks it, in the order they are checked
CAPABILITIES: dict[str, str] = {
    SWITCHES: "pooling switches",
    MACRO_LAYERS: "macro-layers (convs, then a max-pool)",
    DENSE: "dense evaluation (fc layers as convolutions)",
}


class Encoder(nn.Module):
    """A classification network: features, then a classifier head (see the module)."""

    offers: ClassVar[frozenset[str]] = frozenset()
    features: nn.Module
    classifier: nn.Sequential
    num_classes: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        """The class scores of the top representation (``features``' output)."""
        raise NotImplementedError


Builder = Callable[[int, int, int, float], Encoder]
MODELS: dict[str, Builder] = {}


def fc_head(
    in_features: int, widths: tuple[int, int], num_classes: int, dropout: float
) -> nn.Sequential:
    """VGG's classifier: two hidden Linear + ReLU + Dropout layers, then the class layer
    (torchvision's module order, so a torchvision VGG state_dict loads into it)."""
    hidden1, hidden2 = widths
    return nn.Sequential(
        nn.Linear(in_features, hidden1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden1, hidden2),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden2, num_classes),
    )


def register_model(name: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        if name in MODELS and MODELS[name] is not builder:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = builder
        return builder

    return add


def available_models() -> list[str]:
    import_plugins("method")  # a method family may register models of its own
    return sorted(MODELS)


def build_encoder(
    name: str, in_channels: int, num_classes: int, input_size: int, dropout: float = 0.5
) -> Encoder:
    """The registered model ``name``, shaped for ``input_size`` x ``input_size`` crops."""
    import_plugins("method")  # a method family may register models of its own
    if name not in MODELS:
        raise unknown("model (model.name)", name, MODELS)
    return MODELS[name](in_channels, num_classes, input_size, dropout)


def require(model: Encoder, model_name: str, needs: Iterable[str], who: str) -> None:
    """Refuse (UsageError) a ``model`` that lacks a capability ``who`` needs."""
    needs = set(needs)
    if not needs <= CAPABILITIES.keys():
        raise ValueError(f"{who} needs unknown capabilities {sorted(needs - CAPABILITIES.keys())}")
    for capability, words in CAPABILITIES.items():
        if capability in needs and capability not in model.offers:
            raise UsageError(f"{who} needs a model with {words}; model {model_name} has none")


def classifier_of(model: nn.Module) -> Encoder:
    """The encoder+head inside a method's model (the model itself for the baseline)."""
    if isinstance(model, Encoder):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise TypeError("a method's model must be a registered model or expose it as `.encoder`")
    return encoder
