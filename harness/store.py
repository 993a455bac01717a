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
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
        atomic_torch_save(state, self.checkpoint_file)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_file.is_file():
            return None
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples).
        return torch.load(self.checkpoint_file, map_location="cpu", weights_only=False)

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
        text = json.dumps({"error": f"{type(error).__name__}: {error}", "traceback": trace})
        atomic_write_text(self.failure_file, text + "\n")

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics_file, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
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
