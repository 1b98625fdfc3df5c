"""The synthetic hospitals carry the effects truth.json says they do.

Each study is rebuilt from the OMOP tables with SQL (new users, covariates at index, first
outcome after index), then estimated two ways: crude rate ratio, and an exponential
proportional-hazards model (Poisson GLM with log person-time offset, fitted by Newton-Raphson)
adjusted for age, the planted confounder and site. Because the outcome hazards are constant,
the adjusted model is correctly specified and must recover the planted hazard ratio, while the
crude ratio must show the documented confounding bias.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medlab.cdm.store import open_store

STUDY_SQL = """
WITH exposure AS (
    SELECT d.person_id, min(d.drug_exposure_start_date) AS index_date,
           arg_min(a.ancestor_concept_id, d.drug_exposure_start_date) AS drug
    FROM drug_exposure d
    JOIN concept_ancestor a ON a.descendant_concept_id = d.drug_concept_id
    WHERE a.ancestor_concept_id IN ($target, $comparator)
    GROUP BY d.person_id),
diagnosis AS (
    SELECT person_id, min(condition_start_date) AS dx FROM condition_occurrence
    WHERE condition_concept_id = $population GROUP BY person_id),
cohort AS (
    SELECT e.person_id, e.index_date, e.drug, o.observation_period_end_date AS obs_end,
           date_diff('day', CAST(p.birth_datetime AS DATE), e.index_date) / 365.25 AS age,
           EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = e.person_id
                   AND c.condition_concept_id = $confounder
                   AND c.condition_start_date <= e.index_date) AS confounder
    FROM exposure e
    JOIN diagnosis x ON x.person_id = e.person_id
     AND e.index_date BETWEEN x.dx AND x.dx + $delay
    JOIN observation_period o ON o.person_id = e.person_id
     AND e.index_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
    JOIN person p ON p.person_id = e.person_id
    WHERE NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = e.person_id
                      AND c.condition_concept_id = $outcome
                      AND c.condition_start_date <= e.index_date)),
first_outcome AS (
    SELECT c.person_id, min(o.condition_start_date) AS event_date
    FROM cohort c JOIN condition_occurrence o ON o.person_id = c.person_id
     AND o.condition_concept_id = $outcome
     AND o.condition_start_date > c.index_date AND o.condition_start_date <= c.obs_end
    GROUP BY c.person_id)
SELECT c.drug = $target AS target, c.age, c.confounder, f.event_date IS NOT NULL AS event,
       date_diff('day', c.index_date, coalesce(f.event_date, c.obs_end)) AS days
FROM cohort c LEFT JOIN first_outcome f USING (person_id)
WHERE date_diff('day', c.index_date, coalesce(f.event_date, c.obs_end)) > 0
"""


def _study_rows(out: Path, truth: dict, effect: dict) -> np.ndarray:
    delay = 14 if effect["comparator"]["name"] == "warfarin" else 30
    confounder = effect["outcome_model"]["confounder"]["concept_id"]
    params = {
        "target": effect["target"]["ingredient_concept_id"],
        "comparator": effect["comparator"]["ingredient_concept_id"],
        "population": effect["population"]["concept_id"],
        "outcome": effect["outcome"]["concept_id"],
        "confounder": confounder,
        "delay": delay,
    }
    rows = []
    for site_no, site in enumerate(truth["sites"]):
        with open_store(out / site["store"], read_only=True) as con:
            for r in con.execute(STUDY_SQL, params).fetchall():
                rows.append((*map(float, r), site_no))
    return np.array(rows)


def _poisson(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood Poisson regression (log link); returns coefficients and SEs."""
    beta = np.zeros(x.shape[1])
    beta[0] = math.log(y.sum() / np.exp(offset).sum())
    for _ in range(50):
        mu = np.exp(x @ beta + offset)
        step = np.linalg.solve(x.T @ (mu[:, None] * x), x.T @ (y - mu))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    cov = np.linalg.inv(x.T @ (np.exp(x @ beta + offset)[:, None] * x))
    return beta, np.sqrt(np.diag(cov))


def _estimates(data: np.ndarray, reference_age: float) -> dict[str, float]:
    target, age, conf, event, days, site = data.T
    years = days / 365.25
    crude = (event[target == 1].sum() / years[target == 1].sum()) / (
        event[target == 0].sum() / years[target == 0].sum()
    )
    sites = np.unique(site)
    x = np.column_stack(
        [np.ones(len(data)), target, (age - reference_age) / 10, conf]
        + [(site == s).astype(float) for s in sites[1:]]
    )
    beta, se = _poisson(x, event, np.log(years))
    return {
        "crude": float(crude),
        "adjusted": float(np.exp(beta[1])),
        "se_log": float(se[1]),
        "age_hr": float(np.exp(beta[2])),
        "confounder_hr": float(np.exp(beta[3])),
        "n": float(len(data)),
        "events": float(event.sum()),
        "comparator_confounder": float(conf[target == 0].mean()),
        "target_confounder": float(conf[target == 1].mean()),
        "comparator_age": float(age[target == 0].mean()),
        "target_age": float(age[target == 1].mean()),
    }


@pytest.fixture(scope="module")
def truth(synth_study: Path) -> dict:
    return json.loads((synth_study / "truth.json").read_text())


def _effect(truth: dict, effect_id: str) -> dict:
    return next(e for e in truth["effects"] if e["id"] == effect_id)


def test_apixaban_vs_warfarin_is_confounded_and_adjustment_recovers_it(
    synth_study: Path, truth: dict
) -> None:
    effect = _effect(truth, "apixaban_vs_warfarin_gi_bleed")
    est = _estimates(
        _study_rows(synth_study, truth, effect), effect["outcome_model"]["reference_age"]
    )
    true_hr = effect["true_hazard_ratio"]
    assert est["events"] > 200
    # The comparator (warfarin) group is older and has more CKD, as planted.
    assert est["comparator_confounder"] > est["target_confounder"] + 0.1
    assert est["comparator_age"] > est["target_age"] + 1
    # Crude comparison exaggerates apixaban's benefit; adjustment recovers the truth.
    assert est["crude"] < true_hr * 0.85
    assert abs(math.log(est["adjusted"]) - math.log(true_hr)) < 3 * est["se_log"]
    assert abs(math.log(est["adjusted"]) - math.log(true_hr)) < abs(
        math.log(est["crude"]) - math.log(true_hr)
    )
    model = effect["outcome_model"]
    assert est["confounder_hr"] == pytest.approx(model["confounder"]["hazard_ratio"], rel=0.35)
    assert est["age_hr"] == pytest.approx(model["age_hr_per_decade"], rel=0.25)


def test_lisinopril_vs_hydrochlorothiazide_is_null_after_adjustment(
    synth_study: Path, truth: dict
) -> None:
    effect = _effect(truth, "lisinopril_vs_hydrochlorothiazide_mi")
    est = _estimates(
        _study_rows(synth_study, truth, effect), effect["outcome_model"]["reference_age"]
    )
    assert effect["true_hazard_ratio"] == 1.0
    assert est["events"] > 200
    assert est["target_confounder"] > est["comparator_confounder"] + 0.1
    assert est["crude"] > 1.15  # diabetics get lisinopril and have more infarctions
    assert abs(math.log(est["adjusted"])) < 3 * est["se_log"]


def test_appendicitis_incidence_matches_the_planted_rate(synth_study: Path, truth: dict) -> None:
    effect = _effect(truth, "appendicitis_incidence")
    events = 0
    person_years = 0.0
    for site in truth["sites"]:
        with open_store(synth_study / site["store"], read_only=True) as con:
            n, py = con.execute(
                """SELECT count(DISTINCT c.person_id),
                          (SELECT sum(date_diff('day', observation_period_start_date,
                                                observation_period_end_date) + 1)
                           FROM observation_period) / 365.25
                   FROM condition_occurrence c WHERE c.condition_concept_id = ?""",
                [effect["outcome"]["concept_id"]],
            ).fetchall()[0]
            events += n
            person_years += py
    rate = 1000 * events / person_years
    planted = effect["rate_per_1000_person_years"]
    se = 1000 * math.sqrt(events) / person_years
    assert abs(rate - planted) < 3 * se, (rate, planted, se)


def test_sites_differ_in_case_mix(synth_study: Path, truth: dict) -> None:
    ages, ckd = [], []
    for site in truth["sites"]:
        with open_store(synth_study / site["store"], read_only=True) as con:
            age, share = con.execute(
                """SELECT avg(year(o.observation_period_start_date) - p.year_of_birth),
                          avg(CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence c
                              WHERE c.person_id = p.person_id
                              AND c.condition_concept_id = 46271022) THEN 1 ELSE 0 END)
                   FROM person p JOIN observation_period o USING (person_id)"""
            ).fetchall()[0]
            ages.append(age)
            ckd.append(share)
    # urban_teaching < community < rural_elderly, in age and in chronic kidney disease.
    assert ages[0] + 4 < ages[1] < ages[2] - 4
    assert ckd[0] < ckd[1] < ckd[2]
