"""Tests for cgh_jax.analysis.stats: mean and sample std over seeds, paired t-intervals."""

import math

import numpy as np
import pytest

from cgh_jax.analysis import report, stats


def test_mean_std_matches_numpy():
    values = [0.3, 0.5, 0.9, 0.2]
    mean, std = stats.mean_std(values)
    np.testing.assert_allclose(mean, np.mean(values))
    np.testing.assert_allclose(std, np.std(values, ddof=1))
    assert stats.mean_std([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        stats.mean_std([])
    assert report.mean_std is stats.mean_std  # the tables use the one implementation


def test_mean_and_std_skip_nan():
    assert stats.mean([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(stats.mean([])) and math.isnan(stats.mean([math.nan]))
    assert stats.std([1.0, math.nan, 3.0]) == pytest.approx(math.sqrt(2))
    assert stats.std([5.0]) == 0.0 and stats.std([]) == 0.0


def test_t95_table():
    # Two-sided 95% quantiles from a t table: df 1, 4, 9, and beyond 10 df 10's value.
    assert stats.t95(1) == 12.706 and stats.t95(4) == 2.776 and stats.t95(9) == 2.262
    assert stats.t95(10) == stats.t95(30) == 2.228
    with pytest.raises(ValueError):
        stats.t95(0)


@pytest.mark.parametrize(
    "a, b, want",
    [
        # n = 2: differences 1, 3; mean 2, s = sqrt(2), t(1) = 12.706, half = 12.706.
        ([3.0, 5.0], [2.0, 2.0], (2.0, -10.706, 14.706)),
        # n = 5: differences 1..5; mean 3, s^2 = 10/4, s/sqrt(5) = sqrt(0.5), t(4) = 2.776,
        # half = 2.776 * 0.70711 = 1.96293.
        ([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5, (3.0, 1.03707, 4.96293)),
        # n = 10: differences 1..10; mean 5.5, s^2 = 82.5/9, s/sqrt(10) = 0.95743,
        # t(9) = 2.262, half = 2.16570.
        ([float(i) for i in range(11, 21)], [10.0] * 10, (5.5, 3.33430, 7.66570)),
    ],
)
def test_paired_difference_by_hand(a, b, want):
    assert stats.paired_difference(a, b) == pytest.approx(want, abs=1e-5)


def test_paired_difference_edge_cases():
    mid, low, high = stats.paired_difference([0.7], [0.5])
    assert mid == pytest.approx(0.2) and math.isnan(low) and math.isnan(high)
    # A pair with a NaN is left out: two pairs remain.
    got = stats.paired_difference([3.0, 5.0, math.nan], [2.0, 2.0, 1.0])
    assert got == pytest.approx((2.0, -10.706, 14.706))
    with pytest.raises(ValueError):
        stats.paired_difference([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------- t quantiles


def test_t_quantile_reproduces_the_95_table():
    for df, want in enumerate(stats.T95, start=1):
        assert round(stats.t_quantile(0.95, df), 3) == want


def test_t_quantile_against_hand_values_and_scipy():
    # df = 1 is the Cauchy distribution: t = tan(pi * confidence / 2).
    for confidence in (0.5, 0.9, 0.99, 0.999):
        assert stats.t_quantile(confidence, 1) == pytest.approx(
            math.tan(math.pi * confidence / 2), rel=1e-8
        )
    # df = 2: P(|T| <= t) = t / sqrt(2 + t^2), so t = c sqrt(2 / (1 - c^2)).
    for confidence in (0.9, 0.998):
        want = confidence * math.sqrt(2 / (1 - confidence**2))
        assert stats.t_quantile(confidence, 2) == pytest.approx(want, rel=1e-8)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (2, 4, 7, 30):
        for confidence in (0.95, stats.bonferroni(11), stats.bonferroni(48)):
            want = scipy_stats.t.ppf(1 - (1 - confidence) / 2, df)
            assert stats.t_quantile(confidence, df) == pytest.approx(want, rel=1e-8)


def test_bonferroni_and_a_corrected_interval_is_wider():
    assert stats.bonferroni(1) == pytest.approx(0.95)
    assert stats.bonferroni(10) == pytest.approx(0.995)
    a, b = [3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 2.0]
    d, lo, hi = stats.paired_difference(a, b)
    dc, loc, hic = stats.paired_difference(a, b, confidence=stats.bonferroni(10))
    assert d == dc == pytest.approx(2.75)
    half = stats.t_quantile(0.995, 3) * np.std([2, 3, 2, 4], ddof=1) / 2
    assert (loc, hic) == pytest.approx((d - half, d + half))
    assert loc < lo and hic > hi
    with pytest.raises(ValueError):
        stats.bonferroni(0)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_spread_comparison_and_less_beyond_spread():
    assert stats.spread_comparison([1.0, 2.0, 3.0], [5.0, 5.0]) == (2.0, 5.0, 2.0)
    assert stats.spread_comparison([1.0, math.nan], [2.0]) == (1.0, 2.0, 0.0)  # NaN skipped
    assert stats.less_beyond_spread([1.0, 2.0, 3.0], [5.0, 5.0])  # 3 below, floor 2
    assert not stats.less_beyond_spread([1.0, 2.0, 3.0], [3.5, 3.5])  # 1.5 below, floor 2
    assert not stats.less_beyond_spread([5.0, 5.0], [1.0, 2.0, 3.0])
