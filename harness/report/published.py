"""A paper's published errors (the suite's ``published:`` entries) beside ours.

Ours is the main table's final value (``final_<metric>`` of ``data.final_errors``,
averaged by ``tables.mean_std``), over the done seeds of that method and budget;
the config allows no metric outside the table's columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

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
        column = f"final_{entry.metric}"  # the config checked: a column of the table
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


def run_counts(runs: pd.DataFrame) -> tuple[dict, dict]:
    """Planned and done runs per (method, budget) of ``final_errors``'s frame."""
    planned = runs.groupby(["method", "labels"]).size().to_dict()
    done = runs[runs["status"] == "done"].groupby(["method", "labels"]).size().to_dict()
    return planned, done


def published_markdown(
    table: pd.DataFrame, last_k: int, published: Iterable = (), runs: pd.DataFrame | None = None
) -> str:
    """The section of published.md, summary.md and the screen: the entries one a row,
    the paper's grid where they span several columns, and the cells with no run yet
    (given the entries and the runs)."""
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
    grid = published_grid_markdown(table)
    if grid:
        lines += ["", grid.rstrip("\n")]
    missing = cells_without_runs(published, *run_counts(runs)) if runs is not None else []
    if missing:
        lines += ["", "Published cells with no done run of ours yet:", ""]
        lines += [f"- {line}" for line in missing]
    return "\n".join(lines) + "\n"


def published_grid_markdown(table: pd.DataFrame) -> str:
    """The paper's table laid out as the paper lays it out: a row per method and budget,
    a column per error column it reports, each cell "published / ours" (ours: the mean
    over our done seeds). Empty where the entries name one column only (the long table
    says it all)."""
    metrics = [key for key, _ in ERROR_COLUMNS if key in set(table["metric"])]
    if len(metrics) < 2:
        return ""
    titles = dict(ERROR_COLUMNS)
    lines = [
        f"Each cell: published / ours (mean over our done seeds; {MISSING_MD} where none is done).",
        "",
        "| method | labels | " + " | ".join(titles[m] for m in metrics) + " |",
        "|:--|--:|" + "--:|" * len(metrics),
    ]
    for (method, labels), group in table.groupby(["method", "labels"], sort=False):
        by_metric = {row.metric: row for row in group.itertuples(index=False)}
        cells = []
        for metric in metrics:
            row = by_metric.get(metric)
            if row is None:
                cells.append("")
                continue
            ours = MISSING_MD if math.isnan(row.ours_mean) else f"{row.ours_mean:.2f}"
            cells.append(f"{row.published_mean:.2f} / {ours}")
        lines.append(f"| {method} | {labels} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cells_without_runs(
    published: Iterable, planned: Mapping[tuple[str, str], int], done: Mapping[tuple[str, str], int]
) -> list[str]:
    """One line per published cell (method, budget) with no done run of ours, saying
    whether the plan has no run of it or has runs not done yet; ``planned`` and ``done``
    count runs per (method, budget). The report and ``harness.status`` both print it."""
    metrics: dict[tuple[str, str], list[str]] = {}
    for entry in published:
        metrics.setdefault((entry.method, str(entry.labels)), []).append(entry.metric)
    lines = []
    for (method, labels), names in metrics.items():
        if done.get((method, labels), 0):
            continue
        count = planned.get((method, labels), 0)
        why = f"{_seeds(count)} planned, none done" if count else "no run in this plan"
        lines.append(f"{method} at {labels} labels ({', '.join(names)}): {why}")
    return lines


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")
