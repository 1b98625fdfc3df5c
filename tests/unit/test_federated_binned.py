"""Binned federated survival: Kaplan-Meier per bin and the unstratified Cox model equal the
pooled estimators on the binned times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import statsmodels.api as sm
from lifelines import KaplanMeierFitter

from medlab.analyses.federated import binned, cox
from medlab.ledger.keys import Signer
from medlab.privacy.secagg.inprocess import secure_sum


def _data(n: int = 1500, seed: int = 8):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.binomial(1, 0.4, n), rng.normal(size=n)])
    latent = rng.exponential(300 / np.exp(x @ np.array([0.6, -0.3])))
    censor = rng.uniform(0, 900, n)
    time = np.minimum(latent, censor)
    return time, (latent <= censor).astype(int), x, rng.integers(0, 4, n)


def test_kaplan_meier_from_summed_bins_is_the_pooled_curve(tmp_path: Path) -> None:
    time, event, _, site = _data()
    width, count = 30.0, 30
    signers = {f"s{k}": Signer.load_or_create(tmp_path / f"s{k}.key") for k in range(4)}
    vectors = {}
    for k, name in enumerate(signers):
        at_risk, events = binned.km_counts(time[site == k], event[site == k], width, count)
        vectors[name] = [*at_risk, *events]
    summed = secure_sum(vectors, signers, "km")
    curve = binned.km_curve(np.round(summed[:count]), np.round(summed[count:]))
    rounded = binned.bins(time, width, count) * width
    kmf = KaplanMeierFitter().fit(rounded, event)
    ends = np.arange(1, count + 1) * width
    assert np.allclose(curve, kmf.survival_function_at_times(ends).to_numpy(), atol=1e-12)


def test_the_unstratified_cox_over_bins_is_the_pooled_breslow_fit(tmp_path: Path) -> None:
    time, event, x, site = _data()
    width, count = 15.0, 60
    signers = {f"s{k}": Signer.load_or_create(tmp_path / f"s{k}.key") for k in range(4)}
    calls = [0]

    def total(beta: np.ndarray) -> binned.RiskSums:
        calls[0] += 1
        vectors = {
            name: binned.risk_sums(
                time[site == k], event[site == k], x[site == k], beta, width, count
            ).flat()
            for k, name in enumerate(signers)
        }
        return binned.RiskSums.unflat(secure_sum(vectors, signers, f"b{calls[0]}"), count, 2)

    fitted = cox.fit(binned.cox_round(total), 2)
    rounded = binned.bins(time, width, count) * width
    pooled = sm.PHReg(rounded, x, status=event, ties="breslow").fit()
    assert fitted.converged
    assert np.allclose(fitted.coefficients, pooled.params, atol=1e-7)
    assert np.allclose(fitted.standard_errors, pooled.bse, atol=1e-6)


def test_events_beyond_the_grid_are_censored_at_its_end() -> None:
    time = np.array([10.0, 50.0, 95.0, 200.0])
    event = np.array([1, 1, 1, 1])
    at_risk, events = binned.km_counts(time, event, 30.0, 3)  # the grid ends at day 90
    assert at_risk.tolist() == [4, 3, 2] and events.tolist() == [1, 1, 0]
