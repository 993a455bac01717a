"""CRMatch (Fan, Kukleva, Dai & Schiele 2021/2023, "Revisiting consistency
regularization for semi-supervised learning", GCPR 2021 / IJCV).

FixMatch's confident pseudo-labels on strong views, plus two terms on heads the method
builds around the encoder: a feature-level consistency term between the strong and the
weak view of each confidently pseudo-labeled image (a linear "ds" head on the flattened
feature map before the global pooling), and a self-supervised rotation head that
predicts which of the four quarter turns each image was given.

Defaults (``crmatch`` section), from USB's PyTorch port, our yardstick
(microsoft/Semi-supervised-learning: semilearn/algorithms/crmatch/crmatch.py,
config/classic_cv/crmatch/*.yaml): τ 0.95 (p_cutoff, hard labels), μ 7 (uratio), the
rotation weight 1 (rot_loss_ratio), EMA 0.999; the feature term as USB computes it,
``cosine_embedding_loss(ds_strong, ds_weak, target=-1)`` = max(0, cos) per image,
masked by the confident pseudo-labels and averaged over the pool batch; the total is
L_x + L_u + L_d + λ_rot · L_rot. As USB (``use_cat``), every view goes through one
forward pass, the weak view's pseudo-label and mask without gradient.

Where we depart from USB, and why:
- The rotation batch: USB draws a separate batch of B pool images (its labeled
  augmentation) and rotates each by 0, 90, 180 and 270 degrees. Here the first B weak
  views of the step's pool batch are rotated the four ways (4B images in all): the same
  augmentation and count, without a second sampler whose state a resumed run would have
  to replay.
- The heads' width: USB's are ``num_features`` wide (the backbone's pooled width: 128
  for WRN-28-2); here ``crmatch.head_width`` (default 128), so a VGG's 25,088-wide map
  does not make a 25,088 x 25,088 layer. The ds head reads the map before the global
  pooling where the model has one (WRN), else its last feature map (VGG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config import check_fraction, check_positive, check_weight, register_settings
from harness.data import Dataset
from harness.ema import WithEMA
from harness.method import Batch, Stage, register_method
from harness.models import Encoder
from methods._common import EMAEvaluated, feature_sizes, labeled_cost, map_and_top
from methods.fixmatch import confident_targets
from methods.remixmatch import rotate_quarters


@register_settings("crmatch")
@dataclass
class CRMatchSettings:
    threshold: float = 0.95  # τ: a weak view's confidence that keeps its pseudo-label
    mu: int = 7  # unlabeled images per labeled one (uratio)
    rotation_weight: float = 1.0  # λ_rot (rot_loss_ratio); 0 builds no rotation head
    head_width: int = 128  # the ds and rotation heads' hidden width (USB: num_features)
    ema_decay: float = 0.999  # the evaluated EMA of the weights

    def __post_init__(self) -> None:
        check_fraction("crmatch.threshold", self.threshold)
        check_positive("crmatch.mu", self.mu, integer=True)
        check_weight("crmatch.rotation_weight", self.rotation_weight)
        check_positive("crmatch.head_width", self.head_width, integer=True)
        check_fraction("crmatch.ema_decay", self.ema_decay, closed_low=True)


class CRMatchHeads(nn.Module):
    """The ds head (feature map -> ``width``) and the rotation head (top -> 4)."""

    def __init__(self, map_size: int, top_size: int, width: int, rotation: bool):
        super().__init__()
        self.ds = nn.Linear(map_size, width)
        self.rotation = (
            nn.Sequential(nn.Linear(top_size, width), nn.ReLU(), nn.Linear(width, 4))
            if rotation
            else None
        )


@register_method("crmatch")
class CRMatch(EMAEvaluated):
    config_sections = ("crmatch",)
    unlabeled_views = ("weak", "strong")

    @property
    def settings(self) -> DictConfig:
        return self.cfg.crmatch

    def unlabeled_batch_size(self) -> int:
        return int(self.settings.mu) * int(self.cfg.optim.batch_size)

    def stages(self) -> list[Stage]:
        return [Stage("train", unlabeled=True)]

    def ema_decay(self, batch: Batch) -> float:
        return float(self.settings.ema_decay)

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        model = super().build_model(encoder, dataset)
        map_size, top_size = feature_sizes(encoder, dataset.channels, int(self.cfg.data.crop))
        rotation = self.settings.rotation_weight > 0
        width = int(self.settings.head_width)
        model.heads = CRMatchHeads(map_size, top_size, width, rotation)
        return model

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(model, WithEMA)
        if not batch.u:
            return labeled_cost(model.encoder, batch)
        network, heads, settings = model.encoder, model.heads, self.settings
        weak, strong = batch.u
        n, m = len(batch.x), len(weak)
        views = [batch.x, weak, strong]
        if heads.rotation is not None:
            upright = weak[:n]
            turns = torch.arange(4, device=weak.device).repeat_interleave(len(upright))
            views.append(rotate_quarters(upright.repeat(4, 1, 1, 1), turns))
        feature_map, top = map_and_top(network, torch.cat(views))
        logits = network.classify(top[: n + 2 * m])
        labeled, weak_logits, strong_logits = logits.split([n, m, m])
        targets, mask = confident_targets(weak_logits.detach(), float(settings.threshold))
        ds_weak, ds_strong = heads.ds(feature_map[n : n + 2 * m].flatten(1)).split([m, m])
        similarity = F.cosine_similarity(ds_strong.float(), ds_weak.float(), dim=1)
        self.log_scalar("mask", mask.mean())
        terms = {
            "cls": F.cross_entropy(labeled, batch.y),
            "pseudo": (F.cross_entropy(strong_logits, targets, reduction="none") * mask).mean(),
            "features": (similarity.clamp_min(0) * mask).mean(),
        }
        if heads.rotation is not None:
            rotation = heads.rotation(top[n + 2 * m :].flatten(1))
            terms["rotation"] = settings.rotation_weight * F.cross_entropy(rotation, turns)
        return terms
