"""The federated propensity model equals the comparative analysis's own fit on the union,
for the Laplace prior, the normal prior and none, over 3 and 10 uneven sites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from medlab.analyses import propensity
from medlab.analyses.federated import ps
from medlab.ledger.keys import Signer
from medlab.privacy.secagg.inprocess import secure_sum


def _data(n: int = 2500, k: int = 12, seed: int = 6):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rng.binomial(1, rng.uniform(0.05, 0.5, k), size=(n, k)).astype(float)
    x[:, 0] = rng.uniform(0, 1, n)  # a continuous one, scaled to 0..1
    beta = np.r_[1.0, rng.normal(0, 0.6, k - 1)]
    beta[5:8] = 0.0  # some have no effect: the Laplace prior zeroes them
    y = rng.binomial(1, 1 / (1 + np.exp(-(x @ beta - 0.3)))).astype(float)
    return sparse.csr_matrix(x), y


@pytest.mark.parametrize(
    ("prior", "variance"), [("laplace", 0.05), ("normal", 0.5), ("none", None)]
)
@pytest.mark.parametrize("sites", [3, 10])
def test_the_federated_ps_is_the_pooled_fit(
    prior: str, variance: float | None, sites: int, tmp_path: Path
) -> None:
    x, y = _data()
    rng = np.random.default_rng(sites)
    site = rng.choice(sites, len(y), p=np.arange(1, sites + 1) / np.arange(1, sites + 1).sum())
    signers = {f"s{s}": Signer.load_or_create(tmp_path / f"s{s}.key") for s in range(sites)}
    calls = [0]

    def total(b0: float, beta: np.ndarray) -> ps.PsSums:
        calls[0] += 1
        vectors = {
            name: ps.sums(x[site == s], y[site == s], b0, beta).flat()
            for s, name in enumerate(signers)
        }
        return ps.PsSums.unflat(secure_sum(vectors, signers, f"ps{calls[0]}"), x.shape[1])

    fitted = ps.fit(total, x.shape[1], prior, variance)  # type: ignore[arg-type]
    pooled = propensity._fit(x, y, prior, variance)  # type: ignore[arg-type]
    assert fitted.converged
    assert fitted.intercept == pytest.approx(pooled.intercept, abs=1e-5)
    assert np.allclose(fitted.coefficients, pooled.beta, atol=1e-5)
    if prior == "laplace":
        assert np.array_equal(fitted.coefficients == 0, pooled.beta == 0)  # the same zeros
        assert (fitted.coefficients == 0).any()
