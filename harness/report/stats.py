"""Paired comparisons of a method against the baseline (DESIGN, "Statistics").

Per split and seed the two runs classify the same images, so every test is
paired. **The seed is the unit of replication**: a method is "different" when
its error differs from the baseline's by more than the seed-to-seed (training)
variance explains, so the table's marks and the summary's verdicts come from
``paired_t`` on the per-seed error differences. ``hierarchical_bootstrap``
(seeds, then images) and Wilcoxon's signed-rank test (``across_seeds``) measure
the same thing, but with few seeds the first rejects too often and the second
cannot reject at all (``smallest_p``, ``seeds_needed``);
``benchmarks/bench_stats_null.py`` simulates both sides of that choice.

McNemar's exact test and ``paired_bootstrap_ci`` on the per-example pairs are
**conditional on the trained models**: they treat the same val image under
three seeds as three independent observations and leave training variance out,
so they answer "do these particular models differ", not "does the method
differ"; the report keeps them in ``stats.csv`` under that label. Holm's
step-down correction is applied across the methods compared. scipy does the
arithmetic; Holm (absent from scipy) and the bootstraps' multinomial shortcut
are written here.
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
    cells = [b / n, c / n, max(0.0, 1.0 - (b + c) / n)]
    # the distribution's rvs, not a frozen one: freezing formats its docstring, which
    # costs more than the draws (the draws are the same)
    draws = stats.multinomial.rvs(
        n, cells, size=resamples, random_state=np.random.default_rng(seed)
    )
    differences = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(differences, [tail, 100.0 - tail])
    return 100.0 * (b - c) / n, float(low), float(high)


def across_seeds(baseline: np.ndarray, method: np.ndarray) -> dict[str, np.ndarray | float]:
    """Paired tests over seeds (the last axis) of one error metric: Wilcoxon
    signed-rank and paired t; 2-D inputs test each row.

    With fewer than two seeds the p-values are nan: there is nothing to test, and
    saying so beats a made-up 1.0 (the report says it in words). All differences
    zero give p = 1, as in ``paired_t``: the data sit on the null, and a nan would
    drop the method from Holm's family and shrink the others' correction.
    """
    baseline, method = np.asarray(baseline, float), np.asarray(method, float)
    diff = method - baseline
    seeds = diff.shape[-1]
    mean = diff.mean(axis=-1) if seeds else np.full(diff.shape[:-1], np.nan)
    testable = (np.any(diff != 0, axis=-1)) & (seeds >= 2)
    wilcoxon = np.full(diff.shape[:-1], np.nan if seeds < 2 else 1.0)
    ttest = wilcoxon.copy()
    if np.any(testable):
        rows = (testable,) if diff.ndim > 1 else ()
        wilcoxon[rows] = stats.wilcoxon(method[rows], baseline[rows], axis=-1).pvalue
        ttest[rows] = stats.ttest_rel(method[rows], baseline[rows], axis=-1).pvalue
    out = {"mean_difference": mean, "wilcoxon_p": wilcoxon, "ttest_p": ttest}
    return {k: float(v) for k, v in out.items()} if diff.ndim == 1 else out


def paired_t(differences, *, confidence: float = 0.95) -> dict[str, np.ndarray | float]:
    """The paired t-test across seeds: the mean of the per-seed error differences
    (the last axis; 2-D inputs test each row), its t-based CI and two-sided p.

    Why this test drives the marks: a seed's error difference already averages
    over thousands of images, so it is close to normal, and its spread across
    seeds is the training variance that per-example tests leave out. Student's t
    with seeds - 1 degrees of freedom is exact for normal differences at any
    number of seeds (``benchmarks/bench_stats_null.py`` measures its
    false-positive rate at 3 and 5 seeds), and it can reach any p from 2 seeds
    on. A linear mixed model with a random seed effect is the same test here:
    every seed scores the same val images, so the design is balanced and its
    REML F-test of the method effect is this t squared.

    With fewer than two seeds p and the CI are nan: nothing to test (the report
    says so in words). Equal differences are the limits of t: p = 0 when nonzero
    (t is infinite, as ``scipy.stats.ttest_rel`` gives), p = 1 and a CI of [0, 0]
    when all are zero (the data sit on the null; scipy's nan would drop the method
    from Holm's family and so shrink the others' correction).
    """
    d = np.asarray(differences, dtype=float)
    seeds, shape = d.shape[-1], d.shape[:-1]
    mean = d.mean(axis=-1) if seeds else np.full(shape, np.nan)
    p = low = high = np.full(shape, np.nan)
    if seeds >= 2:
        se = d.std(axis=-1, ddof=1) / np.sqrt(seeds)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(mean) / se
        p = np.where(np.all(d == 0, axis=-1), 1.0, 2.0 * stats.t.sf(t, seeds - 1))
        half = stats.t.ppf(0.5 + confidence / 2, seeds - 1) * se
        low, high = mean - half, mean + half
    out = {"mean_difference": mean, "ci_low": low, "ci_high": high, "p": p}
    return {k: float(v) for k, v in out.items()} if d.ndim == 1 else out


def hierarchical_bootstrap(
    only_baseline_right,
    only_method_right,
    pairs,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    resample_seeds: bool = True,
) -> dict[str, np.ndarray | float]:
    """Two-level paired bootstrap of the error difference: seeds with replacement,
    then each drawn seed's val images with replacement. The inputs are per-seed
    discordant counts b, c and pair counts n on the last axis (leading axes:
    independent comparisons, all resampled at once).

    Returns the pooled difference 100 (sum b - sum c) / sum n in points, its
    percentile CI and the two-sided bootstrap p = 2 min(P*(d <= 0), P*(d >= 0)),
    each count + 1 over resamples + 1, so the smallest p is 2 / (resamples + 1).

    Counts suffice: resampling a seed's n image pairs only changes how many land
    in each (baseline right?, method right?) cell, so a drawn seed costs two
    binomial draws (b* ~ Bin(n, b/n), then c* ~ Bin(n - b*, c/(n - b))) whatever
    n is, as in ``paired_bootstrap_ci``; ImageNet's 50,000 images cost nothing.

    Why it does not drive the marks: k resampled seeds spread by (k-1)/k of the
    seeds' variance, and percentiles stand in for Student's t with k-1 degrees of
    freedom, so with few seeds it rejects a true null far more often than alpha
    (``benchmarks/bench_stats_null.py``). With one seed there is no seed level to
    resample: p and the CI are nan. ``resample_seeds=False`` keeps every seed and
    resamples images only: the bootstrap conditional on the trained models (the
    pooled ``paired_bootstrap_ci``, stratified by seed), for the benchmark.
    """
    counts = (only_baseline_right, only_method_right, pairs)
    b, c, n = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in counts))
    if np.any((b < 0) | (c < 0) | (b + c > n) | (n <= 0)):
        raise ValueError("need 0 <= b, 0 <= c, b + c <= n and n > 0 for every seed")
    shape, seeds = b.shape[:-1], b.shape[-1]
    difference = 100.0 * (b - c).sum(axis=-1) / np.maximum(n.sum(axis=-1), 1)
    out = {"difference": difference, "ci_low": np.full(shape, np.nan)}
    out |= {"ci_high": out["ci_low"], "p": out["ci_low"]}
    if seeds >= (2 if resample_seeds else 1):
        rng = np.random.default_rng(seed)
        flat = [x.reshape(-1, seeds) for x in (b, c, n)]
        draws = _two_level_draws(*flat, resamples, rng, resample_seeds)
        tail = 100.0 * (1.0 - confidence) / 2.0
        low, high = np.percentile(draws, [tail, 100.0 - tail], axis=-1)
        fewer = np.minimum((draws <= 0).sum(axis=-1), (draws >= 0).sum(axis=-1)) + 1
        p = np.minimum(1.0, 2.0 * fewer / (resamples + 1))
        out |= {"ci_low": low.reshape(shape), "ci_high": high.reshape(shape)}
        out["p"] = p.reshape(shape)
    return {k: float(v) for k, v in out.items()} if b.ndim == 1 else out


def _two_level_draws(b, c, n, resamples, rng, resample_seeds, budget=2_000_000):
    """(rows, resamples) bootstrap differences in points from (rows, seeds) counts;
    rows go in chunks of at most ``budget`` (row, resample, seed) draws."""
    rows, seeds = b.shape
    out = np.empty((rows, resamples))
    step = max(1, budget // (resamples * seeds))
    for start in range(0, rows, step):
        part = slice(start, start + step)
        size = (len(b[part]), resamples, seeds)
        if resample_seeds:
            pick = rng.integers(0, seeds, size=size)
            bb, cc, nn = (np.take_along_axis(x[part, None, :], pick, axis=-1) for x in (b, c, n))
        else:
            bb, cc, nn = (np.broadcast_to(x[part, None, :], size) for x in (b, c, n))
        b_star = rng.binomial(nn, bb / nn)
        rest = nn - bb
        given = np.divide(cc, rest, out=np.zeros(size), where=rest > 0)  # P(c | not b)
        c_star = rng.binomial(nn - b_star, given)
        out[part] = 100.0 * (b_star - c_star).sum(axis=-1) / nn.sum(axis=-1)
    return out


SEED_TESTS = ("ttest", "wilcoxon", "hierarchical_bootstrap")


def smallest_p(test: str, seeds: int, *, resamples: int = 2000) -> float:
    """The smallest two-sided p ``test`` (one of ``SEED_TESTS``) can return with
    ``seeds`` seeds, whatever the data; nan where it cannot test at all.

    - ``ttest``: 0 from 2 seeds on (t is unbounded); nan with fewer.
    - ``wilcoxon``: the exact signed-rank p is 2 / 2^n (every difference of one
      sign): 0.25 with 3 seeds, 0.0625 with 5; nan with fewer than 2
      (``across_seeds`` does not test one seed).
    - ``hierarchical_bootstrap``: 2 / (resamples + 1) from 2 seeds on (the count
      + 1 rule); nan with one seed (nothing to resample). Reaching it needs every
      seed on one side: a resample that draws only a given seed has probability
      k^-k, so one seed of the other sign keeps p above about 2 k^-k (0.07 with
      3 seeds).
    """
    if test == "ttest":
        return 0.0 if seeds >= 2 else float("nan")
    if test == "wilcoxon":
        return 2.0 / 2.0**seeds if seeds >= 2 else float("nan")
    if test == "hierarchical_bootstrap":
        return 2.0 / (resamples + 1) if seeds >= 2 else float("nan")
    raise ValueError(f"unknown test {test!r}; one of {SEED_TESTS}")


def seeds_needed(
    test: str, alpha: float, methods: int = 1, *, resamples: int = 2000, most: int = 64
) -> int | None:
    """The fewest seeds with which ``test`` can give a Holm-corrected p < ``alpha``
    when ``methods`` methods are compared (Holm multiplies the smallest p by the
    family size), or None if no seed count up to ``most`` can (a bootstrap with
    too few resamples). With m methods the Wilcoxon test needs 2m / 2^n < alpha:
    6 seeds for one method at 0.05, 7 for two, 8 for six.
    """
    for seeds in range(1, most + 1):
        if methods * smallest_p(test, seeds, resamples=resamples) < alpha:
            return seeds
    return None


def holm(p_values, groups=None) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order,
    within each family of equal ``groups`` labels (one family if None).

    Sorted ascending, the i-th (from 0) of a family of m is multiplied by (m - i),
    a running maximum keeps them monotone, and each is capped at 1. nan stays nan
    and does not count toward m. Vectorized with pandas so that the report can
    correct thousands of small families (one per budget, column and seed) at once.
    """
    p = pd.Series(np.asarray(p_values, dtype=float))
    # families as integer codes: the report's labels are strings, and sorting 50,000
    # of them costs more than the correction; the adjusted values do not change
    family = pd.Series(
        np.zeros(len(p), int) if groups is None else pd.factorize(np.asarray(groups))[0]
    )
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
