"""Federated GLMs by Newton's method over securely summed contributions equal the pooled
statsmodels fit: coefficients to 1e-8, standard errors to 1e-6, split into 3 and 10 uneven
sites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm

from medlab.analyses.federated import glm
from medlab.ledger.keys import Signer
from medlab.privacy.secagg.inprocess import secure_sum


def _data(family: glm.Family, n: int = 3000, seed: int = 1):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [np.ones(n), rng.normal(size=n), rng.binomial(1, 0.3, n), rng.uniform(0, 2, n)]
    )
    beta = np.array([-0.5, 0.8, -0.4, 0.3])
    offset = np.log(rng.uniform(0.5, 3.0, n))
    eta = x @ beta
    if family == "logistic":
        y = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta + offset)).astype(float)
    else:
        y = eta + rng.normal(0, 1.5, n)
    return x, y, offset


def _split(n: int, sites: int, seed: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(50, n - 50), sites - 1, replace=False))
    return np.split(rng.permutation(n), cuts)  # uneven sites


@pytest.mark.parametrize("family", ["logistic", "poisson", "linear"])
@pytest.mark.parametrize("sites", [3, 10])
def test_the_federated_fit_is_the_pooled_fit(
    family: glm.Family, sites: int, tmp_path: Path
) -> None:
    x, y, offset = _data(family)
    parts = _split(len(y), sites)
    signers = {f"site_{i}": Signer.load_or_create(tmp_path / f"site_{i}.key") for i in range(sites)}
    rounds = []

    def total(beta: np.ndarray) -> glm.Contribution:
        vectors = {
            name: glm.contribution(
                x[rows], y[rows], beta, family, offset[rows] if family == "poisson" else None
            ).flat()
            for name, rows in zip(signers, parts, strict=True)
        }
        rounds.append(beta)
        summed = secure_sum(vectors, signers, f"glm-{len(rounds)}")
        return glm.Contribution.unflat(summed, x.shape[1])

    fitted = glm.fit(total, x.shape[1], family)
    families = {
        "logistic": sm.families.Binomial(),
        "poisson": sm.families.Poisson(),
        "linear": sm.families.Gaussian(),
    }
    pooled = sm.GLM(
        y, x, family=families[family], offset=offset if family == "poisson" else None
    ).fit(tol=1e-14)
    assert fitted.converged and fitted.n == len(y)
    assert np.allclose(fitted.coefficients, pooled.params, rtol=0, atol=1e-8)
    assert np.allclose(fitted.standard_errors, pooled.bse, rtol=0, atol=1e-6)
    assert fitted.deviance == pytest.approx(pooled.deviance, rel=1e-8)
    assert len(rounds) <= 12  # Newton: a handful of rounds
