"""Every method against the baseline: the rows of ``stats.csv``.

For each label budget and error column, a method is compared with the baseline
run of the same split and seed (same images, so the comparison is paired):

- ``seed = all``: McNemar's exact test and a paired bootstrap 95% CI on the
  per-example pairs of all seeds pooled, plus Wilcoxon's signed-rank test and
  the paired t-test on the seeds' final errors; each p-value also
  Holm-corrected across the methods compared in that budget and column.
- ``seed = <s>``: McNemar's exact test on that seed's pairs alone, Holm-corrected
  across the methods for that seed.

Pooled rows need every planned seed of both methods done: a test over the seeds
that happened to finish would be the silent averaging the report refuses.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness import stats
from harness.report_data import ERROR_COLUMNS, hits, parse_column

BASELINE = "baseline"
STATS_COLUMNS = [
    "labels",
    "method",
    "metric",
    "seed",  # a seed, or "all": pooled over every seed
    "seeds",
    "pairs",  # paired examples (images x seeds)
    "only_baseline_right",  # b
    "only_method_right",  # c
    "difference",  # method error - baseline error, points
    "ci_low",
    "ci_high",
    "mcnemar_p",
    "mcnemar_p_holm",
    "baseline_error",  # mean over seeds of the final errors
    "method_error",
    "seed_mean_difference",
    "wilcoxon_p",
    "wilcoxon_p_holm",
    "ttest_p",
    "ttest_p_holm",
    "seeds_better",
]


def _discordant(base: pd.Series, other: pd.Series, key: str) -> tuple[int, int, int] | None:
    """(b, c, n) of one seed's pair of runs, or None if either lacks predictions."""
    part = parse_column(key)[0]
    cell, size = f"hits_{key}", f"n_{part}"
    if cell not in base or not isinstance(base[cell], bytes) or not isinstance(other[cell], bytes):
        return None
    if base[size] != other[size]:
        return None  # not the same images: no pairing (a changed dataset)
    n = int(base[size])
    base_right, other_right = hits(base[cell], n), hits(other[cell], n)
    b = int(np.count_nonzero(base_right & ~other_right))
    c = int(np.count_nonzero(~base_right & other_right))
    return b, c, n


def compare(
    runs: pd.DataFrame, methods: list[str], *, resamples: int = 10000, seed: int = 0
) -> pd.DataFrame:
    """The stats.csv table for ``runs`` (with final_* columns from ``final_errors``)."""
    rows: list[dict] = []
    others = [m for m in methods if m != BASELINE]
    if BASELINE not in set(runs["method"]) or not others:
        return pd.DataFrame(rows, columns=STATS_COLUMNS)
    for labels in runs["labels"].unique():
        block = runs[runs["labels"] == labels]
        base = block[block["method"] == BASELINE].set_index("seed")
        for key, _ in ERROR_COLUMNS:
            family: list[dict] = []
            for method in others:
                mine = block[block["method"] == method].set_index("seed")
                if mine.empty:
                    continue
                family += _method_rows(labels, method, key, base, mine, resamples, seed)
            _add_holm(family)
            rows += family
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def _method_rows(
    labels: str,
    method: str,
    key: str,
    base: pd.DataFrame,
    mine: pd.DataFrame,
    resamples: int,
    seed: int,
) -> list[dict]:
    head = {"labels": labels, "method": method, "metric": key}
    rows = []
    pooled = [0, 0, 0]
    seeds = sorted(set(base.index) & set(mine.index))
    complete = all(base.loc[s, "status"] == "done" == mine.loc[s, "status"] for s in seeds)
    complete = complete and set(base.index) == set(mine.index)
    for s in seeds:
        if base.loc[s, "status"] != "done" or mine.loc[s, "status"] != "done":
            continue
        counts = _discordant(base.loc[s], mine.loc[s], key)
        if counts is None:
            complete = False
            continue
        b, c, n = counts
        pooled = [pooled[0] + b, pooled[1] + c, pooled[2] + n]
        rows.append(
            head
            | {"seed": str(s), "seeds": 1, "pairs": n, "only_baseline_right": b}
            | {"only_method_right": c, "difference": 100.0 * (b - c) / n}
            | {"mcnemar_p": stats.mcnemar_p(b, c)}
        )
    if not complete or not seeds:
        return rows
    b, c, n = pooled
    diff, low, high = stats.paired_bootstrap_ci(b, c, n, resamples=resamples, seed=seed)
    final = f"final_{key}"
    across = stats.across_seeds(
        base.loc[seeds, final].to_numpy(), mine.loc[seeds, final].to_numpy()
    )
    rows.append(
        head
        | {"seed": "all", "seeds": len(seeds), "pairs": n, "only_baseline_right": b}
        | {"only_method_right": c, "difference": diff, "ci_low": low, "ci_high": high}
        | {"mcnemar_p": stats.mcnemar_p(b, c)}
        | {
            "baseline_error": float(base.loc[seeds, final].mean()),
            "method_error": float(mine.loc[seeds, final].mean()),
            "seed_mean_difference": across["mean_difference"],
            "wilcoxon_p": across["wilcoxon_p"],
            "ttest_p": across["ttest_p"],
            "seeds_better": int((mine.loc[seeds, final] < base.loc[seeds, final]).sum()),
        }
    )
    return rows


def _add_holm(family: list[dict]) -> None:
    """Holm within each (seed) group of one budget and column, for each test."""
    for group in {row["seed"] for row in family}:
        members = [row for row in family if row["seed"] == group]
        for test in ("mcnemar_p", "wilcoxon_p", "ttest_p"):
            if test not in members[0]:
                continue
            values = [row.get(test, math.nan) for row in members]
            for row, adjusted in zip(members, stats.holm(values), strict=True):
                row[f"{test}_holm"] = adjusted
