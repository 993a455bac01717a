"""What every step of one run needs (``Context``: settings, data, split, device,
and the rank under DDP), and the device a run trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from harness.data import (
    Dataset,
    Split,
    augment_batch,
    center_crop,
    normalize,
    rand_augment,
    reflect_pad,
)
from harness.engine import distributed
from harness.method import Stage
from harness.plan import RunSpec


def resolve_device(name: str) -> torch.device:
    """cpu or cuda; under DDP, this process's own GPU (``LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device")
    if name == "cuda":
        return torch.device("cuda", distributed.init_from_env(cuda=True).local_rank)
    distributed.init_from_env(cuda=False)
    return torch.device(name)


@dataclass
class Context:
    """What every step of one run needs: settings, data, split, device."""

    cfg: DictConfig
    spec: RunSpec
    dataset: Dataset
    split: Split
    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    place: distributed.World = distributed.World()
    # images per unlabeled batch, as the method reads it (Method.unlabeled_batch_size:
    # FixMatch's mu x the labeled batch); 0 = optim.unlabeled_batch_size
    unlabeled_batch: int = 0

    @property
    def unlabeled_batch_size(self) -> int:
        return self.unlabeled_batch or self.cfg.optim.unlabeled_batch_size

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def draws_pool(self, stage: Stage) -> bool:
        """Whether ``stage`` draws a second batch from the unlabeled pool. With every
        image labeled (the paper's ImageNet setting) there is no pool: a stage that
        uses it gets the labeled batch (labels hidden where it wants only images), and reads as
        many images per step as the baseline."""
        return stage.unlabeled and len(self.split.unlabeled) > 0

    def prepare(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        full: int | None = None,
        view: str = "weak",
    ) -> torch.Tensor:
        """uint8 batch (this rank's shard of a ``full``-image batch) -> one augmented
        ``view`` of it (``harness.config.AUGMENTATIONS``), normalized, on the device:
        ``none`` is the center crop, ``weak`` the suite's random crop and flip,
        ``strong`` that and then RandAugment + Cutout (``harness.data.randaugment``)."""
        images = images.to(self.device, non_blocking=True)
        where = {"full": full, "rank": self.place.rank, "world": self.place.size}
        if view == "none":
            images = center_crop(images, self.cfg.data.crop)
        else:
            images = augment_batch(
                reflect_pad(images, self.cfg.data.pad),
                self.cfg.data.crop,
                self.cfg.data.hflip,
                generator,
                **where,
            )
        if view == "strong":
            images = rand_augment(images, generator, **where)
        elif view not in ("none", "weak"):
            raise ValueError(f"unknown augmentation {view!r}")
        images = normalize(images, self.mean, self.std)
        if self.cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return images
