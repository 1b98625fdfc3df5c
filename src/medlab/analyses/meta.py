"""Meta-analysis of per-site log hazard ratios: fixed effect and DerSimonian-Laird."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm


@dataclass(frozen=True)
class Pooled:
    """A pooled hazard ratio with its 95% interval, p value and heterogeneity."""

    method: str
    hr: float
    ci_low: float
    ci_high: float
    p: float
    log_hr: float
    se: float
    tau2: float
    sites: int


def _pooled(method: str, estimates: list[float], weights: list[float], tau2: float) -> Pooled:
    total = sum(weights)
    mean = sum(w * b for w, b in zip(weights, estimates, strict=True)) / total
    se = math.sqrt(1 / total)
    z = mean / se
    return Pooled(
        method,
        math.exp(mean),
        math.exp(mean - 1.959963984540054 * se),
        math.exp(mean + 1.959963984540054 * se),
        float(2 * norm.sf(abs(z))),
        mean,
        se,
        tau2,
        len(estimates),
    )


def fixed_effect(log_hrs: list[float], ses: list[float]) -> Pooled:
    """Inverse-variance weighted mean of the log hazard ratios."""
    return _pooled("fixed", log_hrs, [1 / s**2 for s in ses], 0.0)


def random_effects(log_hrs: list[float], ses: list[float]) -> Pooled:
    """DerSimonian and Laird (1986): between-site variance tau^2 by the method of moments."""
    w = [1 / s**2 for s in ses]
    fixed = fixed_effect(log_hrs, ses).log_hr
    q = sum(wi * (b - fixed) ** 2 for wi, b in zip(w, log_hrs, strict=True))
    denominator = sum(w) - sum(wi**2 for wi in w) / sum(w)
    tau2 = max(0.0, (q - (len(w) - 1)) / denominator) if denominator > 0 else 0.0
    return _pooled("random", log_hrs, [1 / (s**2 + tau2) for s in ses], tau2)
