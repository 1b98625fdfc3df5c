"""Estimators against independent references (statsmodels), with the tolerances used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from scipy import sparse
from statsmodels.discrete.discrete_model import Logit
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.stats.meta_analysis import combine_effects

from medlab.analyses import estimation as est
from medlab.analyses import meta

RNG = np.random.default_rng(20)


def _data(n: int = 3000) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    x = RNG.integers(0, 2, size=(n, 3)).astype(float)
    treatment = (RNG.random(n) < 1 / (1 + np.exp(-(x @ [0.8, -0.5, 0.3] - 0.2)))).astype(int)
    hazard = 0.01 * np.exp(np.log(0.7) * treatment + x @ [0.5, 0.2, -0.3])
    time = np.ceil(RNG.exponential(1 / hazard))
    censor = RNG.integers(50, 400, n)
    frame = pd.DataFrame(
        {
            "days": np.minimum(time, censor),
            "outcome": (time <= censor).astype(int),
            "treatment": treatment,
            "person_id": np.arange(n),
        }
    )
    return x, treatment, frame


def test_propensity_score_matches_statsmodels_logit_when_barely_penalized() -> None:
    x, treatment, _ = _data()
    ours = est.propensity_scores(sparse.csr_matrix(x), treatment, "l2", strength=1e8)
    reference = Logit(treatment, np.column_stack([np.ones(len(x)), x])).fit(disp=0)
    np.testing.assert_allclose(ours, reference.predict(), atol=1e-4)


def test_cox_matches_statsmodels_phreg_efron() -> None:
    frame = _data()[2]
    ours = est.cox(frame, "none")
    reference = PHReg(
        frame["days"], frame[["treatment"]], status=frame["outcome"], ties="efron"
    ).fit()
    assert ours.log_hr == pytest.approx(reference.params[0], abs=1e-5)
    assert ours.se == pytest.approx(reference.bse[0], rel=1e-4)
    assert ours.target_events + ours.comparator_events == frame["outcome"].sum()


def test_stratified_cox_matches_lifelines_strata() -> None:
    x, _, frame = _data()
    stratum = x[:, 0].astype(int) * 2 + x[:, 1].astype(int)
    ours = est.cox(frame, "stratification", stratum=stratum)
    reference = CoxPHFitter().fit(
        frame.assign(stratum=stratum).drop(columns=["person_id"]),
        duration_col="days",
        event_col="outcome",
        strata=["stratum"],
    )
    assert ours.log_hr == pytest.approx(reference.params_["treatment"], abs=1e-5)
    assert ours.se == pytest.approx(reference.standard_errors_["treatment"], rel=1e-4)


def test_weighted_cox_uses_a_robust_variance() -> None:
    _, treatment, frame = _data()
    weights = np.where(treatment == 1, 1.0, 2.0)
    ours = est.cox(frame, "iptw", weights=weights)
    reference = CoxPHFitter().fit(
        frame.assign(w=weights).drop(columns=["person_id"]),
        duration_col="days",
        event_col="outcome",
        weights_col="w",
        robust=True,
    )
    assert ours.se == pytest.approx(reference.standard_errors_["treatment"], rel=1e-6)


def test_meta_analysis_matches_statsmodels_combine_effects() -> None:
    b = [-0.5, -0.2, -0.9, 0.1]
    se = [0.2, 0.25, 0.3, 0.4]
    reference = combine_effects(np.array(b), np.array(se) ** 2, method_re="dl")
    fixed, random = meta.fixed_effect(b, se), meta.random_effects(b, se)
    assert fixed.log_hr == pytest.approx(reference.mean_effect_fe, abs=1e-10)
    assert fixed.se == pytest.approx(reference.sd_eff_w_fe, rel=1e-8)
    assert random.log_hr == pytest.approx(reference.mean_effect_re, abs=1e-10)
    assert random.se == pytest.approx(reference.sd_eff_w_re, rel=1e-8)
    assert random.tau2 == pytest.approx(reference.tau2, rel=1e-8)


def test_matching_respects_caliper_ratio_and_uses_each_comparator_once() -> None:
    ps = RNG.uniform(0.05, 0.95, 400)
    treatment = (RNG.random(400) < ps).astype(int)
    stratum = est.match(ps, treatment, max_ratio=3, caliper=0.2)
    width = 0.2 * est.logit(ps).std()
    for target in np.flatnonzero((treatment == 1) & (stratum >= 0)):
        comparators = np.flatnonzero((stratum == target) & (treatment == 0))
        assert 1 <= len(comparators) <= 3
        assert np.all(np.abs(est.logit(ps[comparators]) - est.logit(ps[target])) <= width + 1e-12)
    matched_comparators = stratum[treatment == 0]
    assert (matched_comparators >= 0).sum() == len(
        set(np.flatnonzero((treatment == 0) & (stratum >= 0)))
    )


def test_iptw_stabilized_and_truncated() -> None:
    ps = np.array([0.2, 0.5, 0.99, 0.01])
    treatment = np.array([1, 0, 0, 1])
    ate = est.iptw(ps, treatment, "ate", max_weight=10)
    np.testing.assert_allclose(ate, [0.5 / 0.2, 0.5 / 0.5, 10.0, 0.5 / 0.01 if False else 10.0])
    att = est.iptw(ps, treatment, "att", max_weight=10)
    assert att[0] == 1.0 and att[1] == pytest.approx(1.0) and att[2] == 10.0


def test_new_risk_window_censoring_counts_only_entries_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.spec.world import World

    from medlab.analyses.population import PopulationSettings, study_population
    from medlab.cdm.store import open_store
    from medlab.cohorts.engine import generate
    from medlab.cohorts.model import parse_definition

    w = World()
    w.drug(w.person(1), 201, "2010-01-01", days_supply=30)
    w.drug(1, 201, "2010-03-01", days_supply=30)  # a second entry, inside the first's risk
    w.drug(w.person(2), 210, "2010-01-01", days_supply=30)
    store = w.store(tmp_path)
    for cohort_id, concept in ((1, 200), (2, 210)):
        generate(
            store,
            parse_definition(
                {
                    "concept_sets": [
                        {"id": 0, "items": [{"concept_id": concept, "include_descendants": True}]}
                    ],
                    "primary": {"criteria": [{"domain": "drug_exposure", "codeset_id": 0}]},
                    "qualified_limit": "all",
                    "end_strategy": {"type": "date_offset", "field": "end", "offset": 0},
                }
            ),
            cohort_id,
        )
    generate(
        store,
        parse_definition(
            {
                "concept_sets": [{"id": 0, "items": [{"concept_id": 102}]}],
                "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
            }
        ),
        3,
    )
    with open_store(store, read_only=True) as con:
        settings = {"censor_at_new_risk_window": True, "risk_window_end": 60}
        every, _ = study_population(con, 1, 2, 3, PopulationSettings(**settings))
        first, _ = study_population(
            con, 1, 2, 3, PopulationSettings(**settings, first_exposure_only=True)
        )
    target = every[every["treatment"] == 1].sort_values("start_date")
    # Risk runs to cohort end + 60 days; the first window is cut the day before the second
    # entry (Jan 1 - Feb 28), the second runs Mar 1 - May 29.
    assert list(target["days"]) == [59, 90]
    assert list(first[first["treatment"] == 1]["days"]) == [90]  # nothing left to cut it


def test_monotone_likelihood_gives_no_hazard_ratio_instead_of_overflowing() -> None:
    # In every matched pair the treated person has the event first: the stratified partial
    # likelihood grows without bound, so there is no finite estimate.
    rows = []
    for pair in range(30):
        rows.append({"person_id": 2 * pair, "treatment": 1, "days": 5 + pair, "outcome": 1})
        rows.append({"person_id": 2 * pair + 1, "treatment": 0, "days": 50 + pair, "outcome": 1})
    frame = pd.DataFrame(rows)
    with pytest.warns(est.EstimationWarning, match="no finite estimate|did not converge"):
        estimate = est.cox(frame, "matching", np.repeat(np.arange(30), 2))
    assert np.isnan(estimate.hr) and estimate.target_events == 30
