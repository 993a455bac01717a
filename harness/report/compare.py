"""Every method against the baseline: the rows of ``stats.csv``.

For each label budget and error column, a method is compared with the baseline
run of the same split and seed (same images, so the comparison is paired). The
seed is the unit of replication (``harness.report.stats``):

- ``seed = all`` (every planned seed of both methods done):
  - the test behind the table's marks and the summary's verdicts
    (``MARKS_TEST``): the paired t-test on the seeds' final-model error
    differences: ``seed_mean_difference``, its 95% CI ``ttest_ci_low`` /
    ``ttest_ci_high``, ``ttest_p``; Wilcoxon's signed-rank test on the same
    differences beside it (``wilcoxon_p``; it cannot reach 0.05 with fewer than
    6 seeds, see ``harness.report.stats.seeds_needed``);
  - conditional on the trained models (they ignore training variance, so they
    say whether these models differ, not whether the method does): McNemar's
    exact test on the per-example pairs of all seeds pooled (discordant counts
    ``only_baseline_right`` b, ``only_method_right`` c, ``mcnemar_p``) and the
    paired bootstrap 95% CI over those pooled images (``cond_ci_low`` /
    ``cond_ci_high``);
  - each p also Holm-corrected (``*_holm``) across the methods compared in that
    budget and column.
- ``seed = <s>``: McNemar's exact test on that seed's pairs alone (conditional),
  Holm-corrected across the methods for that seed.

The two-level bootstrap (``harness.report.stats.hierarchical_bootstrap``) is not a
column: with 3 to 5 seeds it rejects a true null two to four times as often as
alpha (``benchmarks/bench_stats_null.py``).

Pooled rows need every planned seed of both methods done: a test over the seeds
that happened to finish would be the silent averaging the report refuses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report.data import ERROR_COLUMNS, parse_column
from harness.report.stats import across_seeds, holm, mcnemar_p, paired_bootstrap_ci, paired_t

BASELINE = "baseline"
# the test behind the marks and verdicts: its columns are f"{MARKS_TEST}_p_holm",
# f"{MARKS_TEST}_ci_low", f"{MARKS_TEST}_ci_high" (benchmarks/bench_stats_null.py)
MARKS_TEST = "ttest"
STATS_COLUMNS = [
    "labels",
    "method",
    "metric",
    "seed",  # a seed, or "all": pooled over every seed
    "seeds",
    "pairs",  # paired examples (images x seeds)
    "baseline_error",  # mean over seeds of the final models' errors (pooled rows)
    "method_error",
    "difference",  # method error - baseline error, points (b - c) / pairs
    # across seeds (the seed is the unit of replication): the marks
    "seed_mean_difference",  # mean of the seeds' final-error differences
    "ttest_ci_low",  # 95% t-based CI of that mean
    "ttest_ci_high",
    "ttest_p",
    "ttest_p_holm",
    "wilcoxon_p",
    "wilcoxon_p_holm",
    "seeds_better",
    # conditional on the trained models (ignore training variance)
    "only_baseline_right",  # b
    "only_method_right",  # c
    "mcnemar_p",
    "mcnemar_p_holm",
    "cond_ci_low",  # paired bootstrap over the pooled val images
    "cond_ci_high",
]


def _discordant(base: pd.Series, other: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) per row from two columns of bit-packed correctness of equal length."""
    b = np.zeros(len(base), np.int64)
    c = np.zeros(len(base), np.int64)
    lengths = base.map(len).to_numpy()
    for length in np.unique(lengths):  # one stacked array per image count
        rows = np.flatnonzero(lengths == length)
        right = np.frombuffer(b"".join(base.iloc[rows]), np.uint8).reshape(len(rows), -1)
        mine = np.frombuffer(b"".join(other.iloc[rows]), np.uint8).reshape(len(rows), -1)
        b[rows] = np.bitwise_count(right & ~mine).sum(axis=1)
        c[rows] = np.bitwise_count(~right & mine).sum(axis=1)
    return b, c


def compare(
    runs: pd.DataFrame, methods: list[str], *, resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """The stats.csv table for ``runs`` (with final_* columns from ``final_errors``)."""
    others = [m for m in methods if m != BASELINE]
    if BASELINE not in set(runs["method"]) or not others:
        return pd.DataFrame([], columns=STATS_COLUMNS)
    base = runs[runs["method"] == BASELINE]
    pairs = runs[runs["method"].isin(others)].merge(
        base, on=["labels", "seed"], how="left", suffixes=("", "_base"), validate="many_to_one"
    )
    frames = []
    for key, _ in ERROR_COLUMNS:
        per_seed, pooled = _column_rows(pairs, key, resamples, seed)
        frames += [per_seed, pooled]
    frames = [f for f in frames if len(f)]
    if not frames:  # nothing done yet, or no per-example predictions to pair
        return pd.DataFrame([], columns=STATS_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    family = out["labels"] + "/" + out["metric"] + "/" + out["seed"]
    for test in ("mcnemar_p", "wilcoxon_p", "ttest_p"):
        out[f"{test}_holm"] = holm(out[test], groups=family)
    # plan order: budgets as listed, columns as in the table, seeds as numbers, pooled last
    budgets = {b: i for i, b in enumerate(runs["labels"].unique())}
    metrics = {key: i for i, (key, _) in enumerate(ERROR_COLUMNS)}
    order = {m: i for i, m in enumerate(methods)}
    out = out.assign(
        _b=out["labels"].map(budgets),
        _k=out["metric"].map(metrics),
        _s=pd.to_numeric(out["seed"], errors="coerce").fillna(np.inf),
        _m=out["method"].map(order),
    )
    out = out.sort_values(["_b", "_k", "_s", "_m"], kind="stable")
    return out.reindex(columns=STATS_COLUMNS).reset_index(drop=True)


def _column_rows(
    pairs: pd.DataFrame, key: str, resamples: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-seed and pooled rows of one error column."""
    part = parse_column(key)[0]
    cell, size = f"hits_{key}", f"n_{part}"
    if cell not in pairs or f"{cell}_base" not in pairs:
        return pd.DataFrame(), pd.DataFrame()
    usable = (
        (pairs["status"] == "done")
        & (pairs["status_base"] == "done")
        & pairs[cell].map(lambda v: isinstance(v, bytes))
        & pairs[f"{cell}_base"].map(lambda v: isinstance(v, bytes))
        & (pairs[size] == pairs[f"{size}_base"])  # the same images, or no pairing
    )
    both = pairs[usable]
    b, c = _discordant(both[f"{cell}_base"], both[cell]) if len(both) else ([], [])
    n = both[size].to_numpy(dtype=np.int64)
    per_seed = pd.DataFrame(
        {
            "labels": both["labels"],
            "method": both["method"],
            "metric": key,
            "seed": both["seed"].astype(str),
            "seeds": 1,
            "pairs": n,
            "only_baseline_right": b,
            "only_method_right": c,
            "difference": 100.0 * (np.asarray(b) - np.asarray(c)) / np.maximum(n, 1),
            "mcnemar_p": mcnemar_p(b, c) if len(both) else [],
            # the final models' errors: what the per-example tests above compare
            "_final": both[key].to_numpy(float),
            "_final_base": both[f"{key}_base"].to_numpy(float),
        }
    )
    # pooled only where every planned seed of the pair is usable
    complete = usable.groupby([pairs["labels"], pairs["method"]]).all()
    complete = {k for k, v in complete.items() if v}
    pooled_rows = []
    for (labels, method), group in per_seed.groupby(["labels", "method"], sort=False):
        if (labels, method) not in complete:
            continue
        group = group.sort_values("seed", key=lambda s: s.astype(int))
        b_sum, c_sum, n_sum = (
            int(group[k].sum()) for k in ("only_baseline_right", "only_method_right", "pairs")
        )
        diff, low, high = paired_bootstrap_ci(b_sum, c_sum, n_sum, resamples=resamples, seed=seed)
        pooled_rows.append(
            {
                "labels": labels,
                "method": method,
                "metric": key,
                "seed": "all",
                "seeds": len(group),
                "pairs": n_sum,
                "only_baseline_right": b_sum,
                "only_method_right": c_sum,
                "difference": diff,
                "cond_ci_low": low,
                "cond_ci_high": high,
                "mcnemar_p": mcnemar_p(b_sum, c_sum),
                "baseline_error": group["_final_base"].mean(),
                "method_error": group["_final"].mean(),
                "seeds_better": int((group["_final"] < group["_final_base"]).sum()),
                "_final": group["_final"].to_numpy(),
                "_final_base": group["_final_base"].to_numpy(),
            }
        )
    pooled = pd.DataFrame(pooled_rows)
    if len(pooled):
        # the seeds' final errors: one paired test per method, all at once per seed count
        for rows in pooled.groupby("seeds").groups.values():
            base = np.stack(pooled.loc[rows, "_final_base"].to_list())
            mine = np.stack(pooled.loc[rows, "_final"].to_list())
            across = across_seeds(base, mine)
            t = paired_t(mine - base)
            pooled.loc[rows, "seed_mean_difference"] = t["mean_difference"]
            pooled.loc[rows, "ttest_ci_low"] = t["ci_low"]
            pooled.loc[rows, "ttest_ci_high"] = t["ci_high"]
            pooled.loc[rows, "ttest_p"] = t["p"]
            pooled.loc[rows, "wilcoxon_p"] = across["wilcoxon_p"]
    return per_seed.drop(columns=["_final", "_final_base"]), pooled.drop(
        columns=["_final", "_final_base"], errors="ignore"
    )
