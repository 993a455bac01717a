"""The run store: one folder per run, files written atomically.

``results/<suite>/<run_id>/`` holds ``config.yaml``, ``history.csv`` (one row
per epoch), ``checkpoint.pt`` (latest; model, optimizer, scheduler, RNG
states), ``stage-<name>.pt`` (model weights at the end of each stage, for runs
that start from another run's stage), ``predictions.npz`` (per-example top-k of
every error column, for paired tests) and ``metrics.json``, written last: a run
with ``metrics.json`` is done. A run that raised leaves ``failed.json`` (the
error) until a later attempt finishes it.
Every file is written to a temp file in the same folder and renamed into place,
so a killed process never leaves a half file that a later read takes as whole.
``.pt`` files are read with ``torch.load(weights_only=True)`` (tensors and plain
containers only): a results folder shared on a cluster cannot make a reader run code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import yaml

from harness.errors import UsageError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temp file beside ``path`` that becomes ``path`` when the
    block ends: flushed, fsynced and renamed into place, so readers see the old file
    or the new one, whole. On any exception (KeyboardInterrupt too) the temp file is
    removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_if_changed(path: Path, data: bytes) -> bool:
    """``atomic_write_bytes`` unless ``path`` already holds ``data`` (its mtime then
    stays, so rerunning a finished job changes no file); True if it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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


@dataclass(frozen=True)
class RunRecord:
    """The folder of one run; every read and write of a run goes through here."""

    path: Path

    config_file = property(lambda self: self.path / "config.yaml")
    metrics_file = property(lambda self: self.path / "metrics.json")
    history_file = property(lambda self: self.path / "history.csv")
    checkpoint_file = property(lambda self: self.path / "checkpoint.pt")
    predictions_file = property(lambda self: self.path / "predictions.npz")
    failure_file = property(lambda self: self.path / "failed.json")

    def is_done(self) -> bool:
        return self.metrics_file.is_file()

    def stage_file(self, stage: str) -> Path:
        return self.path / f"stage-{stage}.pt"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text())

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(_plain(state), self.checkpoint_file)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_file.is_file():
            return None
        # weights_only=True: tensors and plain containers only (harness.seeding keeps
        # the RNG states in those), so a checkpoint in a shared folder cannot run code
        return _load_safely(
            self.checkpoint_file,
            "cpu",
            "it was written by an older harness (or not by the harness), so run "
            f"{self.path.name} must be restarted: delete {self.checkpoint_file} to train "
            "it again from its beginning",
        )

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the whole CSV from the checkpointed rows, so a resume never duplicates one."""
        columns: list[str] = []
        for row in rows:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history_file, buffer.getvalue())

    def write_predictions(self, arrays: dict[str, np.ndarray]) -> None:
        """Per-example predictions, one array per name (see ``train.final_metrics``)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.predictions_file, buffer.getvalue())

    def write_failure(self, error: BaseException, trace: str) -> None:
        """The error, its traceback and what the error knows of where it happened
        (``details``: for a non-finite loss the stage, epoch, step and loss terms)."""
        failure = {"error": f"{type(error).__name__}: {error}", "traceback": trace}
        failure |= getattr(error, "details", {})
        text = json.dumps(failure, indent=2, default=str)
        atomic_write_text(self.failure_file, text + "\n")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        # allow_nan=False: a NaN is no result (and not JSON); it raises rather than lands
        text = json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False)
        atomic_write_text(self.metrics_file, text + "\n")
        self.failure_file.unlink(missing_ok=True)  # an earlier attempt's error no longer holds

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_file.read_text())


def topk_key(part: str, dense: bool) -> str:
    """The ``predictions.npz`` array of one evaluation: [images, k] classes, best first."""
    return f"{part}_dense_topk" if dense else f"{part}_topk"


def targets_key(part: str) -> str:
    """The ``predictions.npz`` array of a part's true classes, in the same image order."""
    return f"{part}_targets"


def run_record(results_root: str | Path, suite: str, run_id: str) -> RunRecord:
    return RunRecord(Path(results_root) / suite / run_id)
