"""The federated propensity model: the same penalized logistic regression as the
comparative analysis (:mod:`medlab.analyses.propensity`: Laplace or normal prior on every
coefficient but the intercept, at a given prior variance), fitted across sites so that every
site scores its patients with one model. Each round every site returns, at the current
coefficients, its log-likelihood, gradient and information matrix (intercept first); the
hub adds them (securely) and takes the step: orthant-wise Newton with a backtracking line
search for the Laplace prior (each trial point is one more round), plain Newton for the
normal prior and none. The optimum is the pooled fit's (the objective is convex).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from medlab.analyses.federated.packing import pack, unpack
from medlab.analyses.propensity import Prior

MAX_ITERATIONS = 200
MAX_STEP = 1.0  # the largest change of any coefficient in one step


@dataclass(frozen=True)
class PsSums:
    """One site's (or the total) log-likelihood, gradient of the negative log-likelihood and
    its Hessian, over the intercept and the coefficients."""

    loglik: float
    gradient: np.ndarray  # (k + 1,)
    hessian: np.ndarray  # (k + 1, k + 1)

    def flat(self) -> list[float]:
        """As one vector (the Hessian's upper triangle, the gradient, the log-likelihood)."""
        return pack(self.hessian, self.gradient, self.loglik)

    @staticmethod
    def unflat(values: list[float], k: int) -> PsSums:
        """The sum of several sites' :meth:`flat` vectors."""
        hessian, gradient, (loglik,) = unpack(values, k + 1, 1)
        return PsSums(loglik, gradient, hessian)


def sums(
    x: sparse.csr_matrix | np.ndarray, y: np.ndarray, intercept: float, beta: np.ndarray
) -> PsSums:
    """A site's sums at (``intercept``, ``beta``)."""
    design = sparse.hstack(
        [sparse.csr_matrix(np.ones((x.shape[0], 1))), sparse.csr_matrix(x)]
    ).tocsr()
    eta = intercept + np.asarray(x @ beta).ravel()
    p = 1 / (1 + np.exp(-eta))
    loglik = float(-np.sum(np.logaddexp(0, eta) - y * eta))
    gradient = np.asarray(design.T @ (p - y)).ravel()
    weighted = design.multiply((p * (1 - p))[:, None]).tocsc()
    hessian = (design.T @ weighted).toarray()
    return PsSums(loglik, gradient, hessian)


def _newton(
    hessian: np.ndarray, g0: float, pseudo: np.ndarray, free: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """The (capped) Newton step over the intercept and the ``free`` coefficients, and the
    (pseudo-)gradient it is for."""
    index = np.r_[0, free + 1]
    h = hessian[np.ix_(index, index)].copy()
    h[1:, 1:] += ridge * np.eye(len(free))
    h[np.diag_indices_from(h)] += 1e-10 * max(1.0, float(np.trace(h)) / len(h))
    gradient = np.r_[g0, pseudo[free]]
    step = -np.linalg.solve(h, gradient)
    # Near-collinear covariates make the information nearly singular and the Newton step
    # huge; capping it (a trust region) spares the line search dozens of rounds.
    largest = float(np.max(np.abs(step)))
    if largest > MAX_STEP:
        step *= MAX_STEP / largest
    return step, gradient


@dataclass(frozen=True)
class FederatedPs:
    """The pooled penalized fit."""

    intercept: float
    coefficients: np.ndarray
    rounds: int
    converged: bool


def fit(
    total: Callable[[float, np.ndarray], PsSums],
    k: int,
    prior: Prior,
    variance: float | None,
    tolerance: float = 1e-8,
) -> FederatedPs:
    """The penalized maximum-likelihood fit from summed rounds (``total(intercept, beta)``)."""
    walk = steps(k, prior, variance, tolerance)
    point = next(walk)
    while True:
        try:
            point = walk.send(total(*point))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


Steps = Generator[tuple[float, np.ndarray], PsSums, FederatedPs]


def steps(k: int, prior: Prior, variance: float | None, tolerance: float = 1e-8) -> Steps:
    """:func:`fit` as a generator: it yields each point (intercept, coefficients) whose
    summed sums it is sent, and returns the fit (so that many fits run side by side)."""
    lam = math.sqrt(2 / variance) if prior == "laplace" and variance else 0.0
    ridge = 1 / variance if prior == "normal" and variance else 0.0
    rounds = 0

    def round_(b0: float, beta: np.ndarray) -> Generator[tuple[float, np.ndarray], PsSums, PsSums]:
        nonlocal rounds
        rounds += 1
        return (yield b0, beta)

    def objective(s: PsSums, beta: np.ndarray) -> float:
        return -s.loglik + lam * float(np.abs(beta).sum()) + ridge * float(beta @ beta) / 2

    b0, beta = 0.0, np.zeros(k)
    current = yield from round_(b0, beta)
    n = float(current.hessian[0, 0]) * 4  # the intercept's information at p = 1/2 is n/4
    for _ in range(MAX_ITERATIONS):
        g = current.gradient.copy()
        g[1:] += ridge * beta
        if lam:
            pseudo = np.where(
                beta != 0,
                g[1:] + lam * np.sign(beta),
                np.where(g[1:] > lam, g[1:] - lam, np.where(g[1:] < -lam, g[1:] + lam, 0.0)),
            )
        else:
            pseudo = g[1:]
        if max(abs(g[0]), float(np.max(np.abs(pseudo), initial=0.0))) < tolerance * max(
            1.0, n / 1000
        ):
            return FederatedPs(b0, beta, rounds, True)
        free = np.flatnonzero((beta != 0) | (pseudo != 0))
        while True:
            step, gradient = _newton(current.hessian, g[0], pseudo, free, ridge)
            orthant = np.where(beta[free] != 0, np.sign(beta[free]), -np.sign(pseudo[free]))
            # A coefficient at zero whose Newton move leaves its orthant would be projected
            # back to zero at once, and the other moves (solved with it) be no descent: the
            # line search would halve the step dozens of rounds. Solve without it.
            leaving = (beta[free] == 0) & (step[1:] * orthant < 0)
            if not leaving.any():
                break
            free = free[~leaving]
        value, t = objective(current, beta), 1.0
        for _ in range(60):
            moved = beta[free] + t * step[1:]
            if lam:
                moved[moved * orthant < 0] = 0.0
            candidate = beta.copy()
            candidate[free] = moved
            trial = yield from round_(b0 + t * step[0], candidate)
            new = objective(trial, candidate)
            if new <= value - 1e-4 * t * abs(float(gradient @ step)) or new < value:
                break
            t /= 2
        else:
            return FederatedPs(b0, beta, rounds, False)
        b0, beta, current = b0 + t * step[0], candidate, trial
        if value - new <= 1e-14 * max(1.0, abs(value)):
            return FederatedPs(b0, beta, rounds, True)
    return FederatedPs(b0, beta, rounds, False)
