"""Run records -> the report's DataFrames, cached as Parquet.

The report reads only the store: ``metrics.json``, ``history.csv``,
``predictions.npz`` and ``failed.json`` of each planned run, never logs, and
imports nothing from training. Each record is read once: its row and history go
into ``report/runs.parquet`` and ``report/history.parquet`` with a stamp (size and
mtime of each file), and a later report rereads only records whose stamp
changed. Because the store writes every file atomically and ``metrics.json``
last, a record read while its run is still going is either not done yet or done
and whole; a file that cannot be read marks that run ``failed``, it never stops
the report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.lock import LOCK_NAME, is_held
from harness.store import RunRecord, atomic_write_bytes, targets_key, topk_key

if TYPE_CHECKING:
    from harness.plan import RunSpec

# (metrics.json key, title), in the paper's table order
ERROR_COLUMNS = (
    ("top1_train", "top-1 train"),
    ("top1_val", "top-1 val"),
    ("top5_train", "top-5 train"),
    ("top5_val", "top-5 val"),
    ("dense_top1_val", "dense top-1 val"),
    ("dense_top5_val", "dense top-5 val"),
)
# columns whose "final" value is the median of the last k evaluations in history.csv
HISTORY_COLUMNS = ("top1_val", "top5_val")
# done: metrics.json; running: a live process holds its lock; failed: failed.json or an
# unreadable record; incomplete: started, not finished (queued, or killed); missing:
# never started
STATUSES = ("done", "running", "failed", "incomplete", "missing")
_STAMPED = (
    "config.yaml",
    "metrics.json",
    "history.csv",
    "predictions.npz",
    "failed.json",
    LOCK_NAME,
)


def parse_column(key: str) -> tuple[str, bool, int]:
    """``dense_top5_val`` -> (part ``val``, dense, k 5): which predictions a column needs."""
    dense = key.startswith("dense_")
    top, part = key.removeprefix("dense_").split("_")
    return part, dense, int(top.removeprefix("top"))


def stamp(folder: Path) -> str:
    """Size and mtime of each file the report reads (and whether a lock's holder
    lives): changes whenever any of them does."""
    parts = []
    for name in _STAMPED:
        try:
            info = (folder / name).stat()
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{info.st_size}:{info.st_mtime_ns}")
    if parts[-1] != "-":  # a lock file: whether its holder lives changes without a write
        parts.append("held" if is_held(folder) else "stale")
    return "|".join(parts)


def read_record(folder: Path, attempts: int = 3) -> tuple[dict, dict[str, np.ndarray]]:
    """One run folder -> (row, history columns). Never raises on a bad record.

    A file that vanishes while being read (a run restarted: its old ``metrics.json``
    removed) means the record changed under us: read it again.
    """
    for _ in range(attempts - 1):
        try:
            return _read_record(folder)
        except FileNotFoundError:
            continue
    return _read_record(folder, last_try=True)


def _read_record(folder: Path, last_try: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    record = RunRecord(folder)
    row: dict = {"stamp": stamp(folder), "error": ""}
    history: dict[str, np.ndarray] = {}
    if record.metrics_file.is_file():
        row["status"] = "done"
    elif is_held(folder):
        row["status"] = "running"
    elif record.failure_file.is_file():
        row["status"] = "failed"
        row["error"] = _read_failure(record)
    elif record.config_file.is_file():
        row["status"] = "incomplete"
    else:
        row["status"] = "missing"
    try:
        if row["status"] == "done":
            metrics = json.loads(record.metrics_file.read_text())
            row |= {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            row |= _read_hits(record.predictions_file)
        if record.history_file.is_file():
            history = _read_history(record.history_file)
    except FileNotFoundError:
        if not last_try:
            raise
        row = {"stamp": row["stamp"], "status": "failed", "error": "record vanished while read"}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        row = {"stamp": row["stamp"], "status": "failed", "error": f"unreadable record: {error}"}
    return row, history


def _read_failure(record: RunRecord) -> str:
    try:
        return str(json.loads(record.failure_file.read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return "failed (failed.json unreadable)"


def _read_hits(path: Path) -> dict:
    """Per-example correctness of each error column, bit-packed (bytes) for the cache."""
    out: dict = {}
    if not path.is_file():
        return out
    with np.load(path) as arrays:
        loaded = {name: arrays[name] for name in arrays.files}
    for key, _ in ERROR_COLUMNS:
        part, dense, k = parse_column(key)
        topk, targets = loaded.get(topk_key(part, dense)), loaded.get(targets_key(part))
        if topk is None or targets is None or topk.shape[0] != targets.shape[0]:
            continue
        hits = (topk[:, :k] == targets[:, None]).any(axis=1)
        out[f"hits_{key}"] = np.packbits(hits).tobytes()
        out[f"n_{part}"] = float(len(hits))
    return out


def _read_history(path: Path) -> dict[str, np.ndarray]:
    """The columns of history.csv the report uses: stage, epoch and val error."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))

    def floats(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) else math.nan for r in rows])

    return {
        "stage": np.array([r["stage"] for r in rows], dtype=object),
        "epoch": np.array([int(r["epoch"]) for r in rows], dtype=np.int64),
        "top1_val": floats("top1_val"),
        "top5_val": floats("top5_val"),
    }


def load_runs(
    suite_dir: Path, plan: Iterable[RunSpec], cache_dir: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, history) of the planned runs: one row per run, and one per epoch.

    ``runs`` has the plan's fields (run_id, method, labels, seed), ``status``,
    ``error``, every number of ``metrics.json`` and the packed correctness of each
    error column. With ``cache_dir`` the tables are cached there as Parquet.
    """
    plan = list(plan)
    cached_runs, cached_history = _read_cache(cache_dir)
    known = dict(zip(cached_runs["run_id"], cached_runs["stamp"], strict=True))
    fresh_rows, fresh_history = [], []
    for spec in plan:
        folder = suite_dir / spec.run_id
        if known.get(spec.run_id) == stamp(folder):
            continue
        row, history = read_record(folder)
        fresh_rows.append({"run_id": spec.run_id, **row})
        if history:
            fresh_history.append(pd.DataFrame({"run_id": spec.run_id, **history}))
    runs, history = cached_runs, cached_history
    if fresh_rows:
        fresh_ids = {row["run_id"] for row in fresh_rows}
        runs = pd.concat(
            [cached_runs[~cached_runs["run_id"].isin(fresh_ids)], pd.DataFrame(fresh_rows)],
            ignore_index=True,
        )
        history = pd.concat(
            [cached_history[~cached_history["run_id"].isin(fresh_ids)], *fresh_history],
            ignore_index=True,
        )
        _write_cache(cache_dir, runs, history)
    planned = pd.DataFrame(
        {
            "run_id": [s.run_id for s in plan],
            "method": [s.method for s in plan],
            "labels": [s.labels for s in plan],
            "seed": [s.train_seed for s in plan],
        }
    )
    runs = planned.merge(runs, on="run_id", how="left", validate="one_to_one")
    for key, _ in ERROR_COLUMNS:  # present even before any run is done
        if key not in runs.columns:
            runs[key] = math.nan
    history = history[history["run_id"].isin(planned["run_id"])]
    history = history.merge(planned, on="run_id", how="left")
    return runs, history


_EMPTY_HISTORY = {"run_id": [], "stage": [], "epoch": [], "top1_val": [], "top5_val": []}


def _read_cache(cache_dir: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    empty = pd.DataFrame({"run_id": [], "stamp": []}), pd.DataFrame(_EMPTY_HISTORY)
    if cache_dir is None:
        return empty
    try:
        runs = pd.read_parquet(cache_dir / "runs.parquet")
        history = pd.read_parquet(cache_dir / "history.parquet")
    except Exception:  # noqa: BLE001 - absent, older or damaged: rebuild it from the records
        return empty
    if not {"run_id", "stamp", "cache_token"} <= set(runs.columns) or len(runs) == 0:
        return empty
    if "cache_token" not in history.columns or (
        len(history) and set(history["cache_token"]) != {runs["cache_token"].iloc[0]}
    ):
        return empty  # the two files are from different writes: trust neither
    return runs.drop(columns="cache_token"), history.drop(columns="cache_token")


def _write_cache(cache_dir: Path | None, runs: pd.DataFrame, history: pd.DataFrame) -> None:
    if cache_dir is None:
        return
    # Both files carry one token per write; a reader that finds two different
    # tokens (a crash or another report between the two renames) rebuilds.
    token = uuid.uuid4().hex
    for name, frame in (("history", history), ("runs", runs)):
        buffer = io.BytesIO()
        frame.assign(cache_token=token).to_parquet(buffer, index=False)
        atomic_write_bytes(cache_dir / f"{name}.parquet", buffer.getvalue())


def final_errors(runs: pd.DataFrame, history: pd.DataFrame, last_k: int) -> pd.DataFrame:
    """``runs`` plus ``final_<column>`` for each error column and ``final_evals``.

    Val single-crop errors are evaluated during training: their final value is the
    median of the last ``last_k`` evaluations of the run's last stage (fewer if
    that stage has fewer; never the best over training, which would select on
    val). A last stage without evaluations falls back to the final model's value,
    as do the other columns, which exist only for the final model.
    """
    runs = runs.copy()
    for key, _ in ERROR_COLUMNS:
        runs[f"final_{key}"] = runs[key] if key in runs.columns else math.nan
    runs["final_evals"] = 0
    last_stage = history.groupby("run_id")["stage"].transform("last")
    evaluated = history[(history["stage"] == last_stage) & history["top1_val"].notna()]
    if evaluated.empty:
        return runs
    tail = evaluated.groupby("run_id").tail(last_k)
    medians = tail.groupby("run_id")[list(HISTORY_COLUMNS)].median()
    counts = tail.groupby("run_id").size()
    done = runs["status"] == "done"
    for key in HISTORY_COLUMNS:
        from_history = runs["run_id"].map(medians[key])
        runs.loc[done, f"final_{key}"] = from_history[done].fillna(runs.loc[done, key])
    runs.loc[done, "final_evals"] = runs.loc[done, "run_id"].map(counts).fillna(0).astype(int)
    return runs
