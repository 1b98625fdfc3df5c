"""Empirical calibration and CohortMethod's diagnostics against their published formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from medlab.analyses import assessment
from medlab.analyses import calibration as cal

# Fixed negative-control estimates (log RR, SE).
LOG_RR = np.array([0.10, 0.25, -0.05, 0.30, 0.15, 0.40, 0.05, 0.20, -0.10, 0.35])
SE = np.array([0.10, 0.15, 0.20, 0.12, 0.25, 0.30, 0.08, 0.18, 0.22, 0.14])


def test_fit_null_is_the_maximum_of_fitnulls_likelihood() -> None:
    # fitNull: maximize sum log N(logRr_i; mean, sd^2 + se_i^2); checked on a fine grid.
    null = cal.fit_null(LOG_RR, SE)

    def ll(mean: float, sd: float) -> float:
        return float(np.sum(norm.logpdf(LOG_RR, mean, np.sqrt(sd**2 + SE**2))))

    means = np.linspace(0.0, 0.3, 301)
    sds = np.linspace(0.0, 0.3, 301)
    grid = np.array([[ll(m, s) for s in sds] for m in means])
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    assert null.mean == pytest.approx(means[i], abs=2e-3)
    assert null.sd == pytest.approx(sds[j], abs=2e-3)
    assert ll(null.mean, null.sd) >= grid.max() - 1e-9


def test_fit_null_with_no_spread_has_sd_zero() -> None:
    null = cal.fit_null(np.array([0.1, 0.1, 0.1]), np.array([0.2, 0.2, 0.2]))
    assert null.mean == pytest.approx(0.1, abs=1e-6) and null.sd == 0.0


def test_calibrate_p_is_calibratep_null() -> None:
    null = cal.Null(0.1, 0.2)
    z = (0.5 - 0.1) / math.sqrt(0.2**2 + 0.15**2)
    assert cal.calibrate_p(null, 0.5, 0.15) == pytest.approx(2 * norm.sf(z), rel=1e-12)
    assert cal.calibrate_p(null, -0.3, 0.15) == pytest.approx(
        2 * norm.cdf((-0.4) / math.sqrt(0.0625))
    )
    # An unbiased null with no spread gives back the traditional p-value.
    assert cal.calibrate_p(cal.Null(0, 0), 0.3, 0.1) == pytest.approx(2 * norm.sf(3), rel=1e-12)


def test_calibrated_ci_from_a_null_is_shifted_and_widened() -> None:
    # convertNullToErrorModel + calibrateConfidenceInterval: with slope 1 and constant sd,
    # the calibrated estimate is logRr - mean and the bounds +/- z sqrt(sd^2 + se^2).
    null = cal.Null(0.1, 0.2)
    b, low, high, se = cal.calibrate_ci(cal.null_to_error_model(null), 0.5, 0.15)
    half = 1.959963984540054 * math.sqrt(0.2**2 + 0.15**2)
    assert b == pytest.approx(0.4, abs=1e-10)
    assert low == pytest.approx(0.4 - half, abs=1e-9) and high == pytest.approx(
        0.4 + half, abs=1e-9
    )
    assert se == pytest.approx(math.sqrt(0.2**2 + 0.15**2), rel=1e-9)


def test_systematic_error_model_recovers_planted_error() -> None:
    rng = np.random.default_rng(3)
    true = np.repeat(np.log([1.0, 2.0, 4.0]), 400)
    se = rng.uniform(0.05, 0.2, len(true))
    # Planted: mean 0.2 + 1.0 * true, sd 0.1 + 0.05 |true|.
    log_rr = rng.normal(0.2 + true, np.sqrt((0.1 + 0.05 * np.abs(true)) ** 2 + se**2))
    model = cal.fit_systematic_error_model(log_rr, se, true)
    assert model.mean_intercept == pytest.approx(0.2, abs=0.03)
    assert model.mean_slope == pytest.approx(1.0, abs=0.05)
    assert model.sd_intercept == pytest.approx(0.1, abs=0.03)


def test_ease_is_the_expected_absolute_error_of_the_null() -> None:
    null = cal.Null(0.15, 0.2)
    expected, _ = integrate.quad(lambda x: abs(x) * norm.pdf(x, 0.15, 0.2), -5, 5)
    assert cal.ease(null) == pytest.approx(expected, rel=1e-8)
    assert cal.ease(cal.Null(-0.3, 0.0)) == pytest.approx(0.3)


def test_mdrr_is_cohortmethods_formula() -> None:
    # computeMdrrFromAggregateStats (cox): exp(sqrt((z_beta + z_alpha)^2 / (E p (1 - p)))).
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert cal.mdrr(0.5, 100) == pytest.approx(math.exp(math.sqrt(z**2 / 25)), rel=1e-12)
    assert cal.mdrr(0.5, 0) == math.inf


def _estimate(**values: object) -> dict[str, object]:
    base = {
        "adjustment": "matching",
        "log_hr": 0.3,
        "se": 0.1,
        "target_persons": 1000,
        "comparator_persons": 1000,
        "target_events": 60,
        "comparator_events": 50,
        "max_abs_smd": 0.05,
        "max_abs_smd_table1": 0.04,
        "generalizability": 0.2,
    }
    return {**base, **values}


def _controls(shift: float) -> list[dict[str, object]]:
    return [
        {"adjustment": "matching", "true_log_hr": 0.0, "log_hr": float(b) + shift, "se": float(s)}
        for b, s in zip(LOG_RR - LOG_RR.mean(), SE, strict=True)
    ]


def test_diagnostics_pass_and_fail_with_the_failing_checks_named() -> None:
    good = assessment.assess(_estimate(), _controls(0.0), 0.6)
    assert good["diagnostics"] == "pass" and good["failing"] == []
    bad = assessment.assess(_estimate(max_abs_smd=0.15), _controls(0.6), 0.1)
    assert bad["diagnostics"] == "fail"
    assert set(bad["failing"]) == {"max_abs_smd", "equipoise", "ease"}
    assert bad["calibrated_p"] > good["calibrated_p"]  # the bias is taken out


def test_without_two_negative_controls_calibration_is_not_evaluated() -> None:
    result = assessment.assess(_estimate(), _controls(0.0)[:1], 0.6)
    assert result["null"] is None and "ease" in result["not_evaluated"]


def test_an_error_model_without_an_inverse_gives_no_calibrated_interval() -> None:
    # A sd that shrinks faster than the mean moves: no true effect explains the estimate.
    model = cal.ErrorModel(0.0, 0.0, 0.1, 0.0)
    assert all(math.isnan(v) for v in cal.calibrate_ci(model, 5.0, 0.1))
