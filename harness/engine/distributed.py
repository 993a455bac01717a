"""One run on several processes (one per GPU of a node): DistributedDataParallel.

The processes are started by ``torchrun`` (``torchrun --nproc_per_node=N -m
harness.run ...``) or by SLURM (``launcher=slurm`` with ``slurm.gpus_per_node=N``
starts N tasks per job; ``harness.launch.jobs`` exports the same variables from
submitit's environment). Every process runs the whole plan; within a run:

- each training batch of the single-process run is cut into ``world`` strided
  shards (rank r takes rows r, r+w, ...), and the augmentation of the whole batch
  is drawn on every rank and sliced, so a step sees the same images and crops
  as on one process and DDP's mean of the shard gradients is the full batch's;
- evaluation takes every ``world``-th image, and ``gather_rows`` puts the
  predictions back in order: each image is predicted exactly once (no
  DistributedSampler-style padding that would count some twice);
- only rank 0 writes (split, checkpoints, history, predictions, metrics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from an initialized process group (else a world of one)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return World(dist.get_rank(), dist.get_world_size(), local)
    return World()


def world_size_from_env() -> int:
    """Processes of this job as its launcher set them, before any process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or no DDP at all; readable before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def mean_over_ranks(values: dict[str, float], place: World) -> dict[str, float]:
    """Each rank's epoch means of the loss terms -> their mean (what gets logged)."""
    if not place.active or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_device(place))
    dist.all_reduce(tensor)
    return {k: v / place.size for k, v in zip(keys, tensor.tolist(), strict=True)}


def init_from_env(cuda: bool) -> World:
    """Join the process group that ``WORLD_SIZE``/``RANK``/``MASTER_ADDR`` describe
    (as torchrun and ``harness.launch.jobs`` set them); nothing when there is none."""
    size = world_size_from_env()
    if size > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # every collective is reached by all ranks within an epoch's evaluation (val
        # reports are sharded, only rank 0 writes files): 30 minutes is far beyond any
        # wait of a healthy job; a dead rank ends the job sooner (torchrun, srun's
        # --kill-on-bad-exit)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return world()


def shard(batch: np.ndarray, place: World) -> np.ndarray:
    """This rank's rows of one batch (all of it in a world of one)."""
    return batch[place.rank :: place.size] if place.active else batch


def trim_for_world(batches: list[np.ndarray], place: World) -> list[np.ndarray]:
    """Drop a last batch too small to give every rank an image (ranks must take the
    same number of steps, or DDP's all-reduce waits forever)."""
    if place.active and batches and len(batches[-1]) < place.size:
        return batches[:-1]
    return batches


def gather_rows(local: np.ndarray, total: int, place: World) -> np.ndarray:
    """Rank r holds rows r, r+w, ... of a [total, ...] array: the whole array, in order,
    on every rank."""
    if not place.active:
        return local
    parts: list[np.ndarray | None] = [None] * place.size
    dist.all_gather_object(parts, local)
    out = np.empty((total, *local.shape[1:]), dtype=local.dtype)
    for rank, part in enumerate(parts):
        assert part is not None
        out[rank :: place.size] = part
    return out


def _device(place: World) -> torch.device | None:
    """Where collectives need their tensors: NCCL reduces only CUDA tensors."""
    return torch.device("cuda", place.local_rank) if dist.get_backend() == "nccl" else None


def broadcast_choice(choice: str, choices: tuple[str, ...], place: World) -> str:
    """Rank 0's ``choice`` (one of ``choices``) on every rank; ``choice`` itself in a
    world of one. For decisions only rank 0 makes, such as whether it holds a run's
    lock or finds the run done: every rank must then take the same path."""
    if not place.active:
        return choice
    tensor = torch.tensor([choices.index(choice)], device=_device(place))
    dist.broadcast(tensor, src=0)
    return choices[int(tensor.item())]


def sum_over_ranks(tensor: torch.Tensor, place: World) -> torch.Tensor:
    """``tensor`` summed over every rank (itself in a world of one), on its device."""
    if not place.active:
        return tensor
    reduced = tensor.to(_device(place) or tensor.device, dtype=torch.float64)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device, tensor.dtype)


def block(indices: np.ndarray, place: World) -> np.ndarray:
    """This rank's contiguous block of ``indices`` (rank 0 takes the first): for work
    whose first rows matter, such as the pictures drawn from the first val images."""
    if not place.active:
        return indices
    return np.array_split(indices, place.size)[place.rank]


def all_rows(local: torch.Tensor, place: World | None = None) -> torch.Tensor:
    """Rank r holds rows r, r+w, ... of one batch (``shard``): the whole batch, in
    order, on every rank, on ``local``'s device. A method's running statistics
    (FlexMatch's records, FreeMatch's thresholds) then move the same on every rank,
    as on one process."""
    place = place or world()
    if not place.active:
        return local
    parts: list[torch.Tensor | None] = [None] * place.size
    dist.all_gather_object(parts, local.detach().cpu())
    total = sum(len(part) for part in parts if part is not None)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for rank, part in enumerate(parts):
        assert part is not None
        out[rank :: place.size] = part
    return out.to(local.device)
