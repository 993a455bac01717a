"""CoMatch (Li, Xiong & Hoi 2021, "CoMatch: semi-supervised learning with contrastive
graph regularization", ICCV).

Class probabilities and embeddings trained together, each smoothing the other:

- the weak view's probabilities p (aligned to uniform, ``QueueAlignment``) are
  smoothed by a memory bank (``harness.memory_bank``: a queue of recent weak views'
  and labeled images' embeddings with their probabilities, one-hot for the labeled):
  p' = α p + (1 - α) softmax(z_w · Z_bank / T) · P_bank, once the queue is full;
- L_u: soft cross-entropy of the first strong view against p', where max p' ≥ τ;
- the pseudo-label graph W = p' p'ᵀ (1 on the diagonal, 0 below ``contrast_threshold``,
  rows normalized) is the target of the embeddings' similarity graph between the two
  strong views: L_c = mean_i -Σ_j W_ij log softmax_j(z_s0,i · z_s1,j / T);
- total L_x + λ_u L_u + λ_c L_c; then the weak views' embeddings with p (before the
  smoothing) and the labeled ones with their one-hot labels join the queue.

Defaults (``comatch`` section), from USB's PyTorch port, our yardstick
(microsoft/Semi-supervised-learning: semilearn/algorithms/comatch/comatch.py,
config/classic_cv/comatch/comatch_cifar10_40_0.yaml; the authors' code is
salesforce/CoMatch): τ 0.95 (p_cutoff), soft labels (hard_label false), T 0.2, α 0.9
(smoothing_alpha), the graph's threshold 0.8 (contrast_p_cutoff), λ_c 1
(contrast_loss_ratio), λ_u 1, μ 7, the embedding 64 wide (proj_size), the queue
5 steps of (μ + 1) B images long (queue_batch), the alignment queue 32 batches long
(da_len), EMA 0.999 for evaluation. Every view goes through one forward pass (use_cat);
the two strong views are drawn independently (``strong`` twice).

Where we depart from USB, and why:
- ``projectors`` 1: the paper's one projection head; USB's classic_cv configs set
  ``use_epass`` (three heads averaged, a later addition), which ``projectors=3`` gives.
- The head's hidden width: USB's is the backbone's pooled width (128 for WRN-28-2);
  here ``comatch.head_width`` (128), so a VGG's flattened map does not make its
  square a layer.
- The smoothing starts once the queue is full (USB: after ``queue_batch`` steps and
  its first epoch of 1,024 steps; the epoch is USB's bookkeeping, not the method's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.alignment import QueueAlignment
from harness.config import check_fraction, check_positive, check_weight, register_settings
from harness.memory_bank import MemoryBank
from harness.method import Batch, Stage, register_method
from methods._common import labeled_cost, soft_cross_entropy_per_image
from methods._projected import Projected, ProjectedSettings


@register_settings("comatch")
@dataclass
class CoMatchSettings(ProjectedSettings):
    temperature: float = 0.2  # T of the bank's and the embeddings' similarities
    projection_size: int = 64  # the embedding's width (proj_size)
    contrast_threshold: float = 0.8  # graph edges below it are cut (contrast_p_cutoff)
    contrast_weight: float = 1.0  # λ_c (contrast_loss_ratio)
    queue_steps: int = 5  # the queue holds this many steps' images (queue_batch)

    def __post_init__(self) -> None:
        self.check("comatch")
        check_fraction("comatch.contrast_threshold", self.contrast_threshold, closed_high=True)
        check_weight("comatch.contrast_weight", self.contrast_weight)
        check_positive("comatch.queue_steps", self.queue_steps, integer=True)


def graph_target(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """W: p' p'ᵀ with 1 on the diagonal and 0 below ``threshold``, rows summing to 1."""
    graph = probs @ probs.t()
    graph.fill_diagonal_(1.0)
    graph = graph * (graph >= threshold).to(graph.dtype)
    return graph / graph.sum(dim=1, keepdim=True)


def contrastive_loss(
    first: torch.Tensor, second: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """mean_i -Σ_j W_ij log(s_ij + 1e-7), s_i the softmax over j of z1_i · z2_j / T
    (USB's ``comatch_contrastive_loss``, with its 1e-7)."""
    similarity = torch.softmax(first @ second.t() / temperature, dim=1)
    return -(torch.log(similarity + 1e-7) * target).sum(dim=1).mean()


@register_method("comatch")
class CoMatch(Projected):
    config_sections = ("comatch",)
    section = "comatch"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        weak, strong = self.unlabeled_views
        self.unlabeled_views = (weak, strong, strong)  # the two strong views
        self.steps_seen = 0  # writes to the queue so far

    def queue_rows(self) -> int:
        """queue_steps · (μ + 1) · B: the images of that many whole steps."""
        images = self.unlabeled_batch_size() + int(self.cfg.optim.batch_size)
        return int(self.settings.queue_steps) * images

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        settings = self.settings
        scores, embeddings = self.scores_and_embeddings(model, batch)
        (labeled, weak, strong, _), (z_labeled, z_weak, z_first, z_second) = scores, embeddings
        classes = labeled.shape[1]
        if self.bank is None or self.alignment is None:
            rows = self.queue_rows()
            zeros = torch.zeros(rows, int(settings.projection_size), device=labeled.device)
            self.bank = MemoryBank(zeros, torch.zeros(rows, classes, device=labeled.device))
            self.alignment = QueueAlignment(classes, int(settings.alignment_length))
        with torch.no_grad():
            probs = self.alignment(torch.softmax(weak.detach().float(), dim=1))
            smoothed = probs
            if self.steps_seen > int(settings.queue_steps):
                smoothed = self.smoothed(probs, z_weak.detach())
            mask = self.thresholded(smoothed)
            one_hot = F.one_hot(batch.y, classes).float()
            self.bank.push(torch.cat([z_weak, z_labeled]), torch.cat([probs, one_hot]))
            self.steps_seen += 1
            target = graph_target(smoothed, float(settings.contrast_threshold))
        pseudo = (soft_cross_entropy_per_image(strong, smoothed) * mask).mean()
        contrast = contrastive_loss(z_first, z_second, target, float(settings.temperature))
        self.log_scalar("mask", mask.mean())
        return {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": settings.weight * pseudo,
            "contrast": settings.contrast_weight * contrast,
        }

    def smoothed(self, probs: torch.Tensor, z_weak: torch.Tensor) -> torch.Tensor:
        """p' = α p + (1 - α) A P_bank, A the softmax of the weak views' similarity to
        the queue's embeddings at temperature T."""
        assert self.bank is not None
        bank = self.bank.to(probs.device)
        affinity = torch.softmax(z_weak @ bank.features.t() / self.settings.temperature, dim=1)
        alpha = float(self.settings.smoothing)
        return alpha * probs + (1 - alpha) * affinity @ bank.payload

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return {**state, "steps_seen": self.steps_seen} if state else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state:
            self.steps_seen = int(state["steps_seen"])
