"""What SimMatch and CoMatch share: FixMatch's weak/strong views plus a projection head
(``ProjectionHead``) on the encoder's top representation, soft pseudo-labels aligned to
uniform over a queue of recent batches (``QueueAlignment``), smoothed by a memory bank
and thresholded at τ. Each method adds what its bank holds and its extra term. Not a
plugin (its name starts with ``_``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from harness.alignment import QueueAlignment
from harness.config import check_fraction, check_positive
from harness.data import Dataset
from harness.ema import WithEMA
from harness.memory_bank import MemoryBank
from harness.method import Batch
from harness.models import Encoder
from methods._common import ProjectionHead, feature_sizes, tops_and_logits
from methods._weak_strong import WeakStrong, WeakStrongSettings


@dataclass
class ProjectedSettings(WeakStrongSettings):
    """The settings both have, at the values where USB gives them the same default."""

    threshold: float = 0.95  # τ on max p' (p_cutoff)
    temperature: float = 0.1  # T of the similarities' softmax
    smoothing: float = 0.9  # α: p's share of p' (smoothing_alpha)
    projection_size: int = 128  # the embedding's width (proj_size)
    head_width: int = 128  # the projection MLP's hidden width (USB: num_features)
    projectors: int = 1  # projection MLPs averaged (USB's use_epass: 3)
    alignment_length: int = 32  # batches in the alignment queue (da_len)

    def check(self, section: str) -> None:
        super().check(section)
        check_fraction(f"{section}.threshold", self.threshold)
        check_positive(f"{section}.temperature", self.temperature)
        check_fraction(f"{section}.smoothing", self.smoothing, closed_high=True)
        for key in ("projection_size", "head_width", "projectors", "alignment_length"):
            check_positive(f"{section}.{key}", getattr(self, key), integer=True)


class Projected(WeakStrong):
    """A ``WeakStrong`` method whose model gains ``.projection``, with the running
    state both keep (made on the first step, when the sizes are known)."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.alignment: QueueAlignment | None = None
        self.bank: MemoryBank | None = None

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        model = super().build_model(encoder, dataset)
        settings = self.settings
        _, top_size = feature_sizes(encoder, dataset.channels, int(self.cfg.data.crop))
        model.projection = ProjectionHead(
            top_size, settings.head_width, settings.projection_size, settings.projectors
        )
        return model

    def scores_and_embeddings(
        self, model: nn.Module, batch: Batch
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Class scores and embeddings of the labeled batch and each pool view, from one
        forward pass (USB's use_cat); the weak view's as ``teacher_dropout`` says."""
        assert isinstance(model, WithEMA)
        tops, scores = tops_and_logits(
            model.encoder, [batch.x, *batch.u], 1, self.settings.teacher_dropout
        )
        embeddings = model.projection(torch.cat(tops)).split([len(t) for t in tops])
        return scores, list(embeddings)

    def state_dict(self) -> dict[str, Any]:
        """The bank and the alignment queue, once the first step has made them."""
        if self.bank is None or self.alignment is None:
            return {}
        return {"bank": self.bank.state_dict(), "alignment": self.alignment.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bank" in state:
            self.bank = MemoryBank.from_state(state["bank"])
            self.alignment = QueueAlignment.from_state(state["alignment"])

    def thresholded(self, smoothed: torch.Tensor) -> torch.Tensor:
        """1.0 where the smoothed pseudo-label's top probability reaches τ."""
        return (smoothed.max(dim=1).values >= float(self.settings.threshold)).float()
