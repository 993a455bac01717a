"""The paired statistics (harness.stats) against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats import across_seeds, holm, mcnemar_exact, paired_bootstrap_ci


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


def test_mcnemar_ignores_concordant_pairs_and_checks_shapes():
    assert (
        mcnemar_exact(*pairs(10, 1, 9, 0)).p_value == mcnemar_exact(*pairs(500, 1, 9, 80)).p_value
    )
    with pytest.raises(ValueError, match="same shape"):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


def test_paired_bootstrap_ci_brackets_the_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    baseline = rng.random(2000) < 0.30  # errors
    method = baseline.copy()
    flip = rng.choice(np.flatnonzero(baseline), 100, replace=False)
    method[flip] = False  # the method fixes 100 of the baseline's errors: -5 points
    diff, low, high = paired_bootstrap_ci(baseline, method, resamples=1000)
    assert diff == pytest.approx(-5.0)
    assert low < diff < high < 0  # pairing makes this clear-cut
    assert paired_bootstrap_ci(baseline, method, resamples=1000) == (diff, low, high)
    same = paired_bootstrap_ci(baseline, baseline, resamples=200)
    assert same == (0.0, 0.0, 0.0)


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
