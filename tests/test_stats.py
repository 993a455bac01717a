"""The paired statistics (harness.stats) against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats import across_seeds, holm, mcnemar_exact, mcnemar_p, paired_bootstrap_ci


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
    method[2] = base[2]  # all differences zero: nan
    rows = across_seeds(base, method)
    for i in range(4):
        one = across_seeds(base[i], method[i])
        for key in ("mean_difference", "wilcoxon_p", "ttest_p"):
            assert rows[key][i] == pytest.approx(one[key], nan_ok=True)
    assert math.isnan(rows["ttest_p"][2])
