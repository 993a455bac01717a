"""Checkpoints and weight files: torch's side of the run store.

``checkpoint.pt`` (model, optimizer, scheduler, method state, every RNG state,
history rows) and ``stage-<name>.pt`` are streamed into a temp file and renamed
into place (``harness.store.atomic_open``), and read with
``torch.load(weights_only=True)`` (tensors and plain containers only), so a
results folder shared on a cluster cannot make a reader run code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UsageError
from harness.seeding import rng_state
from harness.store import RunRecord, atomic_open

CHECKPOINT_VERSION = 2


def checkpoint_state(
    model, method, stage_index, epoch, optimizer, scheduler, history, seconds
) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "stage_index": stage_index,
        "epoch": epoch,
        "seconds": seconds,  # training time of all attempts up to this checkpoint
        "model": model.state_dict(),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "rng": rng_state(cuda=next(model.parameters()).is_cuda),
        "history": history,
    }


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` streamed into the temp file of ``atomic_open`` (a VGG-16
    checkpoint with optimizer state is over 1 GB: never held whole in memory)."""
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def load_weights(path: str | Path, map_location: Any = "cpu") -> Any:
    """A ``torch.save``d state dict (a ``stage-<name>.pt``, a ``model.pretrained`` file)
    loaded with ``weights_only=True``: tensors and plain containers only, so a file
    in a shared results folder cannot run code when it is read. A file holding any
    other object is refused with a ``UsageError`` naming it."""
    return _load_safely(path, map_location, "it was not written as a plain state dict")


def _load_safely(path: str | Path, map_location: Any, why: str) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"a pickled {found.group(1)}" if found else "objects other than tensors"
        raise UsageError(
            f"{path} holds {what}, which is not loaded because loading it could run "
            f"code (torch.load weights_only=True); {why}"
        ) from None


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars (a history row's error rates) made python numbers,
    which ``weights_only`` loading accepts; containers with none inside are returned
    as they are (a state dict keeps its ``_metadata``)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = {key: _plain(value) for key, value in obj.items()}
        if all(items[key] is value for key, value in obj.items()):
            return obj
        return type(obj)(items)
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        values = [_plain(value) for value in obj]
        if all(new is old for new, old in zip(values, obj, strict=True)):
            return obj
        return type(obj)(values)
    return obj


def save_checkpoint(record: RunRecord, state: dict[str, Any]) -> None:
    """The run's ``checkpoint.pt``, atomically (streamed into its temp file)."""
    atomic_torch_save(_plain(state), record.checkpoint_file)


def load_checkpoint(record: RunRecord) -> dict[str, Any] | None:
    """The run's ``checkpoint.pt``, or None before its first epoch ends."""
    if not record.checkpoint_file.is_file():
        return None
    # weights_only=True: tensors and plain containers only (harness.seeding keeps
    # the RNG states in those), so a checkpoint in a shared folder cannot run code
    return _load_safely(
        record.checkpoint_file,
        "cpu",
        "it was written by an older harness (or not by the harness), so run "
        f"{record.path.name} must be restarted: delete {record.checkpoint_file} to train "
        "it again from its beginning",
    )
