"""Differentially private counts, histograms, contingency tables, sums and means, via OpenDP.

Every mechanism is an OpenDP measurement, calibrated with ``binary_search_param`` so that its
privacy loss for one person added or removed is at most the requested epsilon (pure DP,
Laplace: OpenDP's discrete Laplace on integer counts) or rho (zero-concentrated DP, Gaussian:
OpenDP's discrete Gaussian on counts). Category sets and clamping bounds come from the query,
never from the data, so the sensitivity is known: a person changes one count by one, a clamped
value moves a sum by at most ``max(|lower|, |upper|)``. Each released value carries its noise
scale and a 95% interval from the noise distribution alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Named modules rather than opendp.prelude, which also imports opendp.extras (scikit-learn,
# pandas, polars: a second of every medlab command's start-up).
from opendp import combinators, measurements, transformations
from opendp.domains import atom_domain, vector_domain
from opendp.metrics import absolute_distance, l1_distance, l2_distance, symmetric_distance
from opendp.mod import binary_search_param, enable_features

enable_features("contrib")

Mechanism = Literal["laplace", "gaussian"]
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class NoisyRelease:
    """Noisy values with the mechanism, its scale and the privacy loss spent."""

    kind: str
    mechanism: str
    scale: float
    epsilon: float
    rho: float
    values: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "mechanism": self.mechanism,
            "noise_scale": self.scale,
            "epsilon": self.epsilon,
            "rho": self.rho,
            "values": self.values,
            "ci95": {k: list(v) for k, v in self.intervals.items()},
        }


def _half_width(mechanism: Mechanism, scale: float) -> float:
    # Laplace(b): P(|X| > t) = exp(-t / b), so t = b ln(1 / 0.05); Gaussian: 1.96 sigma.
    return scale * math.log(20) if mechanism == "laplace" else _Z95 * scale


def _calibrate(make: Callable[[float], Any], d_in: Any, loss: float) -> tuple[Any, float]:
    scale = binary_search_param(make, d_in=d_in, d_out=loss)
    return make(scale), float(scale)


def _noise(mechanism: Mechanism) -> Callable[..., Any]:
    return measurements.then_laplace if mechanism == "laplace" else measurements.then_gaussian


def count_measurement(mechanism: Mechanism, loss: float) -> tuple[Any, float]:
    """A measurement on one integer count (one person changes it by one), and its scale."""
    space = (atom_domain(T=int), absolute_distance(T=int))
    return _calibrate(lambda s: space >> _noise(mechanism)(s), 1, loss)


def vector_measurement(mechanism: Mechanism, loss: float) -> tuple[Any, float]:
    """A measurement on a vector of counts where one person is in one cell, and its scale."""
    metric = l1_distance(T=int) if mechanism == "laplace" else l2_distance(T=int)
    space = (vector_domain(atom_domain(T=int)), metric)
    return _calibrate(lambda s: space >> _noise(mechanism)(s), 1, loss)


def sum_measurement(
    mechanism: Mechanism, loss: float, bounds: tuple[float, float]
) -> tuple[Any, float]:
    """A measurement that clamps each person's value to ``bounds`` and sums, and its scale."""
    space = (vector_domain(atom_domain(T=float, nan=False)), symmetric_distance())

    def make(scale: float) -> Any:
        summed = space >> transformations.then_clamp(bounds) >> transformations.then_sum()
        return summed >> _noise(mechanism)(scale)

    return _calibrate(make, 1, loss)


@dataclass(frozen=True)
class NoisyVector:
    """Noisy values, the noise scale and the half-width of each value's 95% noise interval."""

    values: list[float]
    scale: float
    half_width: float


def noisy_vector(
    values: Sequence[float],
    sensitivity: float,
    mechanism: Mechanism,
    loss: float,
    *,
    integer: bool = True,
) -> NoisyVector:
    """``values`` (a vector one person changes by at most ``sensitivity`` in L1; for the
    Gaussian, that bound also bounds L2) with noise calibrated to ``loss``."""
    if integer:
        metric = l1_distance(T=int) if mechanism == "laplace" else l2_distance(T=int)
        space = (vector_domain(atom_domain(T=int)), metric)
        d_in: float = math.ceil(sensitivity)
        data: list[Any] = [round(v) for v in values]
    else:
        metric = l1_distance(T=float) if mechanism == "laplace" else l2_distance(T=float)
        space = (vector_domain(atom_domain(T=float, nan=False)), metric)
        d_in = float(sensitivity)
        data = [float(v) for v in values]
    meas, scale = _calibrate(lambda s: space >> _noise(mechanism)(s), d_in, loss)
    noisy = [float(v) for v in meas(data)] if data else []
    return NoisyVector(noisy, scale, _half_width(mechanism, scale))


def _losses(mechanism: Mechanism, loss: float) -> tuple[float, float]:
    return (loss, 0.0) if mechanism == "laplace" else (0.0, loss)


def noisy_count(n: int, mechanism: Mechanism, loss: float) -> NoisyRelease:
    """A noisy count (``loss`` is epsilon for Laplace, rho for Gaussian)."""
    meas, scale = count_measurement(mechanism, loss)
    value = float(meas(int(n)))
    t = _half_width(mechanism, scale)
    return NoisyRelease(
        "count",
        mechanism,
        scale,
        *_losses(mechanism, loss),
        {"count": value},
        {"count": (value - t, value + t)},
    )


def noisy_histogram(
    labels: Sequence[str], counts: Sequence[int], mechanism: Mechanism, loss: float
) -> NoisyRelease:
    """Noisy counts over fixed categories (a histogram or a flattened contingency table)."""
    meas, scale = vector_measurement(mechanism, loss)
    noisy = [float(v) for v in meas([int(c) for c in counts])]
    t = _half_width(mechanism, scale)
    return NoisyRelease(
        "histogram",
        mechanism,
        scale,
        *_losses(mechanism, loss),
        dict(zip(labels, noisy, strict=True)),
        {k: (v - t, v + t) for k, v in zip(labels, noisy, strict=True)},
    )


def noisy_sum(
    values: Sequence[float], bounds: tuple[float, float], mechanism: Mechanism, loss: float
) -> NoisyRelease:
    """A noisy sum of values clamped to ``bounds``."""
    meas, scale = sum_measurement(mechanism, loss, bounds)
    value = float(meas([float(v) for v in values]))
    t = _half_width(mechanism, scale)
    return NoisyRelease(
        "sum",
        mechanism,
        scale,
        *_losses(mechanism, loss),
        {"sum": value},
        {"sum": (value - t, value + t)},
    )


def noisy_mean(
    values: Sequence[float], bounds: tuple[float, float], mechanism: Mechanism, loss: float
) -> NoisyRelease:
    """A noisy mean: half the loss on the clamped sum, half on the count; the interval is
    the range of sum / count over both noise intervals."""
    s = noisy_sum(values, bounds, mechanism, loss / 2)
    c = noisy_count(len(values), mechanism, loss / 2)
    total, n = s.values["sum"], max(c.values["count"], 1.0)
    (s_lo, s_hi), (c_lo, c_hi) = s.intervals["sum"], c.intervals["count"]
    corners = [a / b for a in (s_lo, s_hi) for b in (max(c_lo, 1.0), max(c_hi, 1.0))]
    mean = min(max(total / n, bounds[0]), bounds[1])
    return NoisyRelease(
        "mean",
        mechanism,
        s.scale,
        *_losses(mechanism, loss),
        {"mean": mean, "sum": total, "count": c.values["count"]},
        {
            "mean": (max(min(corners), bounds[0]), min(max(corners), bounds[1])),
            "sum": s.intervals["sum"],
            "count": c.intervals["count"],
        },
    )


def epsilon_of_rho(rho: float, delta: float) -> float:
    """The (epsilon, delta)-DP guarantee of a rho-zCDP total, by OpenDP's conversion (tighter
    than Bun and Steinke's rho + 2 sqrt(rho ln(1/delta)))."""
    if rho <= 0:
        return 0.0
    gaussian = measurements.make_gaussian(
        atom_domain(T=int), absolute_distance(T=int), scale=1 / math.sqrt(2 * rho)
    )
    return float(combinators.make_zCDP_to_approxDP(gaussian).map(1).epsilon(delta))
