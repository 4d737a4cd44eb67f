"""Intervals against closed forms and textbook values, their coverage on simulated data, and
verdicts read from the interval (vitscope.report.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitscope.errors import VitscopeError
from vitscope.report.stats import (
    Estimate,
    bootstrap_interval,
    mean_interval,
    proportion_interval,
    spearman_interval,
)


def test_t_interval_matches_the_closed_form():
    x = [1.0, 2.0, 4.0]
    e = mean_interval(x)
    # t(0.975, 2) = 4.3026527297 (tables); s = sqrt(7/3)
    half = 4.3026527297 * math.sqrt(7 / 3) / math.sqrt(3)  # to the 10 digits tables give
    assert e.value == pytest.approx(7 / 3)
    assert (e.low, e.high) == pytest.approx((7 / 3 - half, 7 / 3 + half), rel=1e-10)
    assert (e.n, e.unit, e.method) == (3, "seeds", "t")
    one = mean_interval([0.7])
    assert one.value == 0.7 and one.low == -math.inf and one.high == math.inf
    assert one.verdict() == "inconclusive" and one.to_dict()["low"] is None


def test_wilson_interval_matches_the_textbook_value():
    # Wilson 95% interval for 8/10 (Newcombe 1998, table I): 0.4902 to 0.9433
    e = proportion_interval(8, 10)
    assert e.value == 0.8
    assert (e.low, e.high) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    zero = proportion_interval(0, 10)  # never below 0, not degenerate at 0/n
    assert zero.low == 0.0 and 0.25 < zero.high < 0.35
    with pytest.raises(VitscopeError, match="0 <= k <= n"):
        proportion_interval(11, 10)


@pytest.mark.parametrize("make", ["t", "wilson", "bootstrap", "spearman"])
def test_intervals_cover_the_true_value_about_95_percent(make):
    rng = np.random.default_rng(7)
    repeats = 400 if make == "bootstrap" else 2000
    hits = 0
    for r in range(repeats):
        if make == "t":
            e, truth = mean_interval(rng.normal(1.5, 2.0, 8)), 1.5
        elif make == "wilson":
            e, truth = proportion_interval(int(rng.binomial(40, 0.3)), 40), 0.3
        elif make == "bootstrap":
            e = bootstrap_interval(np.mean, rng.normal(0.0, 1.0, 60), resamples=400, seed=r)
            truth = 0.0
        else:
            cov = [[1.0, 0.6], [0.6, 1.0]]
            xy = rng.multivariate_normal([0, 0], cov, 30)
            e = spearman_interval(xy[:, 0], xy[:, 1])
            truth = 6 / math.pi * math.asin(0.6 / 2)  # Spearman's rho of a bivariate normal
        hits += e.low <= truth <= e.high
    coverage = hits / repeats
    # binomial noise of the coverage estimate itself: about ±0.01 (2000) or ±0.02 (400)
    low = 0.90 if make == "bootstrap" else 0.925
    assert low <= coverage <= 0.975, coverage


def test_paired_bootstrap_resamples_pairs_together():
    """Two models on the same images: the paired difference of accuracies is much tighter
    than the unpaired spread when their errors are correlated."""
    rng = np.random.default_rng(0)
    hard = rng.random(500) < 0.3  # images both models find hard
    a = (~hard | (rng.random(500) < 0.2)).astype(float)
    b = a.copy()
    flip = rng.choice(500, 15, replace=False)
    b[flip] = 1 - b[flip]
    paired = bootstrap_interval(lambda x, y: x.mean() - y.mean(), a, b, seed=1)
    assert paired.value == pytest.approx(a.mean() - b.mean())
    independent = mean_interval(a).high - mean_interval(a).low
    assert paired.high - paired.low < independent / 2
    again = bootstrap_interval(lambda x, y: x.mean() - y.mean(), a, b, seed=1)
    assert (again.low, again.high) == (paired.low, paired.high)  # seeded


def test_a_perfect_spearman_rho_is_bounded_like_the_nearest_imperfect_one():
    e = spearman_interval([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    one_swap = spearman_interval([1, 2, 3, 4, 5], [2, 4, 6, 10, 8])  # ρ = 0.9
    assert e.value == pytest.approx(1.0) and e.high == 1.0
    assert one_swap.value == pytest.approx(0.9)
    assert e.low == pytest.approx(one_swap.low) and 0 < e.low < 0.9
    assert spearman_interval([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]).low == -1.0


def test_spearman_interval_bounds_and_small_n():
    e = spearman_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert e.value == pytest.approx(0.8285714285714286)
    assert -1 <= e.low < e.value < e.high <= 1
    small = spearman_interval([1, 2, 3], [1, 3, 2])
    assert (small.low, small.high) == (-1.0, 1.0) and small.verdict() == "inconclusive"


@pytest.mark.parametrize(
    "low, high, side, verdict",
    [
        (0.1, 0.5, "greater", "holds"),
        (-0.5, -0.1, "greater", "does not hold"),
        (-0.1, 0.5, "greater", "inconclusive"),
        (-0.5, -0.1, "less", "holds"),
        (0.1, 0.5, "less", "does not hold"),
        (0.0, 0.5, "greater", "inconclusive"),  # touching the null is not beyond it
    ],
)
def test_verdict_is_read_from_the_interval(low, high, side, verdict):
    e = Estimate((low + high) / 2, low, high, 10, "seeds", "t")
    assert e.verdict(0.0, side) == verdict


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(VitscopeError, match="non-finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(VitscopeError, match="level"):
        mean_interval([1.0, 2.0], level=1.5)
    with pytest.raises(VitscopeError, match="share a non-empty first axis"):
        bootstrap_interval(np.mean, np.ones(3), np.ones(4))
    with pytest.raises(VitscopeError, match="side"):
        Estimate(0, -1, 1, 3, "seeds", "t").verdict(side="up")
