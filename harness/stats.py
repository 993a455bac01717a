"""Paired comparisons of a method against the baseline (DESIGN, "Statistics").

Per split and seed the two runs classify the same val images, so the tests are
paired: McNemar's exact test on per-example correctness, a paired bootstrap CI
of the error difference; across seeds, Wilcoxon's signed-rank test with the
paired t-test beside it; Holm's step-down correction across the methods
compared. scipy does the arithmetic; only Holm (absent from scipy) is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class McNemar:
    only_baseline_right: int  # b: the baseline right, the method wrong
    only_method_right: int  # c: the method right, the baseline wrong
    p_value: float


def mcnemar_exact(baseline_correct: np.ndarray, method_correct: np.ndarray) -> McNemar:
    """Exact (binomial) McNemar test on paired per-example correctness.

    Under the null the discordant pairs split 50/50: p is the two-sided
    binomial test of b successes in b + c trials (1.0 when there are none).
    """
    baseline_correct = np.asarray(baseline_correct, dtype=bool)
    method_correct = np.asarray(method_correct, dtype=bool)
    if baseline_correct.shape != method_correct.shape:
        raise ValueError("paired correctness arrays must have the same shape")
    b = int(np.sum(baseline_correct & ~method_correct))
    c = int(np.sum(~baseline_correct & method_correct))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return McNemar(b, c, p)


def paired_bootstrap_ci(
    baseline_error: np.ndarray,
    method_error: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(difference, low, high) of the error rate, method minus baseline, in percentage
    points: examples resampled with replacement, both runs together (percentile CI)."""
    baseline_error = np.asarray(baseline_error, dtype=float)
    method_error = np.asarray(method_error, dtype=float)

    def difference(m, b, axis=-1):
        return 100.0 * (m.mean(axis=axis) - b.mean(axis=axis))

    result = stats.bootstrap(
        (method_error, baseline_error),
        difference,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(difference(method_error, baseline_error)), float(low), float(high)


def across_seeds(baseline: np.ndarray, method: np.ndarray) -> dict[str, float]:
    """Paired tests over seeds of one error metric: Wilcoxon signed-rank and paired t.

    With fewer than two seeds, or all differences zero, the p-values are nan:
    there is nothing to test, and saying so beats a made-up 1.0.
    """
    baseline, method = np.asarray(baseline, float), np.asarray(method, float)
    diff = method - baseline
    out = {"mean_difference": float(diff.mean()) if len(diff) else float("nan")}
    if len(diff) < 2 or np.all(diff == 0):
        return out | {"wilcoxon_p": float("nan"), "ttest_p": float("nan")}
    out["wilcoxon_p"] = float(stats.wilcoxon(method, baseline).pvalue)
    out["ttest_p"] = float(stats.ttest_rel(method, baseline).pvalue)
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order.

    Sorted ascending, the i-th (from 0) of m is multiplied by (m - i), a running
    maximum keeps them monotone, and each is capped at 1. nan stays nan and does
    not count toward m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
