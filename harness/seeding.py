"""Deterministic seeds and RNG snapshots.

Every random stream in the harness is derived from a hash of *what it is for*
(``derive_seed("split", dataset, budget, seed)``), never from a running global
generator. Splits therefore do not change on restart, and an epoch's data order
depends only on (train seed, stage, epoch): a resumed run replays it exactly.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def numpy_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: object) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*parts))
    return generator


def seed_everything(*parts: object) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators from ``parts``."""
    seed = derive_seed(*parts)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(cuda: bool = False) -> dict[str, Any]:
    """Every global RNG state in use, for a checkpoint.

    The CUDA state is the current device's only, and only for runs on CUDA: a
    resume may land on a node with a different number of GPUs.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
