"""The one-covariate Cox model against statsmodels PHReg and lifelines."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from statsmodels.duration.hazard_regression import PHReg

from medlab.analyses import cox

RNG = np.random.default_rng(5)


def _data(n: int = 500, ties: bool = True) -> tuple[np.ndarray, ...]:
    x = RNG.integers(0, 2, n).astype(float)
    t = RNG.exponential(30 / np.exp(0.5 * x))
    if ties:
        t = np.ceil(t)  # whole days: many tied event times
    e = (t < 40).astype(int)
    return np.minimum(t, 40), e, x, RNG.integers(0, 25, n), RNG.uniform(0.2, 3, n)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("stratified", [False, True])
def test_matches_statsmodels_phreg(ties: str, stratified: bool) -> None:
    t, e, x, s, _ = _data()
    strata = s if stratified else None
    ours = cox.fit(t, e, x, stratum=strata, ties=ties)  # type: ignore[arg-type]
    reference = PHReg(t, x[:, None], status=e, strata=strata, ties=ties).fit()
    assert ours.log_hr == pytest.approx(reference.params[0], abs=1e-10)
    assert ours.se == pytest.approx(reference.bse[0], rel=1e-9)


def _lifelines(frame: pd.DataFrame, **kwargs: object) -> CoxPHFitter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxPHFitter().fit(frame, "t", "e", **kwargs)  # type: ignore[arg-type]


def test_weighted_efron_matches_lifelines_model_based_and_robust() -> None:
    t, e, x, _, w = _data()
    frame = pd.DataFrame({"t": t, "e": e, "x": x, "w": w})
    model = _lifelines(frame, weights_col="w")
    robust = _lifelines(frame, weights_col="w", robust=True)
    ours = cox.fit(t, e, x, weight=w, ties="efron")
    assert ours.log_hr == pytest.approx(model.params_["x"], abs=1e-6)
    assert ours.se == pytest.approx(model.standard_errors_["x"], rel=1e-6)
    ours_robust = cox.fit(t, e, x, weight=w, ties="efron", robust=True)
    assert ours_robust.se == pytest.approx(robust.standard_errors_["x"], rel=1e-6)


def test_breslow_robust_variance_matches_lifelines_without_ties() -> None:
    # Without tied times Breslow and Efron coincide, so lifelines' (Efron) sandwich is the
    # reference for medlab's own Lin-Wei residuals.
    t, e, x, _, w = _data(ties=False)
    robust = _lifelines(
        pd.DataFrame({"t": t, "e": e, "x": x, "w": w}), weights_col="w", robust=True
    )
    ours = cox.fit(t, e, x, weight=w, ties="breslow", robust=True)
    assert ours.log_hr == pytest.approx(robust.params_["x"], abs=1e-6)
    assert ours.se == pytest.approx(robust.standard_errors_["x"], rel=1e-6)
    assert ours.se != pytest.approx(cox.fit(t, e, x, weight=w).se, rel=1e-3)


def test_profile_interval_is_where_the_likelihood_drops_by_half_chi2() -> None:
    t, e, x, s, _ = _data(200)
    fitted = cox.fit(t, e, x, stratum=s, interval="profile")
    data = cox.RiskData(t, e, x, None, s)
    top = data.sums(fitted.log_hr, "breslow")[0]
    for bound in (fitted.low, fitted.high):
        assert top - data.sums(bound, "breslow")[0] == pytest.approx(
            3.841458820694124 / 2, abs=1e-8
        )
    wald = cox.fit(t, e, x, stratum=s)
    assert fitted.low < fitted.log_hr < fitted.high
    assert fitted.low == pytest.approx(wald.low, abs=0.05)  # close at this size, not equal
    assert fitted.low != wald.low


def test_monotone_likelihood_has_no_estimate() -> None:
    t = np.arange(1, 41, dtype=float)
    e = np.ones(40)
    x = np.r_[np.ones(20), np.zeros(20)]  # every treated event comes before any untreated
    with pytest.raises(cox.NoEstimate):
        cox.fit(t, e, x, stratum=np.repeat(np.arange(20), 2))
