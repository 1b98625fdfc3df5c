"""Exact Poisson limits against published Garwood (1936) values and scipy's chi-square."""

import math

import pytest
from scipy.stats import poisson

from medlab.analyses.poisson import exact_count_interval, rate_interval

# Exact 95% limits for a Poisson count, as tabulated (e.g. Ulm 1990, Table 1).
PUBLISHED = {0: (0.0, 3.689), 1: (0.0253, 5.572), 5: (1.623, 11.668), 10: (4.795, 18.390)}


@pytest.mark.parametrize("k", sorted(PUBLISHED))
def test_matches_published_limits(k: int) -> None:
    low, high = exact_count_interval(k)
    assert low == pytest.approx(PUBLISHED[k][0], abs=5e-4)
    assert high == pytest.approx(PUBLISHED[k][1], abs=5e-4)


@pytest.mark.parametrize("k", [1, 3, 17, 250])
def test_limits_are_where_the_tail_probabilities_are_2_5_percent(k: int) -> None:
    low, high = exact_count_interval(k)
    assert poisson.sf(k - 1, low) == pytest.approx(0.025, rel=1e-6)  # P(X >= k | low)
    assert poisson.cdf(k, high) == pytest.approx(0.025, rel=1e-6)  # P(X <= k | high)


def test_rate_per_thousand_person_years() -> None:
    rate, low, high = rate_interval(10, 2000.0)
    assert rate == pytest.approx(5.0)
    assert (low, high) == pytest.approx((4.795 / 2, 18.390 / 2), abs=1e-3)
    assert all(math.isnan(v) for v in rate_interval(0, 0.0))
