"""DP mechanisms against OpenDP's stated scale and privacy maps, and their composition."""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest

from medlab.privacy import dp as mech

DRAWS = 10_000


def _discrete_laplace_variance(scale: float) -> float:
    # P(k) proportional to exp(-|k| / scale): variance 2 q / (1 - q)^2 with q = exp(-1 / scale).
    q = math.exp(-1 / scale)
    return 2 * q / (1 - q) ** 2


@pytest.mark.parametrize("epsilon", [0.5, 1.0])
def test_laplace_count_noise_matches_opendp_scale(epsilon: float) -> None:
    meas, scale = mech.count_measurement("laplace", epsilon)
    assert meas.map(1) <= epsilon * (1 + 1e-6)  # OpenDP's own privacy map
    assert scale == pytest.approx(1 / epsilon, rel=1e-6)
    draws = np.array([meas(100) for _ in range(DRAWS)]) - 100
    expected = _discrete_laplace_variance(scale)
    # The sample variance of 10,000 Laplace draws has a relative standard error of about
    # sqrt(5 / 10,000) = 2.2%, so 12% is more than five standard errors.
    assert draws.var() == pytest.approx(expected, rel=0.12)
    assert abs(draws.mean()) < 4 * math.sqrt(expected / DRAWS)


def test_gaussian_count_noise_matches_opendp_scale() -> None:
    rho = 0.125
    meas, sigma = mech.count_measurement("gaussian", rho)
    assert meas.map(1) <= rho * (1 + 1e-6)
    assert sigma == pytest.approx(1 / math.sqrt(2 * rho), rel=1e-4)
    draws = np.array([meas(50) for _ in range(DRAWS)]) - 50
    # The discrete Gaussian's variance is within 1% of sigma^2 for sigma >= 1.
    assert draws.var() == pytest.approx(sigma**2, rel=0.12)


def test_sum_noise_scales_with_the_clamp_bound() -> None:
    meas, scale = mech.sum_measurement("laplace", 0.5, (0.0, 100.0))
    assert scale == pytest.approx(100 / 0.5, rel=1e-4)
    assert meas.map(1) <= 0.5 * (1 + 1e-6)
    values = [30.0, 250.0, 70.0]  # 250 is clamped to 100
    draws = np.array([meas(values) for _ in range(DRAWS)]) - 200.0
    assert draws.var() == pytest.approx(2 * scale**2, rel=0.12)


def test_released_values_carry_scale_and_interval() -> None:
    release = mech.noisy_histogram(["a", "b"], [40, 60], "laplace", 1.0)
    assert release.epsilon == 1.0 and release.rho == 0.0
    assert release.scale == pytest.approx(1.0, rel=1e-6)
    for key, value in release.values.items():
        low, high = release.intervals[key]
        assert high - low == pytest.approx(2 * release.scale * math.log(20))
        assert low < value < high
    mean = mech.noisy_mean([40.0] * 200, (0.0, 100.0), "laplace", 1.0)
    assert 0 <= mean.intervals["mean"][0] <= mean.values["mean"] <= mean.intervals["mean"][1]


def test_budget_totals_equal_opendp_composition() -> None:
    losses = [0.1, 0.25, 0.5, 0.05]
    pure = [mech.count_measurement("laplace", e)[0] for e in losses]
    assert dp.c.make_composition(pure).map(1) == pytest.approx(sum(losses), rel=1e-6)
    rhos = [0.01, 0.02, 0.05]
    concentrated = [mech.vector_measurement("gaussian", r)[0] for r in rhos]
    assert dp.c.make_composition(concentrated).map(1) == pytest.approx(sum(rhos), rel=1e-6)


def test_rho_as_approximate_dp_matches_opendp_and_the_textbook_bound() -> None:
    assert mech.epsilon_of_rho(0.0, 1e-7) == 0.0
    eps = mech.epsilon_of_rho(0.125, 1e-7)
    # OpenDP's own conversion of the measurement used for rho = 0.125 (sigma = 2).
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=2.0)
    assert eps == pytest.approx(dp.c.make_zCDP_to_approxDP(gaussian).map(1).epsilon(1e-7))
    # Bun and Steinke (2016), Proposition 1.3: rho + 2 sqrt(rho ln(1/delta)) bounds it.
    assert 0.125 < eps <= 0.125 + 2 * math.sqrt(0.125 * math.log(1e7))
    assert mech.epsilon_of_rho(0.5, 1e-7) > eps  # more rho spent, a weaker guarantee
