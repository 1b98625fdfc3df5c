"""Estimators against independent references (statsmodels), with the tolerances used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
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


def test_iptw_weights_are_cohortmethods_compute_iptw() -> None:
    # CohortMethod computeIptw: ATT target P(T), comparator P(C) ps/(1-ps); ATE target
    # P(T)/ps, comparator P(C)/(1-ps); truncateIptw caps at maxWeight on that scale.
    ps = np.array([0.2, 0.5, 0.99, 0.01])
    treatment = np.array([1, 0, 0, 1])
    share = 0.5
    ate = est.iptw(ps, treatment, "ate", max_weight=10)
    np.testing.assert_allclose(ate, [share / 0.2, share / 0.5, 10.0, 10.0])
    att = est.iptw(ps, treatment, "att", max_weight=10)
    np.testing.assert_allclose(att, [share, share * 1.0, 10.0, share])
    assert est.iptw(ps, treatment, "att", max_weight=1e9)[2] == pytest.approx(share * 99)


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
