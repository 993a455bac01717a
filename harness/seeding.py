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

    Tensors, ints, strings and tuples/dicts of them only, so the checkpoint loads
    with ``torch.load(weights_only=True)``: numpy's state (a tuple holding an
    ndarray) is kept as a dict with the key array as an int64 tensor.
    The CUDA state is the current device's only, and only for runs on CUDA: a
    resume may land on a node with a different number of GPUs.
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 values, exact
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned (after a ``weights_only`` load too)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    keys = np.asarray(numpy["keys"].numpy(), dtype=np.uint32)
    np.random.set_state(
        (numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
