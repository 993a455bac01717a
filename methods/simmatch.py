"""SimMatch (Zheng, You, Huang, Wang, Qian & Xu 2022, "SimMatch: semi-supervised
learning with similarity matching", CVPR).

FixMatch's weak/strong pair with soft pseudo-labels, plus similarity to the labeled
images: a projection head (``ProjectionHead``) embeds every image, and a memory bank
(``harness.memory_bank``) keeps one embedding per labeled image with its label.

- The weak view's probabilities p are aligned to uniform (``QueueAlignment``).
- Its similarities to the bank, softmax(z_w · bank / T), give q. Label propagation
  unfolds them into classes: p' = α p + (1 - α) Σ_{slots of class c} q (semantic
  similarity); q scaled by p at each slot's label and renormalized is q' (instance
  similarity).
- L_u: soft cross-entropy of the strong view against p', where max p' ≥ τ;
  L_in: cross-entropy of the strong view's similarities softmax(z_s · bank / T)
  against q'. Total L_x + λ_u L_u + λ_in L_in.
- After the step, the labeled images' embeddings (this pass's, detached) move their
  slots: normalize(0.7 · old + 0.3 · new).

Defaults (``simmatch`` section), from USB's PyTorch port, our yardstick
(microsoft/Semi-supervised-learning: semilearn/algorithms/simmatch/simmatch.py,
config/classic_cv/simmatch/simmatch_cifar10_40_0.yaml): τ 0.95 (p_cutoff), T 0.1,
α 0.9 (smoothing_alpha), λ_in 1 (in_loss_ratio), λ_u 1, μ 7, the projection 128 wide
(proj_size), the alignment queue 32 batches long (da_len), the bank's momentum 0.7
(ema_bank, USB's choice for CIFAR, SVHN and STL-10, where the bank is written by the
trained network rather than an EMA teacher), the bank one slot per labeled image
(K = lb_dest_len), EMA 0.999 for evaluation. All views go through one forward pass
(use_cat). For ``warmup`` of the stage (USB: its first epoch, 1 of 1,024) L_in is off
and p' is p.

Where we depart from USB, and why:
- ``projectors`` 1: the paper's one projection head; USB's classic_cv configs set
  ``use_epass`` (three heads averaged, a later addition), which ``projectors=3`` gives.
- The head's hidden width: USB's is the backbone's pooled width (128 for WRN-28-2);
  here ``simmatch.head_width`` (128), so a VGG's flattened map does not make its
  square a layer.
- The bank starts as USB's (random unit rows, every label 0) but drawn from a
  generator seeded at ``build_model``, so a run draws the same bank every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.alignment import QueueAlignment
from harness.config import check_fraction, check_weight, register_settings
from harness.data import Dataset
from harness.memory_bank import MemoryBank
from harness.method import Batch, Stage, register_method
from harness.models import Encoder
from methods._common import labeled_cost, soft_cross_entropy_per_image
from methods._projected import Projected, ProjectedSettings


@register_settings("simmatch")
@dataclass
class SimMatchSettings(ProjectedSettings):
    instance_weight: float = 1.0  # λ_in (in_loss_ratio)
    bank_momentum: float = 0.7  # a slot's share of its old embedding (ema_bank)
    warmup: float = 1 / 1024  # the stage's first fraction without L_in and propagation

    def __post_init__(self) -> None:
        self.check("simmatch")
        check_weight("simmatch.instance_weight", self.instance_weight)
        check_fraction("simmatch.bank_momentum", self.bank_momentum, closed_low=True)
        check_fraction("simmatch.warmup", self.warmup, closed_low=True)


@register_method("simmatch")
class SimMatch(Projected):
    config_sections = ("simmatch",)
    section = "simmatch"

    bank_seed = 0  # drawn in build_model

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        model = super().build_model(encoder, dataset)
        # from the run's seeded stream, right after the weights: the bank's first rows
        self.bank_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return model

    def new_bank(self, slots: int, device: torch.device) -> MemoryBank:
        """USB's start: unit rows drawn at random, every label 0 (each slot is written
        the first time its image is in a batch)."""
        generator = torch.Generator().manual_seed(self.bank_seed)
        rows = torch.randn(slots, int(self.settings.projection_size), generator=generator)
        labels = torch.zeros(slots, dtype=torch.long)
        return MemoryBank(F.normalize(rows, dim=1), labels).to(device)

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        settings = self.settings
        (labeled, weak, strong), (z_labeled, z_weak, z_strong) = self.scores_and_embeddings(
            model, batch
        )
        if self.bank is None or self.alignment is None:
            self.bank = self.new_bank(batch.labeled_size, labeled.device)
            self.alignment = QueueAlignment(labeled.shape[1], int(settings.alignment_length))
        # this step reads the bank as it was before the step writes it (USB's clone)
        bank = self.bank.to(labeled.device)
        features, slot_labels = bank.features.clone(), bank.payload.clone()
        warm = batch.progress >= float(settings.warmup)
        with torch.no_grad():
            probs = self.alignment(torch.softmax(weak.detach().float(), dim=1))
            smoothed, instance_target = self.propagate(
                probs, z_weak.detach(), features, slot_labels, warm
            )
        mask = self.thresholded(smoothed)
        student = z_strong @ features.t() / float(settings.temperature)
        instance = soft_cross_entropy_per_image(student, instance_target).mean()
        pseudo = (soft_cross_entropy_per_image(strong, smoothed) * mask).mean()
        bank.write(batch.x_index, z_labeled, batch.y, momentum=float(settings.bank_momentum))
        self.log_scalar("mask", mask.mean())
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": settings.weight * pseudo,
            "instance": settings.instance_weight * instance * float(warm),
        }

    def propagate(
        self,
        probs: torch.Tensor,
        z_weak: torch.Tensor,
        features: torch.Tensor,
        labels: torch.Tensor,
        warm: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(p', q'): the weak views' aligned probabilities smoothed by their similarity
        to each class's labeled slots (the bank's ``features`` and ``labels``), and the
        similarities scaled by p at each slot's label (the instance target). Before
        ``warm``, p' is p."""
        settings = self.settings
        similarity = torch.softmax(z_weak @ features.t() / settings.temperature, dim=1)
        slot_labels = labels.expand(len(probs), -1)
        scaled = similarity * probs.gather(1, slot_labels)
        instance_target = scaled / scaled.sum(dim=1, keepdim=True)
        if not warm:
            return probs, instance_target
        per_class = torch.zeros_like(probs).scatter_add(1, slot_labels, similarity)
        alpha = float(settings.smoothing)
        return alpha * probs + (1 - alpha) * per_class, instance_target

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bank_seed": self.bank_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank_seed = int(state.get("bank_seed", self.bank_seed))
