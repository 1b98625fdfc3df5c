"""The Cox outcome model on treatment alone, as CohortMethod's ``fitOutcomeModel`` fits it.

One coefficient (the log hazard ratio of target vs comparator), optionally stratified
(matched sets, PS strata) and weighted (IPTW), with Breslow's or Efron's handling of tied
event times. Cyclops, which CohortMethod uses, handles ties by Breslow's method and reports
the profile-likelihood interval (``confint(..., overrideNoRegularization = TRUE)``); both are
available here next to Efron ties and the Wald interval. The robust (sandwich) variance for
weighted fits is Lin and Wei's (1989), with the score residuals of each row; with Efron ties
and weights it is taken from lifelines, the chosen reference for that case.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq
from scipy.stats import chi2, norm

Ties = Literal["breslow", "efron"]
Interval = Literal["wald", "profile"]

_Z = float(norm.ppf(0.975))
_DROP = float(chi2.ppf(0.95, 1)) / 2


class NoEstimate(Exception):
    """The partial likelihood has no finite maximum (monotone likelihood) or no information."""


@dataclass(frozen=True)
class CoxFit:
    """log HR, its standard error (model-based or robust), its 95% interval and p."""

    log_hr: float
    se: float
    low: float
    high: float
    p: float


class RiskData:
    """Rows sorted by stratum and time, with the tie groups of event times."""

    def __init__(
        self,
        time: np.ndarray,
        event: np.ndarray,
        x: np.ndarray,
        weight: np.ndarray | None,
        stratum: np.ndarray | None,
    ) -> None:
        n = len(time)
        s = np.zeros(n, dtype=np.int64) if stratum is None else np.asarray(stratum)
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=float)
        # Descending time within stratum: the risk set of a time is a prefix of its stratum.
        order = np.lexsort((-np.asarray(event), -np.asarray(time, dtype=float), s))
        self.order = order
        self.t = np.asarray(time, dtype=float)[order]
        self.d = np.asarray(event, dtype=bool)[order]
        self.x = np.asarray(x, dtype=float)[order]
        self.w = w[order]
        self.s = s[order]
        # Groups of rows sharing stratum and time; risk sets are cumulative within stratum.
        new_group = np.r_[True, (self.s[1:] != self.s[:-1]) | (self.t[1:] != self.t[:-1])]
        self.group = np.cumsum(new_group) - 1
        self.new_stratum = np.r_[True, self.s[1:] != self.s[:-1]]
        self.n_groups = int(self.group[-1]) + 1 if n else 0
        # Fixed by the rows, used by every likelihood evaluation: where each stratum starts
        # (and how long it is), and for each row the last row of its tie group.
        self._starts = np.flatnonzero(self.new_stratum)
        self._lengths = np.diff(np.r_[self._starts, n])
        last = np.zeros(self.n_groups, dtype=np.int64)
        last[self.group] = np.arange(n)
        self._group_last = last[self.group]

    def _cumulative(self, values: np.ndarray) -> np.ndarray:
        """Per row, the sum of ``values`` over its risk set (same stratum, time >= its own)."""
        total = np.cumsum(values)
        offset = np.repeat(np.r_[0.0, total][self._starts], self._lengths)
        # Everyone tied at a time is at risk at it: take the group's last row.
        return np.asarray((total - offset)[self._group_last])

    def sums(self, beta: float, ties: Ties) -> tuple[float, float, float, np.ndarray]:
        """Log partial likelihood, score, information, and per-row Breslow quantities."""
        risk = self.w * np.exp(beta * self.x)
        s0 = self._cumulative(risk)
        s1 = self._cumulative(risk * self.x)
        s2 = self._cumulative(risk * self.x * self.x)
        d = self.d
        if not d.any():
            raise NoEstimate("no events")
        g = self.group[d]
        wd = self.w[d]
        if ties == "breslow":
            ll = float(np.sum(wd * (beta * self.x[d] - np.log(s0[d]))))
            xbar = s1[d] / s0[d]
            score = float(np.sum(wd * (self.x[d] - xbar)))
            info = float(np.sum(wd * (s2[d] / s0[d] - xbar**2)))
            return ll, score, info, s0
        # Efron: the k-th of m tied events sees the risk set less k/m of the tied events.
        m = np.bincount(g, minlength=self.n_groups)
        e0 = np.bincount(g, weights=risk[d], minlength=self.n_groups)
        e1 = np.bincount(g, weights=risk[d] * self.x[d], minlength=self.n_groups)
        e2 = np.bincount(g, weights=risk[d] * self.x[d] ** 2, minlength=self.n_groups)
        wsum = np.bincount(g, weights=wd, minlength=self.n_groups)
        first = np.r_[True, g[1:] != g[:-1]]
        idx = np.arange(len(g))
        start = np.maximum.accumulate(np.where(first, idx, 0))
        rank = idx - start
        f = rank / m[g]
        mean_w = wsum[g] / m[g]
        a0 = s0[d] - f * e0[g]
        a1 = s1[d] - f * e1[g]
        a2 = s2[d] - f * e2[g]
        ll = float(np.sum(wd * beta * self.x[d]) - np.sum(mean_w * np.log(a0)))
        score = float(np.sum(wd * self.x[d]) - np.sum(mean_w * a1 / a0))
        info = float(np.sum(mean_w * (a2 / a0 - (a1 / a0) ** 2)))
        return ll, score, info, s0

    def robust_breslow(self, beta: float, info: float, cluster: np.ndarray | None) -> float:
        """Lin-Wei sandwich variance with Breslow's score residuals."""
        return self.meat(beta, cluster) / info**2

    def meat(self, beta: float, cluster: np.ndarray | None) -> float:
        """The sandwich's middle: the sum over clusters of their squared weighted Breslow
        score residuals (additive over strata, so over sites)."""
        risk = np.exp(beta * self.x)
        s0 = self._cumulative(self.w * risk)
        s1 = self._cumulative(self.w * risk * self.x)
        d = self.d
        # Per event group: the weighted events over S0, and times the risk-set mean.
        g = self.group
        dw = np.bincount(g[d], weights=self.w[d], minlength=self.n_groups)
        s0g = np.zeros(self.n_groups)
        s1g = np.zeros(self.n_groups)
        s0g[g] = s0
        s1g[g] = s1
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(dw > 0, dw / s0g, 0.0)  # hazard increments
            hx = np.where(dw > 0, dw * s1g / s0g**2, 0.0)
        # A row is at risk at every event time of its stratum at or before its own time:
        # cumulate the increments from the earliest time (the end of the sorted stratum).
        cum_h = _reverse_cumsum_by(h, self._group_stratum())
        cum_hx = _reverse_cumsum_by(hx, self._group_stratum())
        xbar_own = np.where(s0 > 0, s1 / s0, 0.0)
        resid = d * (self.x - xbar_own) - risk * (self.x * cum_h[g] - cum_hx[g])
        contribution = self.w * resid
        if cluster is not None:
            ids = np.asarray(cluster)[self.order]
            _, inverse = np.unique(ids, return_inverse=True)
            contribution = np.bincount(inverse, weights=contribution)
        return float(np.sum(contribution**2))

    def _group_stratum(self) -> np.ndarray:
        out = np.zeros(self.n_groups, dtype=np.int64)
        out[self.group] = self.s
        return out


def _reverse_cumsum_by(values: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    """Per group, the sum of ``values`` over the groups of its stratum at or after it in
    the (descending-time) order, i.e. at or before its time."""
    out = np.empty_like(values)
    bounds = np.flatnonzero(np.r_[True, stratum[1:] != stratum[:-1], True])
    for a, b in itertools.pairwise(bounds):
        out[a:b] = np.cumsum(values[a:b][::-1])[::-1]
    return out


def fit(
    time: np.ndarray,
    event: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray | None = None,
    stratum: np.ndarray | None = None,
    ties: Ties = "breslow",
    interval: Interval = "wald",
    robust: bool = False,
    cluster: np.ndarray | None = None,
) -> CoxFit:
    """Maximize the (weighted, stratified) partial likelihood of one covariate."""
    data = RiskData(time, event, x, weight, stratum)
    beta, ll, info = maximize(lambda b: data.sums(b, ties)[:3])
    se = math.sqrt(1 / info)
    if robust:
        if ties == "efron" and weight is not None:
            se = _lifelines_robust_se(time, event, x, weight, stratum, cluster)
        else:
            se = math.sqrt(data.robust_breslow(beta, info, cluster))
    if interval == "profile":
        low, high = _profile(data, beta, ll, se, ties)
    else:
        low, high = beta - _Z * se, beta + _Z * se
    p = float(2 * norm.sf(abs(beta / se)))
    return CoxFit(beta, se, low, high, p)


def maximize(sums: Callable[[float], tuple[float, float, float]]) -> tuple[float, float, float]:
    """Newton's method on a log partial likelihood given by ``sums(beta)`` (its value, score
    and information): steps capped at 5, halved while the likelihood falls; the maximum's
    beta, log likelihood and information. Raises :class:`NoEstimate` when there is none."""
    beta = 0.0
    ll, score, info = sums(beta)
    for _ in range(100):
        if info <= 1e-12:
            raise NoEstimate("no information on the coefficient")
        step = score / info
        step = max(-5.0, min(5.0, step))
        candidate = beta + step
        new = sums(candidate)
        halvings = 0
        while new[0] < ll - 1e-12 and halvings < 30:
            step /= 2
            candidate = beta + step
            new = sums(candidate)
            halvings += 1
        beta, (ll, score, info) = candidate, new
        if abs(step) < 1e-10:
            break
        if abs(beta) > 30:
            raise NoEstimate(f"the log hazard ratio runs off to {beta:+.0f} (monotone likelihood)")
    if info <= 1e-12 or not math.isfinite(beta):
        raise NoEstimate("no information on the coefficient")
    return beta, ll, info


def _profile(data: RiskData, beta: float, ll: float, se: float, ties: Ties) -> tuple[float, float]:
    """Where the log partial likelihood falls chi2(0.95, 1) / 2 below its maximum."""

    def drop(b: float) -> float:
        return data.sums(b, ties)[0] - (ll - _DROP)

    bounds = []
    for sign in (-1.0, 1.0):
        width = max(se, 1e-3)
        far = beta + sign * width
        for _ in range(60):
            if drop(far) < 0:
                break
            width *= 2
            far = beta + sign * width
        else:
            bounds.append(sign * math.inf)
            continue
        bounds.append(brentq(drop, min(beta, far), max(beta, far), xtol=1e-10))
    return bounds[0], bounds[1]


def _lifelines_robust_se(
    time: np.ndarray,
    event: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stratum: np.ndarray | None,
    cluster: np.ndarray | None,
) -> float:
    import pandas as pd
    from lifelines import CoxPHFitter

    frame = pd.DataFrame({"t": time, "e": event, "x": x, "w": weight})
    kwargs: dict[str, object] = {"weights_col": "w", "robust": True}
    if stratum is not None:
        frame["s"] = stratum
        kwargs["strata"] = ["s"]
    if cluster is not None:
        frame["c"] = cluster
        kwargs["cluster_col"] = "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = CoxPHFitter().fit(frame, duration_col="t", event_col="e", **kwargs)  # type: ignore[arg-type]
    return float(fitted.summary.loc["x", "se(coef)"])
