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


def _is_bytes(column: pd.Series) -> np.ndarray:
    """Which rows hold packed correctness (a run without predictions holds nan, or
    None once cached)."""
    return np.fromiter((isinstance(v, bytes) for v in column), bool, len(column))


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
        & _is_bytes(pairs[cell])
        & _is_bytes(pairs[f"{cell}_base"])
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
        }
    )
    # the final models' errors: what the per-example tests above compare
    finals = (both[key].to_numpy(float), both[f"{key}_base"].to_numpy(float))
    # pooled only where every planned seed of the pair is usable
    complete = usable.groupby([pairs["labels"], pairs["method"]]).all()
    complete = {k for k, v in complete.items() if v}
    seeds = both["seed"].to_numpy()
    groups = [
        (labels, method, rows[np.argsort(seeds[rows], kind="stable")])
        for (labels, method), rows in per_seed.groupby(
            ["labels", "method"], sort=False
        ).indices.items()
        if (labels, method) in complete
    ]
    pooled = _pooled_rows(key, groups, np.asarray(b), np.asarray(c), n, finals, resamples, seed)
    return per_seed, pooled


def _mean(values: np.ndarray) -> float:
    """The mean of the values that are not nan, as pandas takes it."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


def _pooled_rows(
    key: str,
    groups: list[tuple[str, str, np.ndarray]],
    b: np.ndarray,
    c: np.ndarray,
    n: np.ndarray,
    finals: tuple[np.ndarray, np.ndarray],
    resamples: int,
    seed: int,
) -> pd.DataFrame:
    """One ``seed = all`` row per (labels, method, positions of its seeds in seed
    order): counts summed over the seeds, the conditional bootstrap CI, and the
    tests across seeds on the final errors. Arrays in, one DataFrame out: a
    DataFrame per group costs more than the tests."""
    if not groups:
        return pd.DataFrame()
    final, final_base = finals
    b_sum = np.array([b[rows].sum() for _, _, rows in groups], dtype=np.int64)
    c_sum = np.array([c[rows].sum() for _, _, rows in groups], dtype=np.int64)
    n_sum = np.array([n[rows].sum() for _, _, rows in groups], dtype=np.int64)
    cond = [
        paired_bootstrap_ci(int(bs), int(cs), int(ns), resamples=resamples, seed=seed)
        for bs, cs, ns in zip(b_sum, c_sum, n_sum, strict=True)
    ]
    pooled = pd.DataFrame(
        {
            "labels": [labels for labels, _, _ in groups],
            "method": [method for _, method, _ in groups],
            "metric": key,
            "seed": "all",
            "seeds": np.array([len(rows) for _, _, rows in groups], dtype=np.int64),
            "pairs": n_sum,
            "only_baseline_right": b_sum,
            "only_method_right": c_sum,
            "difference": [diff for diff, _, _ in cond],
            "cond_ci_low": [low for _, low, _ in cond],
            "cond_ci_high": [high for _, _, high in cond],
            "mcnemar_p": mcnemar_p(b_sum, c_sum),
            "baseline_error": [_mean(final_base[rows]) for _, _, rows in groups],
            "method_error": [_mean(final[rows]) for _, _, rows in groups],
            "seeds_better": np.array(
                [(final[rows] < final_base[rows]).sum() for _, _, rows in groups], dtype=np.int64
            ),
        }
    )
    # the seeds' final errors: one paired test per method, all at once per seed count
    for count, rows in pooled.groupby("seeds").indices.items():
        chosen = [groups[i][2] for i in rows]
        base = np.stack([final_base[r] for r in chosen]).reshape(len(rows), count)
        mine = np.stack([final[r] for r in chosen]).reshape(len(rows), count)
        across = across_seeds(base, mine)
        t = paired_t(mine - base)
        index = pooled.index[rows]
        pooled.loc[index, "seed_mean_difference"] = t["mean_difference"]
        pooled.loc[index, "ttest_ci_low"] = t["ci_low"]
        pooled.loc[index, "ttest_ci_high"] = t["ci_high"]
        pooled.loc[index, "ttest_p"] = t["p"]
        pooled.loc[index, "wilcoxon_p"] = across["wilcoxon_p"]
    return pooled
