"""The propensity model as CohortMethod fits it (``createPs`` with Cyclops).

A logistic regression of treatment on the baseline covariates with a prior on every
coefficient except the intercept (``createPrior("laplace", exclude = c(0))``): a Laplace
prior of variance ``v`` is the L1 penalty ``sqrt(2 / v) * sum |b_j|`` on the log-likelihood,
a normal prior of variance ``v`` the L2 penalty ``sum b_j^2 / (2 v)``. The variance is fixed
when given, otherwise chosen by k-fold cross-validation of the held-out log-likelihood over
Cyclops's log-uniform grid (``createControl(cvType = "grid")``: 0.01 to 20 in 10 steps; the
rows are permuted once by a fixed seed and cut into folds, as Cyclops's
``CrossValidationSelector``), one repetition. CohortMethod's ``createPs`` asks Cyclops for
its adaptive search (``cvType = "auto"``) with 10 repetitions over the same held-out
likelihood; the grid is Cyclops's documented alternative. The Laplace fit is medlab's own
orthant-wise Newton solver (exact to the optimality conditions, 1e-8); the normal-prior fit
is scikit-learn's lbfgs, whose intercept is unpenalized.

Covariates are used as ``FeatureExtraction::tidyCovariateData`` leaves them: binary
indicators as they are and continuous ones divided by their maximum (done when they are
built), covariates present in fewer than 0.1% of the rows dropped (``minFraction = 0.001``)
and covariates present in every row dropped as redundant. Nothing is standardized to unit
variance (Cyclops does not). As ``createPs``, when an arm has more than 250,000 rows it is
sampled (fixed seed) for the fit and the intercept corrected to the full population (King
and Zeng 2001, equation 7); every row then gets its score. Scores are rounded to 10 digits
as ``createPs`` rounds them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import sklearn
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

Prior = Literal["laplace", "normal", "none"]

# Cyclops createControl(cvType = "grid") defaults.
GRID = tuple(math.exp(math.log(0.01) + i * (math.log(20) - math.log(0.01)) / 9) for i in range(10))
MAX_FIT_ROWS = 250_000  # createPs(maxCohortSizeForFitting = 250000)
MIN_FRACTION = 0.001  # tidyCovariateData(minFraction = 0.001)
SEPARATION_AUC = 0.95


class SeparationWarning(UserWarning):
    """The propensity model nearly separates the arms (AUC above 0.95)."""


@dataclass(frozen=True)
class PsFit:
    """Scores per row, the prior variance used (chosen or fixed), the coefficients
    (intercept first) on the kept covariates, and the AUC."""

    scores: np.ndarray
    variance: float | None
    intercept: float
    coefficients: np.ndarray
    kept: np.ndarray
    auc: float


def tidy(x: sparse.csr_matrix) -> np.ndarray:
    """The columns FeatureExtraction's tidyCovariateData keeps: not the same value in every
    row, and, for a binary covariate, present in at least 0.1% of rows (continuous ones,
    already scaled by their maximum, are kept whatever their frequency)."""
    n = x.shape[0]
    csc = x.tocsc()
    present = np.diff(csc.indptr)
    high = np.asarray(csc.max(axis=0).todense()).ravel()
    low = np.asarray(csc.min(axis=0).todense()).ravel()
    binary = np.array(
        [np.all(csc.data[csc.indptr[j] : csc.indptr[j + 1]] == 1.0) for j in range(x.shape[1])],
        dtype=bool,
    )
    constant = (present == n) & (high == low)
    frequent = ~binary | (present >= MIN_FRACTION * n)
    return np.flatnonzero(frequent & ~constant & (present > 0))


def _sklearn_at_least(major: int, minor: int) -> bool:
    parts = sklearn.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def _expit(eta: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-np.clip(eta, -700, 700))))


@dataclass
class _Start:
    """A warm start: intercept and coefficients of a previous fit."""

    intercept: float
    beta: np.ndarray


def _objective(x: sparse.csr_matrix, y: np.ndarray, lam: float, fit: _Start) -> float:
    eta = fit.intercept + np.asarray(x @ fit.beta).ravel()
    # -log-likelihood of a logistic model, computed stably: log(1 + e^eta) - y * eta.
    return float(np.sum(np.logaddexp(0, eta) - y * eta) + lam * np.abs(fit.beta).sum())


def _laplace(
    x: sparse.csr_matrix, y: np.ndarray, lam: float, start: _Start | None, tol: float = 1e-8
) -> _Start:
    """Minimize -log-likelihood + ``lam`` * sum |b_j| (intercept unpenalized) by
    orthant-wise Newton steps: on the coordinates that are nonzero or whose subgradient
    says they should move, a Newton step of the smooth objective within their orthant,
    projected back onto it (a coefficient that would change sign stops at zero) with a
    backtracking line search; until the optimality (KKT) conditions hold to ``tol``."""
    n, k = x.shape
    if start is None:
        share = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
        start = _Start(math.log(share / (1 - share)), np.zeros(k))
    fit = _Start(start.intercept, start.beta.copy())
    value = _objective(x, y, lam, fit)
    xt = x.T.tocsr()
    for _ in range(200):
        eta = fit.intercept + np.asarray(x @ fit.beta).ravel()
        p = _expit(eta)
        g = np.asarray(xt @ (p - y)).ravel()
        beta = fit.beta
        pseudo = np.where(
            beta != 0,
            g + lam * np.sign(beta),
            np.where(g > lam, g - lam, np.where(g < -lam, g + lam, 0.0)),
        )
        g0 = float(np.sum(p - y))
        if max(abs(g0), float(np.max(np.abs(pseudo), initial=0.0))) < tol * max(1.0, n / 1000):
            break
        free = np.flatnonzero((beta != 0) | (pseudo != 0))
        orthant = np.where(beta[free] != 0, np.sign(beta[free]), -np.sign(pseudo[free]))
        w = p * (1 - p)
        xf = x[:, free]
        weighted = xf.multiply(w[:, None]).tocsc()
        h = np.empty((len(free) + 1, len(free) + 1))
        h[0, 0] = w.sum()
        h[0, 1:] = h[1:, 0] = np.asarray(weighted.sum(axis=0)).ravel()
        h[1:, 1:] = (xf.T @ weighted).toarray()
        h[np.diag_indices_from(h)] += 1e-10 * max(1.0, float(np.trace(h)) / len(h))
        gradient = np.r_[g0, pseudo[free]]
        try:
            step = -np.linalg.solve(h, gradient)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(h, gradient, rcond=None)[0]
        t = 1.0
        for _ in range(60):
            candidate = beta.copy()
            moved = beta[free] + t * step[1:]
            moved[moved * orthant < 0] = 0.0  # projected onto the orthant
            candidate[free] = moved
            trial = _Start(fit.intercept + t * step[0], candidate)
            new_value = _objective(x, y, lam, trial)
            if new_value <= value - 1e-4 * t * abs(float(gradient @ step)) or new_value < value:
                break
            t /= 2
        else:
            break
        improvement = value - new_value
        fit, value = trial, new_value
        if improvement <= 1e-14 * max(1.0, abs(value)):
            break
    return fit


def _fit(
    x: sparse.csr_matrix,
    y: np.ndarray,
    prior: Prior,
    variance: float | None,
    start: _Start | None = None,
) -> _Start:
    """The penalized maximum-likelihood fit (the intercept never penalized)."""
    if prior == "laplace":
        assert variance is not None and variance > 0
        return _laplace(sparse.csr_matrix(x), y.astype(float), math.sqrt(2 / variance), start)
    if prior == "none":
        kind: dict[str, object] = {"C": np.inf} if _sklearn_at_least(1, 8) else {"penalty": None}
    else:
        # sklearn's lbfgs minimizes ||w||^2 / 2 + C * loss, the intercept unpenalized: a
        # normal prior of variance C.
        assert variance is not None and variance > 0
        kind = {"C": variance, **({"l1_ratio": 0.0} if _sklearn_at_least(1, 8) else {})}
    model = LogisticRegression(solver="lbfgs", tol=1e-10, max_iter=10_000, **kind)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes on separable folds
        model.fit(x, y)
    return _Start(float(model.intercept_[0]), np.asarray(model.coef_[0]))


def _predict(x: sparse.csr_matrix, intercept: float, beta: np.ndarray) -> np.ndarray:
    return _expit(np.asarray(x @ beta).ravel() + intercept)


def cross_validate(
    x: sparse.csr_matrix,
    y: np.ndarray,
    prior: Prior,
    folds: int = 10,
    seed: int = 1,
    grid: tuple[float, ...] = GRID,
) -> tuple[float, list[float]]:
    """The grid variance with the highest mean held-out log-likelihood, and every mean.
    Each fold walks the grid from the smallest variance up, warm-started."""
    order = np.random.default_rng(seed).permutation(len(y))
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % folds
    totals: list[list[float]] = [[] for _ in grid]
    for k in range(folds):
        train, test = fold != k, fold == k
        if len(set(y[train])) < 2:
            continue
        start = None
        for i, variance in enumerate(grid):
            start = _fit(x[train], y[train], prior, variance, start)
            p = np.clip(_predict(x[test], start.intercept, start.beta), 1e-15, 1 - 1e-15)
            totals[i].append(float(np.sum(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p))))
    means = [float(np.mean(t)) if t else -math.inf for t in totals]
    return grid[int(np.argmax(means))], means


def propensity_model(
    x: sparse.csr_matrix,
    treatment: np.ndarray,
    prior: Prior = "laplace",
    variance: float | None = None,
    folds: int = 10,
    seed: int = 1,
) -> PsFit:
    """Fit the propensity model (variance None: cross-validated) and score every row."""
    kept = tidy(x)
    xs = x[:, kept].tocsr()
    y = np.asarray(treatment, dtype=np.int64)
    rows = np.arange(len(y))
    sampled = False
    rng = np.random.default_rng(0)
    fit_rows = []
    for arm in (1, 0):
        members = rows[y == arm]
        if len(members) > MAX_FIT_ROWS:
            members = np.sort(rng.choice(members, MAX_FIT_ROWS, replace=False))
            sampled = True
        fit_rows.append(members)
    chosen = np.sort(np.concatenate(fit_rows))
    xf, yf = xs[chosen], y[chosen]
    if prior != "none" and variance is None:
        variance, _ = cross_validate(xf, yf, prior, folds, seed)
    fitted = _fit(xf, yf, prior, variance)
    b0, beta = fitted.intercept, fitted.beta
    if sampled:
        sample_share, full_share = yf.mean(), y.mean()
        b0 -= math.log(sample_share / (1 - sample_share)) - math.log(full_share / (1 - full_share))
    scores = np.round(_predict(xs, b0, beta), 10)
    auc = float(roc_auc_score(y, scores)) if len(set(y)) == 2 else math.nan
    if auc > SEPARATION_AUC:
        warnings.warn(
            f"the propensity model nearly separates the arms (AUC {auc:.3f} > "
            f"{SEPARATION_AUC}); few persons are comparable",
            SeparationWarning,
            stacklevel=2,
        )
    return PsFit(scores, variance, b0, beta, kept, auc)
