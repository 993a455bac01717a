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
import gc
import io
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.columns import ERROR_COLUMNS
from harness.lock import LOCK_NAME, is_held
from harness.store import CORRECT_NAME, RunRecord, atomic_open, targets_key, topk_key

if TYPE_CHECKING:
    from harness.plan import RunSpec

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


def stamp(folder: str | Path) -> str:
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
        parts.append("held" if is_held(Path(folder)) else "stale")
    return "|".join(parts)


def _present(stamped: str) -> dict[str, bool]:
    """Which of the stamped files existed when ``stamped`` was taken, and ``held``:
    whether a live process held the lock."""
    parts = stamped.split("|")
    present = {name: part != "-" for name, part in zip(_STAMPED, parts, strict=False)}
    present["held"] = parts[-1] == "held"
    return present


def read_record(
    folder: Path, attempts: int = 3, stamped: str | None = None, *, floats: bool = True
) -> tuple[dict, dict[str, list]]:
    """One run folder -> (row, history columns). Never raises on a bad record.

    ``stamped``: the folder's ``stamp`` if the caller has just taken it. The stamp
    is taken before any file is read, so a file that changes during the read
    changes the next stamp, and it says which files exist: a done record costs
    no further system call to classify. A file that vanishes while being read
    (a run restarted: its old ``metrics.json`` removed) means the record changed
    under us: stamp it and read it again.

    ``floats=False`` leaves the history's val errors as the file's strings ("" for
    none), for a caller that parses every record's at once (``_History``): it
    then owns the last step of reading the record, and a value that does not
    parse fails the record as it would have failed here.
    """
    for _ in range(attempts - 1):
        try:
            return _read_record(folder, stamped, floats)
        except FileNotFoundError:
            stamped = None
    return _read_record(folder, None, floats, last_try=True)


def _read_record(
    folder: Path, stamped: str | None, floats: bool, last_try: bool = False
) -> tuple[dict, dict[str, list]]:
    stamped = stamp(folder) if stamped is None else stamped
    present = _present(stamped)
    row: dict = {"stamp": stamped, "status": _status(present), "error": ""}
    history: dict[str, list] = {}
    if row["status"] == "failed":
        row["error"] = _read_failure(RunRecord(folder))
    # paths as strings, files read whole as bytes: this runs for every record
    base = os.path.join(folder, "")
    try:
        if row["status"] == "done":
            metrics = json.loads(_read_bytes(base + "metrics.json"))
            row |= {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            row |= _read_correct(folder, present)
        if present["history.csv"]:
            history = _read_history(base + "history.csv", floats)
    except FileNotFoundError:
        if not last_try:
            raise
        row = {"stamp": stamped, "status": "failed", "error": "record vanished while read"}
    except (OSError, ValueError, KeyError, IndexError) as error:
        row = {"stamp": stamped, "status": "failed", "error": f"unreadable record: {error}"}
    return row, history


def _read_bytes(path: str) -> bytes:
    """The whole file, through one unbuffered handle: ``open(path, "rb")`` adds a
    buffered reader, and text mode a codec, at three files a record."""
    with io.FileIO(path) as handle:
        return handle.readall()


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


def _read_correct(folder: Path, present: dict[str, bool]) -> dict:
    """Per-example correctness of each error column, bit-packed (bytes), and the
    image count of each part: from ``correct.json``, else from the predictions."""
    if not present[CORRECT_NAME]:
        if not present["predictions.npz"]:
            return {}
        return _read_hits(RunRecord(Path(folder)).predictions_file)
    table = json.loads(_read_bytes(os.path.join(folder, CORRECT_NAME)))
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


def _read_history(path: str | Path, floats: bool = True) -> dict[str, list]:
    """The columns of history.csv the report uses: stage, epoch and val error
    ({} while it has no rows). This runs once per record, so it is the report's
    inner loop. A file without a quote has no quoted field: its lines split on
    commas exactly as the csv module would split them, and when every line has
    the same number of commas the lines joined by commas split into the fields
    of every row in order, in two calls for the whole file instead of one a line;
    column i is then every ``width``-th field from i. ``floats=False``: the val
    errors as strings, "" where empty or absent (``read_record``)."""
    text = _read_bytes(os.fspath(path)).decode()
    lines = text.splitlines()
    if '"' in text:
        rows = [row for row in csv.reader(lines) if row]
        if len(rows) < 2:
            return {}
        width = len(rows[0])
        if any(len(row) != width for row in rows):
            raise ValueError(f"{os.path.basename(path)}: rows of different lengths")
        fields = [field for row in rows for field in row]
    else:
        if "" in lines:
            lines = [line for line in lines if line]
        if len(lines) < 2:
            return {}
        if len(set(map(str.count, lines, repeat(",")))) != 1:
            raise ValueError(f"{os.path.basename(path)}: rows of different lengths")
        width = lines[0].count(",") + 1
        fields = ",".join(lines).split(",")
    count = len(fields) // width - 1  # rows below the header
    # a name given twice is its last column, as a dict of the columns would have it
    where = dict(zip(fields[:width], range(width), strict=True))

    def column(name: str) -> list[str]:
        return fields[width + where[name] :: width]  # KeyError: an unreadable record

    history = {
        "stage": column("stage"),
        "epoch": list(map(int, column("epoch"))),
        # the run's optimizer steps so far (its own stages; absent in older records)
        "step": list(map(int, column("step"))) if "step" in where else [-1] * count,
    }
    for name in HISTORY_COLUMNS:  # absent: no evaluation in any epoch
        values = column(name) if name in where else [""] * count
        history[name] = _errors(values) if floats else values
    return history


def _errors(values: list[str]) -> list[float]:
    """A val error column of history.csv: nan where empty (an epoch without an
    evaluation)."""
    if "" in values:
        return [float(v) if v else math.nan for v in values]
    return list(map(float, values))


# what a val error can be made of for ``_parse_errors`` (and "", an epoch without one)
_NUMBER_CHARS = b"0123456789.+-eE"


def _parse_errors(values: list[str]) -> np.ndarray | None:
    """``_errors`` of many records' values at once, by Arrow's parser: float(v)
    costs a third of a microsecond a value (Python rounds 17 digits exactly, the
    slow way), which at 40 rows and two columns a record came to a quarter of a
    second of a cold report of 10,000 records; Arrow takes a fifth of that.
    None when a value holds anything but digits, signs, a point and an exponent
    (nan, inf, spaces, underscores: Python's float() reads those its own way),
    or Arrow refuses one: the caller then parses each record's with ``_errors``.
    On these characters the two parsers agree: both round to the nearest double
    and both refuse the same malformed strings (checked on every such string of
    up to 4 characters, on up to 6 of 0 1 9 . + - e E, and on 600,000 random and
    printed floats; not one differed)."""
    strings = pa.array(values, type=pa.string())
    if not isinstance(strings, pa.Array):  # chunked: over 2 GiB of text
        return None
    data = strings.buffers()[2]  # every value's UTF-8, end to end
    text = b"" if data is None else data.to_pybytes()
    if not text.isascii() or text.translate(None, _NUMBER_CHARS):
        return None
    missing = pa.scalar(None, type=pa.string())
    try:
        parsed = pc.cast(pc.if_else(pc.equal(strings, ""), missing, strings), pa.float64())
    except pa.ArrowException:
        return None
    return parsed.to_numpy(zero_copy_only=False)  # null: nan


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
    base = os.path.join(suite_dir, "")  # a string per folder: a Path only for those read
    for spec in plan:
        stamped = stamp(base + spec.run_id)
        if known.get(spec.run_id) != stamped:
            fresh.append((spec.run_id, suite_dir / spec.run_id, stamped))
    runs, history = cached_runs, cached_history
    if fresh:
        fresh_runs, fresh_history = _read_fresh(fresh)
        fresh_ids = set(fresh_runs["run_id"])
        runs = _replace(cached_runs, fresh_runs, fresh_ids)
        history = _replace(cached_history, fresh_history, fresh_ids)
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
    return runs, _with_plan(history, planned)


def _with_plan(history: pd.DataFrame, planned: pd.DataFrame) -> pd.DataFrame:
    """The planned runs' history rows with their plan fields: ``history.merge(planned,
    on="run_id")`` of the rows whose run is planned, the same frame. Each distinct
    run id is looked up once (the column repeats each about 40 times) and the
    plan's fields are taken by position, at a tenth of the merge's cost."""
    codes, ids = pd.factorize(history["run_id"])
    where = pd.Index(planned["run_id"]).get_indexer(ids)[codes]
    where[codes < 0] = -1  # a missing run id: in no plan
    keep = where >= 0
    rows = where[keep]
    kept = history[keep].reset_index(drop=True)
    fields = {c: planned[c].take(rows).reset_index(drop=True) for c in planned if c != "run_id"}
    return kept.assign(**fields)


def _replace(cached: pd.DataFrame, fresh: pd.DataFrame, fresh_ids: set[str]) -> pd.DataFrame:
    """The cached rows of the runs not reread, then the fresh rows. Without cached
    rows, the fresh ones alone: concatenated with the empty cache (float columns),
    their text columns would turn from ``str`` into ``object``, which a later
    report reading the Parquet cache would not see, and which costs a conversion
    back when the cache is written."""
    kept = cached[~cached["run_id"].isin(fresh_ids)]
    if len(kept) == 0:
        return fresh
    return pd.concat([kept, fresh], ignore_index=True)


def _read_fresh(fresh: list[tuple[str, Path, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, history) of the records that changed since the cache, in order.

    In this process. Forked readers were tried: on 2 cores shared with a training
    job they took as long, and each held its own copy of the parent's pages.
    The history's val errors are parsed last, all records' at once
    (``_History.frame``); a record whose errors do not parse fails, as
    ``read_record`` fails it."""
    rows, history = [], _History()
    with _collector_paused():
        for run_id, folder, stamped in fresh:
            row, columns = read_record(folder, stamped=stamped, floats=False)
            history.add(len(rows), run_id, columns)
            rows.append({"run_id": run_id, **row})
        frame, failed = history.frame()
    for i, error in failed.items():
        rows[i] = {
            "run_id": rows[i]["run_id"],
            "stamp": rows[i]["stamp"],
            "status": "failed",
            "error": f"unreadable record: {error}",
        }
    return pd.DataFrame(rows), frame


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while the records are read. Reading keeps some
    five containers a record (its row, its history's lists) until the end, none in
    a cycle, and every 700 of them set off a collection; each tenth of those walks
    the older objects as well, and then the whole heap (the plan's, pandas',
    scipy's): 0.2 s of a cold report of 10,000 records, for no garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _History:
    """The fresh records' history columns, kept as each record's lists and made one
    DataFrame at the end (a DataFrame per record costs more than reading the
    record). The val errors arrive as strings (``read_record(floats=False)``)
    and are parsed all at once (``_parse_errors``)."""

    def __init__(self) -> None:
        self.rows: list[int] = []  # the row of each part's record
        self.run_ids: list[str] = []
        self.parts: list[dict[str, list]] = []

    def add(self, row: int, run_id: str, history: dict[str, list]) -> None:
        if history:
            self.rows.append(row)
            self.run_ids.append(run_id)
            self.parts.append(history)

    def column(self, name: str) -> list:
        return list(chain.from_iterable(part[name] for part in self.parts))

    def frame(self) -> tuple[pd.DataFrame, dict[int, str]]:
        """(the history rows, {row: error} of the records whose val errors do not
        parse: their rows are left out)."""
        errors = {name: _parse_errors(self.column(name)) for name in HISTORY_COLUMNS}
        failed = {}
        if any(values is None for values in errors.values()):
            failed = self._parse_each()
            errors = {name: self.column(name) for name in HISTORY_COLUMNS}
        counts = [len(part["stage"]) for part in self.parts]
        # each run id once, then repeated by position: the same column as one
        # string per row, without converting each row's string
        run_id = pd.Series(self.run_ids, dtype="str").take(
            np.repeat(np.arange(len(counts)), counts)
        )
        frame = pd.DataFrame(
            {
                "run_id": run_id.reset_index(drop=True),
                "stage": pd.Series(self.column("stage"), dtype="str"),
                # float, as the cache has it (its first write concatenated these with
                # the empty cache, whose columns are float)
                "epoch": np.array(self.column("epoch"), dtype=float),
                "step": np.array(self.column("step"), dtype=float),
                **{name: np.array(errors[name], dtype=float) for name in HISTORY_COLUMNS},
            }
        )
        return frame, failed

    def _parse_each(self) -> dict[int, str]:
        """Each part's val errors parsed with ``_errors``, in place; the parts that
        do not parse dropped, and {their row: the error}."""
        failed, kept = {}, []
        for i, part in enumerate(self.parts):
            try:
                for name in HISTORY_COLUMNS:  # in read_record's order: its first error
                    part[name] = _errors(part[name])
            except ValueError as error:
                failed[self.rows[i]] = str(error)
                continue
            kept.append(i)
        self.rows = [self.rows[i] for i in kept]
        self.run_ids = [self.run_ids[i] for i in kept]
        self.parts = [self.parts[i] for i in kept]
        return failed


_EMPTY_HISTORY = {
    "run_id": [],
    "stage": [],
    "epoch": [],
    "step": [],
    "top1_val": [],
    "top5_val": [],
}


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
    if not {"cache_token", *_EMPTY_HISTORY} <= set(history.columns) or (
        len(history) and set(history["cache_token"].unique()) != {runs["cache_token"].iloc[0]}
    ):
        return empty  # the two files are from different writes: trust neither
    return runs.drop(columns="cache_token"), history.drop(columns="cache_token")


_TEXT_COLUMNS = ("run_id", "stage", "stamp", "status", "error", "cache_token")


def _write_cache(cache_dir: Path | None, runs: pd.DataFrame, history: pd.DataFrame) -> None:
    if cache_dir is None:
        return
    # Both files carry one token per write; a reader that finds two different
    # tokens (a crash or another report between the two renames) rebuilds.
    token = uuid.uuid4().hex
    for name, frame in (("history", history), ("runs", runs)):
        frame = frame.assign(cache_token=token)
        # ``frame.to_parquet(index=False)``, the same file, with the table made in
        # this thread: Arrow's pool of threads converting the packed correctness
        # (Python objects, so one thread at a time) took 0.2 s against 0.03 s.
        table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
        # Uncompressed: the packed correctness compresses little (a third), and
        # inflating it was a third of a warm report's reading. Dictionary-encoded:
        # only the text columns (few distinct values: run ids, stages, the token);
        # hashing every float and every packed correctness to find it unique was
        # half of writing the cache, and reading the floats back plain is faster.
        # No statistics: nothing filters on them.
        text = [c for c in _TEXT_COLUMNS if c in frame.columns]
        with atomic_open(cache_dir / f"{name}.parquet") as handle:
            pq.write_table(
                table, handle, compression=None, use_dictionary=text, write_statistics=False
            )


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
