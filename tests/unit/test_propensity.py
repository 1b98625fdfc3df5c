"""The Cyclops-style propensity model against independent fits at the same penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from medlab.analyses import propensity as pm

RNG = np.random.default_rng(8)


def _data(n: int = 3000, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    x = (RNG.random((n, k)) < 0.3).astype(float)
    eta = -0.5 + x @ np.array([1.0, -1.0, 0.5, 0.0, 0.0, 0.2, 0.0, 0.8][:k])
    y = (RNG.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    return x, y


@pytest.mark.parametrize("variance", [0.01, 0.1, 1.0])
def test_laplace_prior_is_an_l1_penalty_with_the_intercept_unpenalized(variance: float) -> None:
    # Cyclops: Laplace prior variance v <=> penalty sqrt(2 / v) * sum |b_j|, intercept excluded.
    x, y = _data()
    fitted = pm.propensity_model(sparse.csr_matrix(x), y, "laplace", variance)
    lam = math.sqrt(2 / variance)
    reference = sm.Logit(y, sm.add_constant(x)).fit_regularized(
        alpha=np.r_[0.0, np.full(x.shape[1], lam)], disp=0, acc=1e-14, trim_mode="off"
    )
    ours = np.r_[fitted.intercept, np.zeros(x.shape[1])]
    ours[1 + fitted.kept] = fitted.coefficients
    np.testing.assert_allclose(ours, reference.params, atol=1e-4)
    saga = LogisticRegression(
        C=math.sqrt(variance / 2), l1_ratio=1.0, solver="saga", tol=1e-12, max_iter=100_000
    ).fit(x, y)
    np.testing.assert_allclose(ours, np.r_[saga.intercept_, saga.coef_[0]], atol=1e-4)


def test_normal_prior_solves_the_penalized_score_equations() -> None:
    x, y = _data()
    variance = 0.05
    fitted = pm.propensity_model(sparse.csr_matrix(x), y, "normal", variance)
    p = fitted.scores
    beta = fitted.coefficients
    score = x[:, fitted.kept].T @ (y - p)
    np.testing.assert_allclose(score, beta / variance, atol=1e-5)  # d/db: X'(y-p) = b / v
    assert abs(np.sum(y - p)) < 1e-4  # the intercept is not penalized


def test_cross_validation_picks_the_grid_variance_with_the_best_held_out_likelihood() -> None:
    x, y = _data(1500)
    chosen, means = pm.cross_validate(sparse.csr_matrix(x), y, "laplace", folds=5, seed=1)
    assert chosen == pm.GRID[int(np.argmax(means))]
    assert len(means) == len(pm.GRID) == 10
    assert pm.GRID[0] == pytest.approx(0.01) and pm.GRID[-1] == pytest.approx(20)
    again, _ = pm.cross_validate(sparse.csr_matrix(x), y, "laplace", folds=5, seed=1)
    assert again == chosen  # fixed seed: the same folds


def test_tidy_drops_rare_and_universal_covariates() -> None:
    n = 5000
    x = np.zeros((n, 3))
    x[:4, 0] = 1  # 0.08% of rows: below tidyCovariateData's 0.1%
    x[:, 1] = 1  # everyone
    x[: n // 2, 2] = 1
    assert list(pm.tidy(sparse.csr_matrix(x))) == [2]
    # Continuous covariates (scaled by their maximum) are kept however rarely nonzero, and
    # dropped only when every row has the same value.
    age = np.linspace(0.2, 1.0, n)
    rare_score = np.zeros(n)
    rare_score[:3] = [0.5, 1.0, 0.25]
    same = np.full(n, 0.7)
    columns = np.column_stack([x, age, rare_score, same])
    assert list(pm.tidy(sparse.csr_matrix(columns))) == [2, 3, 4]


def test_separation_is_warned() -> None:
    x = np.r_[np.ones((200, 1)), np.zeros((200, 1))]
    y = np.r_[np.ones(195), np.zeros(5), np.zeros(195), np.ones(5)].astype(int)
    with pytest.warns(pm.SeparationWarning, match="AUC"):
        pm.propensity_model(sparse.csr_matrix(x), y, "laplace", 1.0)


def test_large_arms_are_sampled_for_the_fit_and_the_intercept_corrected(monkeypatch) -> None:
    # createPs: arms above maxCohortSizeForFitting are sampled; King & Zeng's correction
    # brings the intercept back to the full population's odds.
    monkeypatch.setattr(pm, "MAX_FIT_ROWS", 500)
    n = 4000
    x = (RNG.random((n, 2)) < 0.4).astype(float)
    y = (RNG.random(n) < 1 / (1 + np.exp(-(-1.0 + x @ [0.7, -0.4])))).astype(int)
    fitted = pm.propensity_model(sparse.csr_matrix(x), y, "normal", 1e6)
    assert fitted.scores.mean() == pytest.approx(y.mean(), abs=0.02)
