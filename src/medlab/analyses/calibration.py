"""Empirical calibration (OHDSI EmpiricalCalibration) and CohortMethod's study diagnostics.

- ``fit_null``: EmpiricalCalibration's ``fitNull`` — the systematic error of the negative
  controls as a normal N(mean, sd^2) on the log scale, each control observed with its own
  standard error: maximize sum_i log N(logRr_i; mean, sd^2 + se_i^2).
- ``calibrate_p``: ``calibrateP.null`` — 2 * min(Phi(z), 1 - Phi(z)) with
  z = (logRr - mean) / sqrt(sd^2 + se^2).
- ``fit_systematic_error_model`` / ``calibrate_ci``: ``fitSystematicErrorModel`` and
  ``calibrateConfidenceInterval`` — the error mean ``a + b * trueLogRr`` and sd
  ``c + d * |trueLogRr|`` (EmpiricalCalibration's current, non-legacy model), fitted on
  negative and positive controls; with negative controls only, the null converted to that
  model (``convertNullToErrorModel``: a = mean, b = 1, c = sd, d = 0). The calibrated
  estimate solves ``(mean(x) - logRr) / sqrt(sd(x)^2 + se^2) = z`` for z = 0 and
  z = -/+ qnorm(0.025).
- ``ease``: ``computeExpectedAbsoluteSystematicError`` for a normal null, E|X|.
- ``mdrr``: CohortMethod's ``computeMdrrFromAggregateStats`` for a Cox model,
  exp(sqrt((z_alpha + z_beta)^2 / (events * p * (1 - p)))), p the target share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize
from scipy.stats import norm

# createCmDiagnosticThresholds() defaults.
MDRR_THRESHOLD = 10.0
EASE_THRESHOLD = 0.25
SDM_THRESHOLD = 0.1
EQUIPOISE_THRESHOLD = 0.2
GENERALIZABILITY_SDM_THRESHOLD = 1.0


@dataclass(frozen=True)
class Null:
    """The systematic error distribution N(mean, sd^2) on the log scale."""

    mean: float
    sd: float


@dataclass(frozen=True)
class ErrorModel:
    """Mean ``a + b x`` and sd ``c + d |x|`` of the estimate given the true log effect x."""

    mean_intercept: float
    mean_slope: float
    sd_intercept: float
    sd_slope: float


def _finite(log_rr: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b, s = np.asarray(log_rr, dtype=float), np.asarray(se, dtype=float)
    keep = np.isfinite(b) & np.isfinite(s) & (s > 0)
    return b[keep], s[keep]


def fit_null(log_rr: np.ndarray, se: np.ndarray) -> Null:
    """Maximum-likelihood null from negative-control estimates (non-finite ones dropped)."""
    b, s = _finite(log_rr, se)
    if len(b) == 0:
        raise ValueError("no negative control has a finite estimate")

    def minus_ll(theta: np.ndarray) -> float:
        mean, log_sd = theta
        var = math.exp(2 * log_sd) + s**2
        return float(0.5 * np.sum(np.log(2 * math.pi * var) + (b - mean) ** 2 / var))

    best = None
    for start_sd in (0.01, 0.1, 0.5):
        fitted = minimize(
            minus_ll,
            np.array([float(np.mean(b)), math.log(start_sd)]),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
        )
        if best is None or fitted.fun < best.fun:
            best = fitted
    assert best is not None
    mean, log_sd = best.x
    sd = math.exp(log_sd)
    return Null(float(mean), 0.0 if sd < 1e-6 else float(sd))


def calibrate_p(null: Null, log_rr: float, se: float) -> float:
    """The calibrated two-sided p-value of one estimate."""
    if not (math.isfinite(log_rr) and math.isfinite(se)):
        return math.nan
    z = (log_rr - null.mean) / math.sqrt(null.sd**2 + se**2)
    return float(2 * min(norm.cdf(z), norm.sf(z)))


def null_to_error_model(null: Null) -> ErrorModel:
    """``convertNullToErrorModel``: the null's error at every true effect size."""
    return ErrorModel(null.mean, 1.0, null.sd, 0.0)


def fit_systematic_error_model(
    log_rr: np.ndarray, se: np.ndarray, true_log_rr: np.ndarray
) -> ErrorModel:
    """Fit the error model on controls with known true effects (negative: true log RR 0)."""
    b = np.asarray(log_rr, dtype=float)
    s = np.asarray(se, dtype=float)
    t = np.asarray(true_log_rr, dtype=float)
    keep = np.isfinite(b) & np.isfinite(s) & (s > 0) & np.isfinite(t)
    b, s, t = b[keep], s[keep], t[keep]

    def minus_ll(theta: np.ndarray) -> float:
        mean = theta[0] + theta[1] * t
        sd = theta[2] + theta[3] * np.abs(t)
        if np.any(sd < 0):
            return 99999.0
        var = sd**2 + s**2
        return float(0.5 * np.sum(np.log(2 * math.pi * var) + (b - mean) ** 2 / var))

    fitted = minimize(
        minus_ll,
        np.array([0.0, 1.0, 0.1, 0.0]),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 40_000},
    )
    a, slope, c, d = (float(v) for v in fitted.x)
    return ErrorModel(a, slope, c, d)


def calibrate_ci(
    model: ErrorModel, log_rr: float, se: float, width: float = 0.95
) -> tuple[float, float, float, float]:
    """Calibrated log estimate, lower and upper log bounds, and the calibrated SE."""
    if not (math.isfinite(log_rr) and math.isfinite(se)):
        return (math.nan,) * 4

    def bound(z: float) -> float:
        def f(x: float) -> float:
            mean = model.mean_intercept + model.mean_slope * x
            sd = model.sd_intercept + model.sd_slope * abs(x)
            return z + (mean - log_rr) / math.sqrt(sd**2 + se**2)

        return float(brentq(f, -50, 50, xtol=1e-12))

    z = float(norm.ppf((1 - width) / 2))
    try:
        estimate, low, high = bound(0.0), bound(-z), bound(z)
    except ValueError:  # no root in (-50, 50): an error model that cannot be inverted
        return (math.nan,) * 4
    return estimate, low, high, (low - high) / (2 * z)


def ease(null: Null) -> float:
    """The expected absolute systematic error of a normal null."""
    if null.sd == 0:
        return abs(null.mean)
    m, s = null.mean, null.sd
    return float(
        s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * (1 - 2 * norm.cdf(-m / s))
    )


def mdrr(target_share: float, events: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable relative risk of a two-sided Cox test (inf without events)."""
    if events <= 0 or not 0 < target_share < 1:
        return math.inf
    z_alpha = float(norm.ppf(1 - alpha / 2))
    z_beta = float(-norm.ppf(1 - power))
    return math.exp(
        math.sqrt((z_beta + z_alpha) ** 2 / (events * target_share * (1 - target_share)))
    )
