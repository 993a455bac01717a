"""Paired comparisons of a method against the baseline (DESIGN, "Statistics").

Per split and seed the two runs classify the same images, so the tests are
paired: McNemar's exact test on per-example correctness and a paired bootstrap
CI of the error difference, both functions of the discordant-pair counts (b:
only the baseline right, c: only the method right, of n pairs); across seeds,
Wilcoxon's signed-rank test with the paired t-test beside it; Holm's step-down
correction across the methods compared. scipy does the arithmetic; only Holm
(absent from scipy) is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class McNemar:
    only_baseline_right: int  # b: the baseline right, the method wrong
    only_method_right: int  # c: the method right, the baseline wrong
    p_value: float


def mcnemar_exact(baseline_correct: np.ndarray, method_correct: np.ndarray) -> McNemar:
    """Exact (binomial) McNemar test on paired per-example correctness."""
    baseline_correct = np.asarray(baseline_correct, dtype=bool)
    method_correct = np.asarray(method_correct, dtype=bool)
    if baseline_correct.shape != method_correct.shape:
        raise ValueError("paired correctness arrays must have the same shape")
    b = int(np.sum(baseline_correct & ~method_correct))
    c = int(np.sum(~baseline_correct & method_correct))
    return McNemar(b, c, mcnemar_p(b, c))


def mcnemar_p(only_baseline_right, only_method_right):
    """Under the null the discordant pairs split 50/50: p is the two-sided binomial
    test of b successes in b + c trials (1.0 when there are none).

    For p = 1/2 the binomial is symmetric, so scipy's two-sided ``binomtest`` p
    is min(1, 2 P(X <= min(b, c))); written with ``binom.cdf`` it takes arrays,
    and the report tests every seed of every method at once (the tests check
    it equals ``binomtest``).
    """
    b, c = np.asarray(only_baseline_right), np.asarray(only_method_right)
    p = np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(b, c), b + c, 0.5))
    p = np.where(b + c == 0, 1.0, p)
    return float(p) if p.ndim == 0 else p


def paired_bootstrap_ci(
    only_baseline_right: int,
    only_method_right: int,
    pairs: int,
    *,
    confidence: float = 0.95,
    resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(difference, low, high): the error rate of the method minus the baseline's, in
    percentage points, with a paired percentile bootstrap CI over examples.

    Resampling n pairs with replacement only changes how many land in each of the
    four (baseline right?, method right?) cells, and the difference is (b - c) / n;
    so the resampled cell counts are drawn from scipy's multinomial directly. This is
    the same distribution ``scipy.stats.bootstrap(..., paired=True)`` samples (the
    tests check the two agree) at a cost that does not grow with n, which matters at
    ImageNet's 50,000 val images times seeds times 10,000 resamples.
    """
    b, c, n = int(only_baseline_right), int(only_method_right), int(pairs)
    if not 0 <= b + c <= n or n == 0:
        raise ValueError(f"need 0 <= b + c <= n and n > 0, got b={b}, c={c}, n={n}")
    cells = stats.multinomial(n, [b / n, c / n, max(0.0, 1.0 - (b + c) / n)])
    draws = cells.rvs(size=resamples, random_state=np.random.default_rng(seed))
    differences = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(differences, [tail, 100.0 - tail])
    return 100.0 * (b - c) / n, float(low), float(high)


def across_seeds(baseline: np.ndarray, method: np.ndarray) -> dict[str, np.ndarray | float]:
    """Paired tests over seeds (the last axis) of one error metric: Wilcoxon
    signed-rank and paired t; 2-D inputs test each row.

    With fewer than two seeds, or all differences zero, the p-values are nan:
    there is nothing to test, and saying so beats a made-up 1.0.
    """
    baseline, method = np.asarray(baseline, float), np.asarray(method, float)
    diff = method - baseline
    seeds = diff.shape[-1]
    mean = diff.mean(axis=-1) if seeds else np.full(diff.shape[:-1], np.nan)
    testable = (np.any(diff != 0, axis=-1)) & (seeds >= 2)
    wilcoxon = np.full(diff.shape[:-1], np.nan)
    ttest = np.full(diff.shape[:-1], np.nan)
    if np.any(testable):
        rows = (testable,) if diff.ndim > 1 else ()
        wilcoxon[rows] = stats.wilcoxon(method[rows], baseline[rows], axis=-1).pvalue
        ttest[rows] = stats.ttest_rel(method[rows], baseline[rows], axis=-1).pvalue
    out = {"mean_difference": mean, "wilcoxon_p": wilcoxon, "ttest_p": ttest}
    return {k: float(v) for k, v in out.items()} if diff.ndim == 1 else out


def holm(p_values, groups=None) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order,
    within each family of equal ``groups`` labels (one family if None).

    Sorted ascending, the i-th (from 0) of a family of m is multiplied by (m - i),
    a running maximum keeps them monotone, and each is capped at 1. nan stays nan
    and does not count toward m. Vectorized with pandas so that the report can
    correct thousands of small families (one per budget, column and seed) at once.
    """
    p = pd.Series(np.asarray(p_values, dtype=float))
    family = pd.Series(np.zeros(len(p), int) if groups is None else list(groups))
    valid = p.notna()
    ordered = pd.DataFrame({"family": family[valid], "p": p[valid]})
    ordered = ordered.sort_values(["family", "p"], kind="stable")
    rank = ordered.groupby("family", sort=False).cumcount()
    size = ordered.groupby("family", sort=False)["p"].transform("size")
    scaled = ((size - rank) * ordered["p"]).clip(upper=1.0)
    adjusted = scaled.groupby(ordered["family"], sort=False).cummax()
    out = pd.Series(np.nan, index=p.index)
    out[adjusted.index] = adjusted
    return out.tolist()
