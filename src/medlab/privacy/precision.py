"""Released statistics at a policy-set precision, never finer than the counts allow.

A mean, a proportion or a hazard ratio released to full precision beside a rounded count can
undo the rounding: only one count in the rounding band makes ``n * mean`` a whole number, and
``0.7388486465878765`` is ``1938 / 2623`` and nothing else. So every statistic is rounded to
its kind's significant digits (:class:`medlab.privacy.policy.Precision`), and, where it is a
share of ``n`` persons, to a step no finer than ``1 / n_low`` for the smallest count
``n_low`` the released count allows: every count in the band then has some whole numerator
matching the released value, and the value pins nothing. Sums of whole numbers are never
shown finer than 1, for the same reason.
"""

from __future__ import annotations

import math


def nice_step(step: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``step``."""
    if step <= 0:
        return 0.0
    power = 10.0 ** math.floor(math.log10(step))
    for multiple in (1.0, 2.0, 5.0, 10.0):
        if multiple * power >= step * (1 - 1e-12):
            return multiple * power
    return 10.0 * power


def round_to(value: float | None, digits: int | None, min_step: float = 0.0) -> float | None:
    """``value`` rounded to ``digits`` significant digits and to a step of at least
    ``min_step`` (a nice step); None and non-finite values stay None, ``digits`` None keeps
    full precision."""
    if value is None or not math.isfinite(value):
        return None
    if digits is None:
        return float(value)
    step = 0.0
    if value != 0:
        step = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    if min_step > step:
        step = nice_step(min_step)
    if step == 0:
        return 0.0
    return _tidy(round(value / step) * step, step)


def _consistent(
    n: int,
    mean: tuple[float, float],
    sd: tuple[float, float],
    value_range: tuple[float, float],
) -> bool:
    """Whether ``n`` whole numbers in ``value_range`` can have a mean and an SD in the given
    intervals (the question an attacker asks of every count in the band)."""
    low, high = value_range
    if n < 2:
        return True
    for total in range(math.ceil(n * mean[0] - 1e-9), math.floor(n * mean[1] + 1e-9) + 1):
        if not n * low <= total <= n * high:
            continue
        base = total * total / n
        q_low = math.ceil(base + (n - 1) * sd[0] ** 2 - 1e-9)
        q_high = math.floor(base + (n - 1) * sd[1] ** 2 + 1e-9)
        # Whole numbers in [low, high] have squares at most (low + high) x - low high each.
        q_high = min(q_high, math.floor((low + high) * total - n * low * high + 1e-9))
        if q_low <= q_high:
            return True
    return False


def _tidy(value: float, step: float) -> float:
    """``value`` printed to the decimals its step has (no 0.30000000000000004)."""
    return float(round(value, max(0, -math.floor(math.log10(step))))) if step > 0 else value


def _interval(value: float, step: float) -> tuple[float, float]:
    return (value - step / 2, value + step / 2)


def _step(value: float, digits: int | None, floor: float) -> float:
    if digits is None:
        return floor
    step = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1) if value else 0.0
    return max(step, nice_step(floor) if floor else 0.0)


def mean_and_sd_steps(
    n: int,
    total: float,
    squares: float,
    band: tuple[int, int],
    digits: int | None,
    value_range: tuple[float, float] | None,
) -> tuple[float, float, float, float] | None:
    """The mean and SD of ``n`` values released so that neither pins the count, and the
    rounding steps used.

    Each is rounded to ``digits`` significant digits (``None``: full precision). For whole
    numbers in ``value_range``, the steps are then widened until every count in ``band`` (the
    counts the released count allows) admits whole numbers with a mean and an SD that round
    to the released ones, checked by search as an attacker would; None when no step below
    the value range does.
    """
    mean = total / n
    variance = max((squares - n * mean * mean) / (n - 1), 0.0) if n > 1 else 0.0
    sd = math.sqrt(variance)
    if digits is None or value_range is None:
        return round_to(mean, digits) or 0.0, round_to(sd, digits) or 0.0, 0.0, 0.0
    width = value_range[1] - value_range[0]
    mean_step = _step(mean, digits, 1.0 / max(band[0], 1))
    sd_step = _step(sd, digits, 0.0) or nice_step(1.0 / max(band[0], 1))
    counts = range(band[0], band[1] + 1)
    for _ in range(40):
        shown_mean = round(mean / mean_step) * mean_step
        shown_sd = round(sd / sd_step) * sd_step
        mean_interval = _interval(shown_mean, mean_step)
        sd_interval = (max(shown_sd - sd_step / 2, 0.0), shown_sd + sd_step / 2)
        if all(_consistent(m, mean_interval, sd_interval, value_range) for m in counts):
            return _tidy(shown_mean, mean_step), _tidy(shown_sd, sd_step), mean_step, sd_step
        if mean_step > width and sd_step > width:
            return None
        sd_step = nice_step(sd_step * 1.5)
        mean_step = nice_step(mean_step * 1.5)
    return None
