"""Federated Cox proportional hazards stratified by site, exact: the log partial likelihood
of a site-stratified model is the sum of the sites' own, so each round every site returns
its gradient, information matrix and log partial likelihood at the current coefficients
(Breslow or Efron ties), the hub adds them (securely) and takes the Newton step. At
convergence the fit is the pooled one with ``strata=site`` (statsmodels ``PHReg``, lifelines
``CoxPHFitter(strata=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medlab.analyses.federated.packing import pack, unpack

Ties = Literal["breslow", "efron"]
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class CoxContribution:
    """One site's (one stratum's) sums at the current coefficients."""

    information: np.ndarray  # minus the Hessian of the log partial likelihood
    gradient: np.ndarray
    loglik: float
    events: int

    def flat(self) -> list[float]:
        """As one vector (upper triangle of the information, gradient, log likelihood,
        events)."""
        return pack(self.information, self.gradient, self.loglik, self.events)

    @staticmethod
    def unflat(values: list[float], p: int) -> CoxContribution:
        """The sum of several sites' :meth:`flat` vectors."""
        information, gradient, (loglik, events) = unpack(values, p, 2)
        return CoxContribution(information, gradient, loglik, round(events))


def contribution(
    time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: np.ndarray, ties: Ties
) -> CoxContribution:
    """The log partial likelihood of one stratum, its gradient and information at ``beta``."""
    order = np.argsort(-time, kind="stable")
    t, d, z = time[order], event[order].astype(bool), x[order]
    risk = np.exp(z @ beta)
    s0 = np.cumsum(risk)
    s1 = np.cumsum(risk[:, None] * z, axis=0)
    s2 = np.cumsum(risk[:, None, None] * z[:, :, None] * z[:, None, :], axis=0)
    p = len(beta)
    gradient, information, loglik = np.zeros(p), np.zeros((p, p)), 0.0
    times = np.unique(t[d])
    for u in times:
        last = np.searchsorted(-t, -u, side="right") - 1  # the risk set: rows with t >= u
        dead = np.flatnonzero((t == u) & d)
        k = len(dead)
        zd = z[dead]
        loglik += float(np.sum(zd @ beta))
        gradient += zd.sum(axis=0)
        fractions = np.arange(k) / k if ties == "efron" else np.zeros(k)
        r0, r1, r2 = risk[dead].sum(), (risk[dead, None] * zd).sum(axis=0), None
        if ties == "efron":
            r2 = (risk[dead, None, None] * zd[:, :, None] * zd[:, None, :]).sum(axis=0)
        for f in fractions:
            a0 = s0[last] - f * r0
            a1 = s1[last] - f * r1
            a2 = s2[last] - (f * r2 if r2 is not None else 0.0)
            mean = a1 / a0
            loglik -= float(np.log(a0))
            gradient -= mean
            information += a2 / a0 - np.outer(mean, mean)
    return CoxContribution(information, gradient, loglik, int(d.sum()))


@dataclass(frozen=True)
class FederatedCox:
    """The pooled site-stratified fit."""

    coefficients: np.ndarray
    standard_errors: np.ndarray
    loglik: float
    events: int
    iterations: int
    converged: bool


def fit(
    total: Callable[[np.ndarray], CoxContribution],
    p: int,
    tolerance: float = 1e-10,
    max_iterations: int = MAX_ITERATIONS,
) -> FederatedCox:
    """Newton's method (step-halving when the likelihood falls) on the summed sites."""
    beta = np.zeros(p)
    current = total(beta)
    for iteration in range(1, max_iterations + 1):
        step = np.linalg.solve(current.information, current.gradient)
        candidate = total(beta + step)
        halvings = 0
        while candidate.loglik < current.loglik - 1e-12 and halvings < 30:
            step = step / 2
            candidate = total(beta + step)
            halvings += 1
        beta, current = beta + step, candidate
        if float(np.max(np.abs(step))) < tolerance:
            return _result(current, beta, iteration, True)
    return _result(current, beta, max_iterations, False)


def _result(summed: CoxContribution, beta: np.ndarray, iterations: int, ok: bool) -> FederatedCox:
    se = np.sqrt(np.diag(np.linalg.inv(summed.information)))
    return FederatedCox(beta, se, summed.loglik, summed.events, iterations, ok)
