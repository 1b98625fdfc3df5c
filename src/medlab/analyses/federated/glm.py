"""Federated generalized linear models by Newton's method (iteratively reweighted least
squares), as DataSHIELD's ``ds.glm``: each round every site returns, at the current
coefficients, ``X'WX``, the score ``X'(y - mu)`` (for the canonical links logistic, Poisson
with offset and linear), its deviance and its row count; the hub adds them (securely) and
takes the Newton step. At convergence the coefficients and standard errors are the pooled
maximum-likelihood fit's (statsmodels ``GLM`` on the union: Binomial, Poisson with
``offset``, Gaussian with the scale ``RSS / (n - p)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medlab.analyses.federated.packing import pack, unpack

Family = Literal["logistic", "poisson", "linear"]
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class Contribution:
    """One site's sums at the current coefficients."""

    information: np.ndarray  # X'WX, p x p
    score: np.ndarray  # X'(y - mu), p
    deviance: float
    n: int

    def flat(self) -> list[float]:
        """As one vector (the upper triangle of the information, the score, deviance, n)."""
        return pack(self.information, self.score, self.deviance, self.n)

    @staticmethod
    def unflat(values: list[float], p: int) -> Contribution:
        """The sum of several sites' :meth:`flat` vectors, as a contribution."""
        information, score, (deviance, n) = unpack(values, p, 2)
        return Contribution(information, score, deviance, round(n))


def _mean(eta: np.ndarray, family: Family) -> np.ndarray:
    if family == "logistic":
        return np.asarray(1 / (1 + np.exp(-eta)))
    if family == "poisson":
        return np.asarray(np.exp(eta))
    return eta


def _deviance(y: np.ndarray, mu: np.ndarray, family: Family) -> float:
    if family == "logistic":
        eps = 1e-300
        return float(-2 * np.sum(y * np.log(mu + eps) + (1 - y) * np.log(1 - mu + eps)))
    if family == "poisson":
        ratio = np.where(y > 0, y / np.where(mu > 0, mu, 1), 1.0)
        return float(2 * np.sum(np.where(y > 0, y * np.log(ratio), 0.0) - (y - mu)))
    return float(np.sum((y - mu) ** 2))


def contribution(
    x: np.ndarray,
    y: np.ndarray,
    beta: np.ndarray,
    family: Family,
    offset: np.ndarray | None = None,
) -> Contribution:
    """A site's sums at ``beta`` (its rows ``x``, outcomes ``y``; Poisson ``offset``: log
    exposure)."""
    eta = x @ beta + (0.0 if offset is None else offset)
    mu = _mean(eta, family)
    weight = mu * (1 - mu) if family == "logistic" else (mu if family == "poisson" else 1.0)
    information = (x * np.asarray(weight).reshape(-1, 1) if family != "linear" else x).T @ x
    return Contribution(information, x.T @ (y - mu), _deviance(y, mu, family), len(y))


@dataclass(frozen=True)
class FederatedFit:
    """The pooled fit: coefficients, standard errors, deviance, rows, Newton iterations."""

    coefficients: np.ndarray
    standard_errors: np.ndarray
    deviance: float
    n: int
    iterations: int
    converged: bool


def fit(
    total: Callable[[np.ndarray], Contribution],
    p: int,
    family: Family,
    tolerance: float = 1e-10,
    max_iterations: int = MAX_ITERATIONS,
) -> FederatedFit:
    """Newton's method on the summed contributions; ``total(beta)`` is one round (every
    site's contribution at ``beta``, added — securely, in the federation)."""
    beta = np.zeros(p)
    previous = math.inf
    for iteration in range(1, max_iterations + 1):
        summed = total(beta)
        step = np.linalg.solve(summed.information, summed.score)
        beta = beta + step
        change = abs(previous - summed.deviance) / (abs(summed.deviance) + 0.1)
        previous = summed.deviance
        if float(np.max(np.abs(step))) < tolerance or change < tolerance * 1e-2:
            final = total(beta)  # the information at the solution, for the errors
            return _result(final, beta, family, iteration, True)
    return _result(total(beta), beta, family, max_iterations, False)


def _result(
    summed: Contribution, beta: np.ndarray, family: Family, iterations: int, converged: bool
) -> FederatedFit:
    covariance = np.linalg.inv(summed.information)
    if family == "linear":
        covariance = covariance * summed.deviance / (summed.n - len(beta))
    return FederatedFit(
        beta, np.sqrt(np.diag(covariance)), summed.deviance, summed.n, iterations, converged
    )
