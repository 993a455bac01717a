"""The paired statistics (harness.report.stats) against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.report.stats import (
    across_seeds,
    hierarchical_bootstrap,
    holm,
    mcnemar_exact,
    mcnemar_p,
    paired_bootstrap_ci,
    paired_t,
    seeds_needed,
    smallest_p,
)


def pairs(both: int, only_baseline: int, only_method: int, neither: int):
    baseline = [True] * both + [True] * only_baseline + [False] * only_method + [False] * neither
    method = [True] * both + [False] * only_baseline + [True] * only_method + [False] * neither
    return np.array(baseline), np.array(method)


@pytest.mark.parametrize(
    "b, c, expected",
    [
        (0, 5, 2 * 0.5**5),  # all five discordant pairs one way: 2 * (1/2)^5 = 0.0625
        (1, 9, 2 * (1 + 10) / 2**10),  # 2 * P(X <= 1), X ~ Bin(10, 1/2) = 22/1024
        (3, 3, 1.0),  # balanced
        (0, 0, 1.0),  # no discordant pairs: nothing to test
    ],
)
def test_mcnemar_exact_matches_the_binomial_by_hand(b, c, expected):
    baseline, method = pairs(40, b, c, 7)
    result = mcnemar_exact(baseline, method)
    assert (result.only_baseline_right, result.only_method_right) == (b, c)
    assert result.p_value == pytest.approx(expected, rel=1e-12)


def test_mcnemar_textbook_example():
    # Fagerland, Lydersen & Laake (2013), BMC Med. Res. Methodol. 13:91, Table 1:
    # airway hyper-responsiveness before/after stem-cell transplantation, 21 patients,
    # discordant pairs 1 and 7; they give the exact conditional p-value as 0.070
    # (= 2 * 9/256 = 0.0703)
    assert mcnemar_p(1, 7) == pytest.approx(0.0703, abs=5e-5)
    assert mcnemar_exact(*pairs(1, 1, 7, 12)).p_value == mcnemar_p(1, 7)


def test_mcnemar_ignores_concordant_pairs_and_checks_shapes():
    assert (
        mcnemar_exact(*pairs(10, 1, 9, 0)).p_value == mcnemar_exact(*pairs(500, 1, 9, 80)).p_value
    )
    with pytest.raises(ValueError, match="same shape"):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


def test_paired_bootstrap_ci_brackets_the_difference_and_is_seeded():
    # the method fixes 100 of the baseline's 600 errors out of 2000: -5 points
    diff, low, high = paired_bootstrap_ci(0, 100, 2000, resamples=1000)
    assert diff == pytest.approx(-5.0)
    assert low < diff < high < 0  # pairing makes this clear-cut
    assert paired_bootstrap_ci(0, 100, 2000, resamples=1000) == (diff, low, high)
    assert paired_bootstrap_ci(0, 0, 500, resamples=200) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        paired_bootstrap_ci(5, 6, 10)


@pytest.mark.parametrize("b, c, n", [(40, 25, 600), (3, 11, 200), (120, 80, 5000)])
def test_paired_bootstrap_ci_agrees_with_scipy_bootstrap_on_the_examples(b, c, n):
    from scipy import stats

    baseline, method = pairs(n // 2, b, c, n - n // 2 - b - c)
    expanded = stats.bootstrap(
        (~method, ~baseline),  # errors
        lambda m, e, axis=-1: 100.0 * (m.mean(axis=axis) - e.mean(axis=axis)),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    diff, low, high = paired_bootstrap_ci(b, c, n, resamples=20000, seed=4)
    assert diff == pytest.approx(100.0 * (b - c) / n)
    # two Monte-Carlo estimates of the same percentiles: equal up to sampling noise
    step = 100.0 / n  # the resampled difference moves in steps of 1/n
    assert low == pytest.approx(expanded.low, abs=2 * step + 0.05 * (high - low))
    assert high == pytest.approx(expanded.high, abs=2 * step + 0.05 * (high - low))


def test_across_seeds_uses_wilcoxon_and_paired_t():
    baseline = np.array([30.0, 31.0, 29.5, 30.5, 32.0])
    method = baseline - np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = across_seeds(baseline, method)
    assert out["mean_difference"] == pytest.approx(-3.0)
    # five differences all of one sign: exact two-sided p = 2 / 2^5
    assert out["wilcoxon_p"] == pytest.approx(2 / 32)
    # t = mean / (sd / sqrt(n)) = -3 / (sqrt(2.5) / sqrt(5)), 4 degrees of freedom
    from scipy import stats

    t = -3.0 / (math.sqrt(2.5) / math.sqrt(5))
    assert out["ttest_p"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
    single = across_seeds(np.array([30.0]), np.array([29.0]))
    assert math.isnan(single["wilcoxon_p"]) and math.isnan(single["ttest_p"])


def test_holm_step_down_by_hand():
    # sorted 0.01, 0.02, 0.04 (m = 3): 0.03, 0.04, max(0.04, 0.04) = 0.04
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # running maximum keeps order; capped at 1
    assert holm([0.001, 0.5, 0.3]) == pytest.approx([0.003, 0.6, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, float("nan"), 0.02])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])


def test_vectorized_forms_equal_scipy_and_the_one_family_forms():
    from scipy import stats

    b, c = np.meshgrid(np.arange(0, 40, 3), np.arange(0, 40, 4))
    expected = [
        1.0 if x + y == 0 else stats.binomtest(x, x + y, 0.5).pvalue
        for x, y in zip(b.ravel(), c.ravel(), strict=True)
    ]
    assert mcnemar_p(b.ravel(), c.ravel()) == pytest.approx(expected, rel=1e-9)
    p = [0.04, 0.01, 0.02, 0.5, 0.001, float("nan"), 0.3]
    groups = ["a", "a", "a", "b", "b", "b", "a"]
    grouped = holm(p, groups=groups)
    by_hand = holm([0.04, 0.01, 0.02, 0.3]), holm([0.5, 0.001, float("nan")])
    assert grouped[:3] + grouped[6:] == pytest.approx(by_hand[0])
    assert grouped[3:5] == pytest.approx(by_hand[1][:2]) and math.isnan(grouped[5])
    rng = np.random.default_rng(0)
    base, method = rng.random((4, 6)), rng.random((4, 6))
    method[2] = base[2]  # all differences zero: p = 1 (on the null exactly)
    rows = across_seeds(base, method)
    for i in range(4):
        one = across_seeds(base[i], method[i])
        for key in ("mean_difference", "wilcoxon_p", "ttest_p"):
            assert rows[key][i] == pytest.approx(one[key], nan_ok=True)
    assert rows["ttest_p"][2] == rows["wilcoxon_p"][2] == 1.0


def test_paired_t_matches_scipy_ttest_rel_and_its_confidence_interval():
    from scipy import stats

    rng = np.random.default_rng(5)
    for seeds in (2, 3, 5, 10):
        baseline = 30 + rng.normal(0, 1, (6, seeds))
        method = baseline + rng.normal(-0.5, 1, (6, seeds))
        out = paired_t(method - baseline)
        reference = stats.ttest_rel(method, baseline, axis=-1)
        ci = reference.confidence_interval(0.95)
        assert out["p"] == pytest.approx(reference.pvalue, rel=1e-9)
        assert out["ci_low"] == pytest.approx(ci.low, rel=1e-9)
        assert out["ci_high"] == pytest.approx(ci.high, rel=1e-9)
        assert out["mean_difference"] == pytest.approx((method - baseline).mean(axis=-1))
        one = paired_t(method[0] - baseline[0], confidence=0.9)
        ci90 = stats.ttest_rel(method[0], baseline[0]).confidence_interval(0.9)
        assert (one["ci_low"], one["ci_high"]) == pytest.approx((ci90.low, ci90.high))
        assert one["p"] == pytest.approx(out["p"][0])


def test_paired_t_edge_cases_one_seed_zero_and_constant_differences():
    single = paired_t(np.array([-2.0]))
    assert single["mean_difference"] == -2.0
    assert all(math.isnan(single[k]) for k in ("p", "ci_low", "ci_high"))
    zero = paired_t(np.zeros(3))  # on the null exactly: p = 1, not scipy's nan
    assert (zero["p"], zero["ci_low"], zero["ci_high"]) == (1.0, 0.0, 0.0)
    constant = paired_t(np.full(3, -1.5))  # t is infinite, as scipy says
    assert constant["p"] == 0.0 and constant["ci_low"] == constant["ci_high"] == -1.5
    rows = paired_t(np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]]))
    assert rows["p"][0] == 1.0 and 0 < rows["p"][1] < 1


def two_level_reference(b, c, n, resamples, rng):
    """The bootstrap by its definition, on per-example arrays: draw seeds with
    replacement, then each drawn seed's image pairs with replacement."""
    seeds = len(b)
    examples = []  # per seed: +1 where only the baseline is right, -1 only the method
    for bs, cs, ns in zip(b, c, n, strict=True):
        examples.append(np.r_[np.ones(bs), -np.ones(cs), np.zeros(ns - bs - cs)])
    out = np.empty(resamples)
    for r in range(resamples):
        picked = rng.integers(0, seeds, seeds)
        total = sum(rng.choice(examples[s], n[s]).sum() for s in picked)
        out[r] = 100.0 * total / sum(n[s] for s in picked)
    return out


def test_hierarchical_bootstrap_matches_resampling_seeds_then_images():
    b, c, n = [30, 12, 25], [10, 20, 5], [400, 400, 400]
    out = hierarchical_bootstrap(b, c, n, resamples=4000, seed=1)
    assert out["difference"] == pytest.approx(100.0 * (67 - 35) / 1200)
    reference = two_level_reference(b, c, n, 4000, np.random.default_rng(2))
    low, high = np.percentile(reference, [2.5, 97.5])
    # two Monte-Carlo estimates of the same percentiles: equal up to sampling noise
    assert out["ci_low"] == pytest.approx(low, abs=0.08 * (high - low))
    assert out["ci_high"] == pytest.approx(high, abs=0.08 * (high - low))
    p = 2 * min(np.mean(reference <= 0), np.mean(reference >= 0))
    assert out["p"] == pytest.approx(p, abs=0.02)


def test_hierarchical_bootstrap_is_seeded_vectorized_and_checks_its_inputs():
    b = np.array([[30, 12, 25], [5, 6, 7]])
    c = np.array([[10, 20, 5], [5, 6, 7]])
    first = hierarchical_bootstrap(b, c, 400, resamples=500, seed=3)
    again = hierarchical_bootstrap(b, c, 400, resamples=500, seed=3)
    other = hierarchical_bootstrap(b, c, 400, resamples=500, seed=4)
    for key in first:
        assert np.array_equal(first[key], again[key]) and first[key].shape == (2,)
    assert not np.array_equal(first["ci_low"], other["ci_low"])
    assert first["ci_low"][1] < 0 < first["ci_high"][1]  # no difference in any seed
    # every seed far apart: the smallest p the count + 1 rule allows
    strong = hierarchical_bootstrap([0, 0, 0], [100, 90, 110], [1000] * 3, resamples=999)
    assert strong["p"] == pytest.approx(2 / 1000) and strong["ci_high"] < 0
    one = hierarchical_bootstrap([3], [9], [100])  # no seed level: nothing to test
    assert math.isnan(one["p"]) and math.isnan(one["ci_low"])
    assert one["difference"] == pytest.approx(-6.0)
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        hierarchical_bootstrap([5, 1], [6, 1], [10, 10])


def test_images_only_bootstrap_is_the_conditional_paired_bootstrap():
    # one seed, images resampled only: the distribution paired_bootstrap_ci samples
    out = hierarchical_bootstrap([40], [25], [600], resamples=20000, resample_seeds=False)
    diff, low, high = paired_bootstrap_ci(40, 25, 600, resamples=20000, seed=7)
    assert out["difference"] == pytest.approx(diff)
    assert out["ci_low"] == pytest.approx(low, abs=2 * 100 / 600)
    assert out["ci_high"] == pytest.approx(high, abs=2 * 100 / 600)


@pytest.mark.parametrize("seeds", [2, 3, 4, 5, 6, 7])
def test_smallest_wilcoxon_p_is_what_scipy_gives_for_one_sign(seeds):
    from scipy import stats

    differences = -np.arange(1.0, seeds + 1)
    exact = stats.wilcoxon(differences).pvalue
    assert smallest_p("wilcoxon", seeds) == pytest.approx(exact)
    assert across_seeds(np.zeros(seeds), differences)["wilcoxon_p"] == pytest.approx(exact)


def test_reachability_of_each_test_and_the_seeds_it_needs():
    assert smallest_p("wilcoxon", 3) == 0.25 and smallest_p("wilcoxon", 5) == 0.0625
    assert math.isnan(smallest_p("wilcoxon", 1))  # across_seeds does not test one seed
    # Holm multiplies the smallest p by the family size: 2m / 2^n < 0.05
    assert [seeds_needed("wilcoxon", 0.05, m) for m in (1, 2, 6)] == [6, 7, 8]
    assert seeds_needed("wilcoxon", 0.01) == 8  # 2 / 2^8 = 0.0078
    assert math.isnan(smallest_p("ttest", 1)) and smallest_p("ttest", 2) == 0.0
    assert seeds_needed("ttest", 0.05, 6) == 2
    assert smallest_p("hierarchical_bootstrap", 3, resamples=1999) == pytest.approx(0.001)
    assert math.isnan(smallest_p("hierarchical_bootstrap", 1))
    assert seeds_needed("hierarchical_bootstrap", 0.05, 6, resamples=2000) == 2
    assert seeds_needed("hierarchical_bootstrap", 0.05, 6, resamples=50) is None
    with pytest.raises(ValueError, match="unknown test"):
        smallest_p("sign", 3)
