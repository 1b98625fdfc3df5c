"""The federated site-stratified Cox model equals the pooled fit with strata=site
(statsmodels PHReg for Breslow and Efron ties, lifelines for Efron) over 3 and 10 sites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter

from medlab.analyses.federated import cox
from medlab.ledger.keys import Signer
from medlab.privacy.secagg.inprocess import secure_sum


def _data(sites: int, n: int = 2400, seed: int = 4):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    site = rng.choice(sites, n, p=np.arange(1, sites + 1) / np.arange(1, sites + 1).sum())
    x = np.column_stack([rng.binomial(1, 0.5, n), rng.normal(size=n), rng.uniform(0, 1, n)])
    base = np.exp(0.3 * site)  # a baseline hazard of each site's own
    hazard = base * np.exp(x @ np.array([-0.5, 0.4, 0.8]))
    latent = rng.exponential(1 / hazard)
    censor = rng.uniform(0, 2, n)
    # Whole days: many tied event times, so Breslow and Efron differ.
    time = np.ceil(np.minimum(latent, censor) * 30)
    event = (latent <= censor).astype(int)
    return time, event, x, site


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("sites", [3, 10])
def test_the_federated_stratified_cox_is_the_pooled_fit(
    ties: cox.Ties, sites: int, tmp_path: Path
) -> None:
    time, event, x, site = _data(sites)
    signers = {f"site_{s}": Signer.load_or_create(tmp_path / f"site_{s}.key") for s in range(sites)}
    calls = [0]

    def total(beta: np.ndarray) -> cox.CoxContribution:
        calls[0] += 1
        vectors = {
            name: cox.contribution(
                time[site == s], event[site == s], x[site == s], beta, ties
            ).flat()
            for s, name in enumerate(signers)
        }
        return cox.CoxContribution.unflat(secure_sum(vectors, signers, f"cox-{calls[0]}"), 3)

    fitted = cox.fit(total, 3)
    pooled = sm.PHReg(time, x, status=event, strata=site, ties=ties).fit()
    assert fitted.converged
    assert np.allclose(fitted.coefficients, pooled.params, rtol=0, atol=1e-7)
    assert np.allclose(fitted.standard_errors, pooled.bse, rtol=0, atol=1e-6)
    assert fitted.loglik == pytest.approx(pooled.llf, rel=1e-10)
    if ties == "efron":
        frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(t=time, e=event, site=site)
        life = CoxPHFitter().fit(frame, "t", "e", strata=["site"])
        assert np.allclose(fitted.coefficients, life.params_.to_numpy(), atol=1e-6)
        assert np.allclose(fitted.standard_errors, life.standard_errors_.to_numpy(), atol=1e-5)
