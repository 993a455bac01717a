"""The run store: one folder per run, files written atomically.

``results/<suite>/<run_id>/`` holds ``config.yaml``, ``history.csv`` (one row
per epoch), ``checkpoint.pt`` (latest; model, optimizer, scheduler, RNG
states), ``stage-<name>.pt`` (model weights at the end of each stage, for runs
that start from another run's stage), ``predictions.npz`` (per-example top-k of
every error column) with ``correct.json`` (which images each column got right,
bit-packed: what the report's paired tests read) and ``metrics.json``, written last: a run
with ``metrics.json`` is done. A run that raised leaves ``failed.json`` (the
error) until a later attempt finishes it.
Every file is written to a temp file in the same folder and renamed into place,
so a killed process never leaves a half file that a later read takes as whole.
The ``.pt`` files are written and read by ``harness.engine.checkpoint``
(``torch.load(weights_only=True)``); this module imports no torch, so the report,
which reads only the store, loads none.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

CORRECT_NAME = "correct.json"  # per-example correctness of each error column
TOP_K = (1, 5)  # the error columns' k


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

    correct_file = property(lambda self: self.path / CORRECT_NAME)

    def write_predictions(self, arrays: dict[str, np.ndarray]) -> None:
        """Per-example predictions, one array per name (``engine.evaluate.final_metrics``),
        then ``correct.json``: which images each error column got right, bit-packed.
        The report's paired tests need only that, and reading it costs a hundredth of
        inflating the predictions (10,000 records: ~13 s of one core saved)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.predictions_file, buffer.getvalue())
        text = json.dumps(correctness(arrays), sort_keys=True)
        atomic_write_text(self.correct_file, text + "\n")

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


def correctness(arrays: dict[str, np.ndarray], ks: tuple[int, ...] = TOP_K) -> dict[str, dict]:
    """{error column (``top1_val``, ``dense_top5_val``, ...): {"examples": n, "bits":
    base64 of ``np.packbits`` of each image's hit}} for every top-k array of
    ``arrays`` that has its part's targets."""
    out: dict[str, dict] = {}
    for name, targets in arrays.items():
        if not name.endswith("_targets"):
            continue
        part = name.removesuffix("_targets")
        for dense in (False, True):
            topk = arrays.get(topk_key(part, dense))
            if topk is None or len(topk) != len(targets):
                continue
            right = np.asarray(topk) == np.asarray(targets)[:, None]
            for k in ks:
                bits = np.packbits(right[:, :k].any(axis=1)).tobytes()
                column = f"{'dense_' if dense else ''}top{k}_{part}"
                out[column] = {
                    "examples": int(len(targets)),
                    "bits": base64.b64encode(bits).decode("ascii"),
                }
    return out


def topk_key(part: str, dense: bool) -> str:
    """The ``predictions.npz`` array of one evaluation: [images, k] classes, best first."""
    return f"{part}_dense_topk" if dense else f"{part}_topk"


def targets_key(part: str) -> str:
    """The ``predictions.npz`` array of a part's true classes, in the same image order."""
    return f"{part}_targets"


def run_record(results_root: str | Path, suite: str, run_id: str) -> RunRecord:
    return RunRecord(Path(results_root) / suite / run_id)
