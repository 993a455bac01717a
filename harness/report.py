"""Read run records into a DataFrame and format the error table.

The report reads only the store (``config.yaml`` + ``metrics.json`` of each run
folder), never logs, and imports nothing from training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

# (metrics.json key, column title), in the paper's table order
ERROR_COLUMNS = (
    ("top1_train", "top-1 train"),
    ("top1_val", "top-1 val"),
    ("top5_train", "top-5 train"),
    ("top5_val", "top-5 val"),
    ("dense_top1_val", "dense top-1 val"),
    ("dense_top5_val", "dense top-5 val"),
)


def read_runs(suite_dir: Path) -> pd.DataFrame:
    """One row per run folder: its plan fields, status and (if done) its metrics."""
    rows = []
    for config_file in sorted(suite_dir.glob("*/config.yaml")):
        folder = config_file.parent
        try:
            run = yaml.safe_load(config_file.read_text())["run"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue  # a record being written; the next read sees it whole
        row = {key: run[key] for key in ("run_id", "method", "labels", "split_seed", "train_seed")}
        metrics_file = folder / "metrics.json"
        row["status"] = "done" if metrics_file.is_file() else "incomplete"
        if row["status"] == "done":
            row |= json.loads(metrics_file.read_text())
        rows.append(row)
    return pd.DataFrame(rows)


def error_table(runs: pd.DataFrame, methods: list[str]) -> str:
    """Markdown: method rows per label budget, mean ± std over seeds of each error (%)."""
    return _mean_std_table(runs, methods, list(ERROR_COLUMNS), ".2f")


def recon_table(runs: pd.DataFrame, methods: list[str]) -> str | None:
    """Markdown: the decoders' relative reconstruction error on val per level (lower
    is better; 1.0 = predicting zeros), mean ± std over seeds; None if no run has one."""
    columns = sorted(c for c in runs.columns if c.startswith("recon_rel_"))
    if not columns:
        return None
    titled = [(c, c.removeprefix("recon_rel_").replace("_", " ")) for c in columns]
    return _mean_std_table(runs, methods, titled, ".4f")


def _mean_std_table(
    runs: pd.DataFrame, methods: list[str], columns: list[tuple[str, str]], fmt: str
) -> str:
    done = runs[runs["status"] == "done"] if len(runs) else runs
    header = ["labels", "method", "seeds"] + [title for _, title in columns]
    table = []
    for labels in sorted(done["labels"].unique(), key=float) if len(done) else []:
        for method in methods:
            group = done[(done["labels"] == labels) & (done["method"] == method)]
            if group.empty or group[columns[0][0]].isna().all():
                continue
            cells = [labels, method, str(len(group))]
            for key, _ in columns:
                values = group[key].astype(float)
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"{values.mean():{fmt}} ± {std:{fmt}}")
            table.append(cells)
    return pd.DataFrame(table, columns=header).to_markdown(index=False)
