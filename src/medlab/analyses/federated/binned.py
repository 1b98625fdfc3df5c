"""Federated survival over event times binned to a policy-set width, so that no exact event
date leaves a site: Kaplan-Meier from per-bin at-risk and event counts, and the unstratified
Cox model from per-bin risk-set sums (the WebDISCO idea, Lu et al. 2015, with bins).

A time ``t`` falls in bin ``ceil(t / width)`` (bin ``k`` covers ``((k-1)w, kw]``); a person
is at risk in every bin up to their own. Both estimators are exact for the pooled data with
times rounded up to their bin's end: the Kaplan-Meier curve at each bin end, and the Cox
model with Breslow ties on the binned times (statsmodels ``PHReg(ties="breslow")``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medlab.analyses.federated.cox import CoxContribution


def bins(time: np.ndarray, width: float, count: int) -> np.ndarray:
    """Each time's bin, 1..count (a time beyond the last bin's end counts as censored there:
    see :func:`observed`)."""
    return np.clip(np.ceil(np.asarray(time, dtype=float) / width), 1, count).astype(int)


def observed(time: np.ndarray, event: np.ndarray, width: float, count: int) -> np.ndarray:
    """The events inside the grid (an event after the last bin's end is censored there)."""
    return np.asarray(event).astype(bool) & (np.asarray(time, dtype=float) <= width * count)


def km_counts(
    time: np.ndarray, event: np.ndarray, width: float, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per bin, the persons at risk at its start and the events in it (one site)."""
    b = bins(time, width, count)
    at_risk = np.array([(b >= k).sum() for k in range(1, count + 1)], dtype=float)
    events = np.bincount(b[observed(time, event, width, count)], minlength=count + 1)[1:]
    events = events.astype(float)
    return at_risk, events


def km_curve(at_risk: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Survival at each bin's end from summed counts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1 - events / np.where(at_risk > 0, at_risk, 1), 1.0)
    return np.cumprod(factor)


@dataclass(frozen=True)
class RiskSums:
    """One site's per-bin sums at the current coefficients: over the persons at risk in the
    bin, ``sum exp(xb)``, ``sum x exp(xb)`` and ``sum x x' exp(xb)``; over the events in the
    bin, their count and ``sum x``."""

    s0: np.ndarray  # (bins,)
    s1: np.ndarray  # (bins, p)
    s2: np.ndarray  # (bins, p, p)
    d: np.ndarray  # (bins,)
    xd: np.ndarray  # (bins, p)

    def flat(self) -> list[float]:
        """As one vector."""
        parts = (self.s0, self.s1, self.s2, self.d, self.xd)
        return [float(v) for a in parts for v in np.ravel(a)]

    @staticmethod
    def unflat(values: list[float], count: int, p: int) -> RiskSums:
        """The sum of several sites' :meth:`flat` vectors."""
        v = np.asarray(values)
        sizes = [count, count * p, count * p * p, count, count * p]
        cut = np.cumsum(sizes)[:-1]
        s0, s1, s2, d, xd = np.split(v, cut)
        return RiskSums(s0, s1.reshape(count, p), s2.reshape(count, p, p), d, xd.reshape(count, p))


def risk_sums(
    time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: np.ndarray, width: float, count: int
) -> RiskSums:
    """One site's per-bin sums (see :class:`RiskSums`)."""
    b = bins(time, width, count)
    risk = np.exp(x @ beta)
    p = x.shape[1]
    s0, s1, s2 = np.zeros(count), np.zeros((count, p)), np.zeros((count, p, p))
    d, xd = np.zeros(count), np.zeros((count, p))
    # Per own bin, then a reverse cumulative sum: at risk in bin k = own bin >= k.
    np.add.at(s0, b - 1, risk)
    np.add.at(s1, b - 1, risk[:, None] * x)
    np.add.at(s2, b - 1, risk[:, None, None] * x[:, :, None] * x[:, None, :])
    dead = observed(time, event, width, count)
    np.add.at(d, b[dead] - 1, 1.0)
    np.add.at(xd, b[dead] - 1, x[dead])
    rev = slice(None, None, -1)
    return RiskSums(
        np.cumsum(s0[rev])[rev],
        np.cumsum(s1[rev], axis=0)[rev],
        np.cumsum(s2[rev], axis=0)[rev],
        d,
        xd,
    )


def cox_from_sums(sums: RiskSums, beta: np.ndarray) -> CoxContribution:
    """The Breslow log partial likelihood, gradient and information on the binned times."""
    p = len(beta)
    loglik, gradient, information = 0.0, np.zeros(p), np.zeros((p, p))
    for k in np.flatnonzero(sums.d > 0):
        mean = sums.s1[k] / sums.s0[k]
        loglik += float(sums.xd[k] @ beta - sums.d[k] * np.log(sums.s0[k]))
        gradient += sums.xd[k] - sums.d[k] * mean
        information += sums.d[k] * (sums.s2[k] / sums.s0[k] - np.outer(mean, mean))
    return CoxContribution(information, gradient, loglik, int(sums.d.sum()))


def cox_round(
    total: Callable[[np.ndarray], RiskSums],
) -> Callable[[np.ndarray], CoxContribution]:
    """A Newton round for :func:`medlab.analyses.federated.cox.fit` from summed risk sums."""
    return lambda beta: cox_from_sums(total(beta), beta)
