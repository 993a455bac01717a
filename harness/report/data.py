"""Run records -> the report's DataFrames, cached as Parquet.

The report reads only the store: ``metrics.json``, ``history.csv``, the
per-example correctness (``correct.json``, else ``predictions.npz``) and
``failed.json`` of each planned run, never logs, and imports nothing from
training. Each record is read once: its row and history go into
``report/runs.parquet`` and ``report/history.parquet`` with a stamp (size and
mtime of each file), and a later report rereads only records whose stamp
changed. Because the store writes every file atomically and ``metrics.json``
last, a record read while its run is still going is either not done yet or done
and whole; a file that cannot be read marks that run ``failed``, it never stops
the report.

Why ``correct.json``: the paired tests need, per error column, which images
each run got right: a few kilobytes. Deriving that from ``predictions.npz``
means inflating every run's top-5 arrays, about 2 ms of CPU a record even done
well (20 s of a cold report of 10,000 runs); reading it bit-packed takes 0.05 ms.
A record without the file (written before the store wrote it) is read from
``predictions.npz``, to the same row.
"""

from __future__ import annotations

import binascii
import csv
import io
import json
import math
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.lock import LOCK_NAME, is_held
from harness.store import CORRECT_NAME, RunRecord, atomic_write_bytes, targets_key, topk_key

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
    CORRECT_NAME,
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
    lives): changes whenever any of them does. ``os.stat`` on strings: this runs
    for every planned record on every report, cached or not."""
    base = os.path.join(folder, "")
    parts = []
    for name in _STAMPED:
        try:
            info = os.stat(base + name)
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{info.st_size}:{info.st_mtime_ns}")
    if parts[-1] != "-":  # a lock file: whether its holder lives changes without a write
        parts.append("held" if is_held(folder) else "stale")
    return "|".join(parts)


def _present(stamped: str) -> dict[str, bool]:
    """Which of the stamped files existed when ``stamped`` was taken, and ``held``:
    whether a live process held the lock."""
    parts = stamped.split("|")
    present = {name: part != "-" for name, part in zip(_STAMPED, parts, strict=False)}
    present["held"] = parts[-1] == "held"
    return present


def read_record(
    folder: Path, attempts: int = 3, stamped: str | None = None
) -> tuple[dict, dict[str, list]]:
    """One run folder -> (row, history columns). Never raises on a bad record.

    ``stamped``: the folder's ``stamp`` if the caller has just taken it. The stamp
    is taken before any file is read, so a file that changes during the read
    changes the next stamp, and it says which files exist: a done record costs
    no further system call to classify. A file that vanishes while being read
    (a run restarted: its old ``metrics.json`` removed) means the record changed
    under us: stamp it and read it again.
    """
    for _ in range(attempts - 1):
        try:
            return _read_record(folder, stamped)
        except FileNotFoundError:
            stamped = None
    return _read_record(folder, None, last_try=True)


def _read_record(
    folder: Path, stamped: str | None, last_try: bool = False
) -> tuple[dict, dict[str, list]]:
    record = RunRecord(folder)
    stamped = stamp(folder) if stamped is None else stamped
    present = _present(stamped)
    row: dict = {"stamp": stamped, "status": _status(present), "error": ""}
    history: dict[str, list] = {}
    if row["status"] == "failed":
        row["error"] = _read_failure(record)
    try:
        if row["status"] == "done":
            metrics = json.loads(record.metrics_file.read_text())
            row |= {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            row |= _read_correct(record, present)
        if present["history.csv"]:
            history = _read_history(record.history_file)
    except FileNotFoundError:
        if not last_try:
            raise
        row = {"stamp": stamped, "status": "failed", "error": "record vanished while read"}
    except (OSError, ValueError, KeyError, IndexError) as error:
        row = {"stamp": stamped, "status": "failed", "error": f"unreadable record: {error}"}
    return row, history


def _status(present: dict[str, bool]) -> str:
    if present["metrics.json"]:
        return "done"
    if present[LOCK_NAME] and present["held"]:
        return "running"
    if present["failed.json"]:
        return "failed"
    if present["config.yaml"]:
        return "incomplete"
    return "missing"


def _read_failure(record: RunRecord) -> str:
    try:
        return str(json.loads(record.failure_file.read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return "failed (failed.json unreadable)"


# error column -> (its hits_ and n_ keys in a row)
_ROW_KEYS = {key: (f"hits_{key}", f"n_{parse_column(key)[0]}") for key, _ in ERROR_COLUMNS}


def _read_correct(record: RunRecord, present: dict[str, bool]) -> dict:
    """Per-example correctness of each error column, bit-packed (bytes), and the
    image count of each part: from ``correct.json``, else from the predictions."""
    if not present[CORRECT_NAME]:
        return _read_hits(record.predictions_file) if present["predictions.npz"] else {}
    with open(os.path.join(record.path, CORRECT_NAME), "rb") as handle:
        table = json.loads(handle.read())
    out: dict = {}
    for key, (hits, examples) in _ROW_KEYS.items():
        entry = table.get(key)
        if entry is None:
            continue
        bits, count = binascii.a2b_base64(entry["bits"]), int(entry["examples"])
        if len(bits) != (count + 7) // 8:
            raise ValueError(f"{CORRECT_NAME}: {key} has {len(bits)} bytes for {count} images")
        out[hits], out[examples] = bits, float(count)
    return out


def _read_hits(path: Path) -> dict:
    """``_read_correct`` from ``predictions.npz`` (a record written before the store
    wrote ``correct.json``). The file is read whole first (the zip members then
    come from memory) and each top-k array is compared with the targets once."""
    with np.load(io.BytesIO(path.read_bytes())) as arrays:
        loaded = {name: arrays[name] for name in arrays.files}
    out: dict = {}
    found: dict[tuple[str, bool], np.ndarray | None] = {}
    for key, _ in ERROR_COLUMNS:
        part, dense, k = parse_column(key)
        if (part, dense) not in found:
            found[part, dense] = _guesses_right(loaded, part, dense)
        right = found[part, dense]
        if right is None:
            continue
        hits = np.logical_or.reduce(right[:k], axis=0)
        out[f"hits_{key}"] = np.packbits(hits).tobytes()
        out[f"n_{part}"] = float(len(hits))
    return out


def _guesses_right(loaded: dict[str, np.ndarray], part: str, dense: bool) -> np.ndarray | None:
    """[k, images] booleans: whether the i-th guess is the image's class (None: no
    such predictions, or not as many as targets). Guess-major and contiguous: numpy
    reduces [images, 5] along its short axis 20 times slower than [5, images]
    along its long one."""
    topk, targets = loaded.get(topk_key(part, dense)), loaded.get(targets_key(part))
    if topk is None or targets is None or topk.shape[0] != targets.shape[0]:
        return None
    guesses = np.ascontiguousarray(topk.T, dtype=np.result_type(topk, targets))
    return guesses == targets


def _read_history(path: Path) -> dict[str, list]:
    """The columns of history.csv the report uses: stage, epoch and val error
    ({} while it has no rows). This runs once per record, so it is the report's
    inner loop: a file without a quote has no quoted field, and its lines split
    on commas exactly as the csv module would split them, at a third of the cost."""
    with open(path, newline="") as handle:
        text = handle.read()
    lines = text.splitlines()
    if '"' in text:
        rows = [row for row in csv.reader(lines) if row]
    else:
        rows = [line.split(",") for line in lines if line]
    if len(rows) < 2:
        return {}
    if any(len(row) != len(rows[0]) for row in rows):
        raise ValueError(f"{path.name}: rows of different lengths")
    columns = dict(zip(rows[0], zip(*rows[1:], strict=True), strict=True))
    none = ("",) * (len(rows) - 1)
    return {
        "stage": list(columns["stage"]),  # KeyError: an unreadable record
        "epoch": [int(value) for value in columns["epoch"]],
        "top1_val": [float(v) if v else math.nan for v in columns.get("top1_val", none)],
        "top5_val": [float(v) if v else math.nan for v in columns.get("top5_val", none)],
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
    fresh = []
    for spec in plan:
        folder = suite_dir / spec.run_id
        stamped = stamp(folder)
        if known.get(spec.run_id) != stamped:
            fresh.append((spec.run_id, folder, stamped))
    runs, history = cached_runs, cached_history
    if fresh:
        fresh_runs, fresh_history = _read_fresh(fresh)
        fresh_ids = set(fresh_runs["run_id"])
        runs = pd.concat(
            [cached_runs[~cached_runs["run_id"].isin(fresh_ids)], fresh_runs], ignore_index=True
        )
        history = pd.concat(
            [cached_history[~cached_history["run_id"].isin(fresh_ids)], fresh_history],
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


def _read_fresh(fresh: list[tuple[str, Path, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, history) of the records that changed since the cache, in order.

    In this process. Forked readers were tried: on 2 cores shared with a training
    job they took as long, and each held its own copy of the parent's pages."""
    rows, history = [], _History()
    for run_id, folder, stamped in fresh:
        row, columns = read_record(folder, stamped=stamped)
        rows.append({"run_id": run_id, **row})
        history.add(run_id, columns)
    return pd.DataFrame(rows), history.frame()


class _History:
    """The fresh records' history rows, gathered as lists and made one DataFrame at
    the end: a DataFrame per record costs more than reading the record."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in _EMPTY_HISTORY}

    def add(self, run_id: str, history: dict[str, list]) -> None:
        if not history:
            return
        self.columns["run_id"] += [run_id] * len(history["stage"])
        for name, values in history.items():
            self.columns[name] += values

    def frame(self) -> pd.DataFrame:
        columns = self.columns
        return pd.DataFrame(
            {
                "run_id": pd.Series(columns["run_id"], dtype="str"),
                "stage": pd.Series(columns["stage"], dtype="str"),
                "epoch": np.array(columns["epoch"], dtype=np.int64),
                "top1_val": np.array(columns["top1_val"], dtype=float),
                "top5_val": np.array(columns["top5_val"], dtype=float),
            }
        )


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
        len(history) and set(history["cache_token"].unique()) != {runs["cache_token"].iloc[0]}
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
        # uncompressed: the packed correctness compresses little (a third), and
        # inflating it was a third of a warm report's reading
        frame.assign(cache_token=token).to_parquet(buffer, index=False, compression=None)
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
