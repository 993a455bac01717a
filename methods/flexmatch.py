"""FlexMatch (Zhang, Wang, Hou, Wu, Wang, Okumura & Shinozaki 2021, "FlexMatch:
boosting semi-supervised learning with curriculum pseudo labeling", NeurIPS).

FixMatch with a threshold per class that follows how well the model learns it:
every pool image keeps the class it was last pseudo-labeled with confidently (above
τ; -1 until then), σ(c) counts the pool images held by class c, and the learning
effect β(c) = σ(c) / max(max_c σ, images never selected) (the warm-up: while most of
the pool is unselected every β stays small) maps through M(x) = x / (2 - x) to the
threshold τ · M(β(c)). A weak view whose top class c has probability at least
τ · M(β(c)) trains the strong view with the hard label c.

Defaults (``flexmatch`` section), from USB's PyTorch port
(microsoft/Semi-supervised-learning: semilearn/algorithms/flexmatch/flexmatch.py and
utils.py ``FlexMatchThresholdingHook``; config/classic_cv/flexmatch/*.yaml):
``threshold`` 0.95 (p_cutoff), ``warmup`` true (thresh_warmup), hard labels (T is
unused with them), λ_u 1, μ 7, EMA 0.999. The order of the reference is kept: the
mask reads β from the records before this batch, then the batch's confident
predictions are recorded and β recomputed. Its state (the records and β) is in every
checkpoint; under DDP every rank records all ranks' images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from harness.config import check_fraction, register_settings
from harness.engine.distributed import all_rows
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost
from methods._weak_strong import WeakStrong, WeakStrongSettings, masked_cross_entropy

UNSELECTED = -1


@register_settings("flexmatch")
@dataclass
class FlexMatchSettings(WeakStrongSettings):
    threshold: float = 0.95  # τ, the threshold a fully learned class gets
    warmup: bool = True  # count the unselected images in the denominator of β

    def __post_init__(self) -> None:
        self.check("flexmatch")
        check_fraction("flexmatch.threshold", self.threshold)


def learning_effect(selected: torch.Tensor, num_classes: int, warmup: bool) -> torch.Tensor | None:
    """β(c) from the records, or None where the reference keeps the previous β (every
    pool image in one bucket: all unselected, or, without warm-up, nothing selected)."""
    counts = torch.bincount(selected + 1, minlength=num_classes + 1).float()  # [-1, 0..C-1]
    if counts.max() >= len(selected):
        return None
    per_class = counts[1:]
    if warmup:
        return per_class / counts.max()
    return per_class / per_class.max()


@register_method("flexmatch")
class FlexMatch(WeakStrong):
    config_sections = ("flexmatch",)
    section = "flexmatch"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.selected: torch.Tensor | None = None  # per pool image: class, or UNSELECTED
        self.beta: torch.Tensor | None = None  # β per class

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        labeled, weak, strong = self.three_logits(model, batch)
        probs = torch.softmax(weak.detach().float(), dim=1)
        mask, targets = self.flex_mask(probs, batch)
        self.log_scalar("mask", mask.mean())
        return {
            "cls": torch.nn.functional.cross_entropy(labeled, batch.y),
            "pseudo": self.settings.weight * masked_cross_entropy(strong, targets, mask),
        }

    @torch.no_grad()
    def flex_mask(self, probs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, hard labels) of this rank's weak views; records every rank's."""
        classes, tau = probs.shape[1], float(self.settings.threshold)
        if self.selected is None:
            self.selected = torch.full((batch.pool_size,), UNSELECTED, dtype=torch.long)
            self.beta = torch.zeros(classes)
        self.selected = self.selected.to(probs.device)
        self.beta = self.beta.to(probs.device)
        confidence, targets = probs.max(dim=1)
        scaled = self.beta[targets]
        mask = (confidence >= tau * (scaled / (2.0 - scaled))).float()
        assert batch.u_index is not None, "FlexMatch records pool images by their index"
        every_confidence, every_target = all_rows(confidence), all_rows(targets)
        every_index = all_rows(batch.u_index)
        chosen = every_confidence >= tau
        self.selected[every_index[chosen]] = every_target[chosen]
        beta = learning_effect(self.selected, classes, bool(self.settings.warmup))
        if beta is not None:
            self.beta = beta
        return mask, targets

    def state_dict(self) -> dict[str, Any]:
        if self.selected is None:
            return {}
        return {"selected": self.selected.cpu(), "beta": self.beta.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.selected, self.beta = state["selected"], state["beta"]
