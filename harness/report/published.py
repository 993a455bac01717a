"""A paper's published errors (the suite's ``published:`` entries) beside ours.

Ours is the main table's final value (``final_<metric>`` of ``data.final_errors``,
averaged by ``tables.mean_std``), over the done seeds of that method and budget;
a metric outside the table's columns is read as ``metrics.json`` gives it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from harness.report.data import ERROR_COLUMNS
from harness.report.tables import MISSING_MD, mean_std

PUBLISHED_TITLE = "Published results beside ours"
# published.csv's columns, in order
PUBLISHED_COLUMNS = (
    "method",
    "labels",
    "metric",
    "published_mean",
    "published_std",
    "published_seeds",
    "source",
    "ours_mean",
    "ours_std",
    "ours_seeds",
    "ours_planned",
    "difference",
)


def published_table(published: Iterable, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per published entry (``method``, ``labels``, ``mean``, ``std``, ``seeds``,
    ``metric``, ``source``): its numbers, ours over the done seeds of ``runs`` (the
    output of ``final_errors``; nan where none is done) and ours − published."""
    groups = runs.groupby(["method", "labels"], sort=False).indices
    rows = []
    for entry in published:
        labels = str(entry.labels)
        group = runs.iloc[groups.get((entry.method, labels), [])]
        column = f"final_{entry.metric}"
        if column not in group.columns:
            column = entry.metric  # a metrics.json number outside the table's columns
        done = group[group["status"] == "done"]
        values = done[column] if column in done.columns else pd.Series(dtype=float)
        values = values[values.notna()]
        mean, std = mean_std(values) if len(values) else (math.nan, math.nan)
        rows.append(
            {
                "method": entry.method,
                "labels": labels,
                "metric": entry.metric,
                "published_mean": float(entry.mean),
                "published_std": float(entry.std),
                "published_seeds": int(entry.seeds),
                "source": entry.source,
                "ours_mean": mean,
                "ours_std": std,
                "ours_seeds": len(values),
                "ours_planned": len(group),
                "difference": mean - float(entry.mean),
            }
        )
    return pd.DataFrame(rows, columns=list(PUBLISHED_COLUMNS))


def published_markdown(table: pd.DataFrame, last_k: int) -> str:
    """The section of published.md, summary.md and the screen."""
    titles = dict(ERROR_COLUMNS)
    lines = [
        "Error (%): published = the paper's mean ± std (over its seeds, where it says how "
        "many); ours = mean ± std over our done seeds of the same final error the main table "
        f"shows (val single crop: the median of the last {last_k} evaluations of the final "
        "stage; the other columns: the final model's); difference = ours − published in "
        f"points (positive: we err more). {MISSING_MD}: no done run of ours for that "
        "method, budget and metric.",
        "",
        "| method | labels | metric | published | source | ours | difference |",
        "|:--|--:|:--|--:|:--|--:|--:|",
    ]
    for row in table.itertuples(index=False):
        paper = f"{row.published_mean:.2f}"
        if row.published_std > 0:
            paper += f" ± {row.published_std:.2f}"
        if row.published_seeds > 0:
            paper += f" ({_seeds(row.published_seeds)})"
        if math.isnan(row.ours_mean):
            ours, difference = MISSING_MD, MISSING_MD
        else:
            seeds = _seeds(row.ours_seeds)
            if row.ours_seeds < row.ours_planned:
                seeds = f"{row.ours_seeds} of {row.ours_planned} seeds done"
            ours = f"{row.ours_mean:.2f} ± {row.ours_std:.2f} ({seeds})"
            difference = f"{row.difference:+.2f}"
        cells = [
            row.method,
            row.labels,
            titles.get(row.metric, row.metric),
            paper,
            row.source.replace("|", "/"),
            ours,
            difference,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")
