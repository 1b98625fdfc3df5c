"""Exact (Garwood) confidence limits for Poisson counts and rates."""

from __future__ import annotations

from scipy.stats import chi2


def exact_count_interval(events: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval for a Poisson mean given ``events`` observed.

    Garwood (1936): lower = chi2(alpha/2; 2k) / 2, upper = chi2(1 - alpha/2; 2k + 2) / 2,
    with lower = 0 when k = 0.
    """
    if events < 0:
        raise ValueError("events must be >= 0")
    alpha = 1.0 - confidence
    lower = 0.0 if events == 0 else float(chi2.ppf(alpha / 2, 2 * events)) / 2
    upper = float(chi2.ppf(1 - alpha / 2, 2 * events + 2)) / 2
    return lower, upper


def rate_interval(
    events: int, person_years: float, per: float = 1000.0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Rate per ``per`` person-years with its exact interval: (rate, low, high)."""
    if person_years <= 0:
        return float("nan"), float("nan"), float("nan")
    lower, upper = exact_count_interval(events, confidence)
    scale = per / person_years
    return events * scale, lower * scale, upper * scale
