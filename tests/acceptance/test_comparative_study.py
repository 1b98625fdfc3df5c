"""The comparative study recovers the planted hazard ratios on the synthetic hospitals.

Three sites, per-site Cox estimates and a meta-analysis: the adjusted estimates' 95% CIs cover
the truth in truth.json, the unadjusted estimate is measurably biased, and the null pair's
adjusted CI covers 1.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from medlab.analyses import comparative
from medlab.analyses.comparative import ComparativeSettings
from medlab.analyses.comparative_release import combine, to_release
from medlab.analyses.population import PopulationSettings
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.spec import ComparativeAnalysis
from medlab.synth.cohorts import new_users, outcome
from tests.helpers import SCOPE, released


def _site(synth_study: Path, tmp: Path, site: dict, effect: dict) -> Path:
    """A copy of one site's store with the effect's new users (cohorts 1 and 2) and its
    outcome (cohort 3)."""
    store = tmp / site["store"]
    shutil.copy(synth_study / site["store"], store)
    generate(store, parse_definition(new_users(effect["target"]["ingredient_concept_id"])), 1)
    generate(store, parse_definition(new_users(effect["comparator"]["ingredient_concept_id"])), 2)
    generate(store, parse_definition(outcome(effect["outcome"]["concept_id"])), 3)
    return store


def _run(synth_study: Path, tmp: Path, effect: dict) -> tuple[list, dict]:
    target = effect["target"]["ingredient_concept_id"]
    comparator = effect["comparator"]["ingredient_concept_id"]
    settings = ComparativeSettings(
        population=PopulationSettings(
            first_exposure_only=True,
            remove_subjects_in_both_cohorts=True,
            remove_subjects_with_prior_outcome=True,
            risk_window_start=1,
            start_anchor="cohort start",
            risk_window_end=0,
            end_anchor="cohort end",
        ),
        exclude_ingredients=[target, comparator],
        adjustments=["none", "matching", "stratification", "iptw"],
        max_ratio=1,
    )
    sites = []
    truth = json.loads((synth_study / "truth.json").read_text())
    for site in truth["sites"]:
        store = _site(synth_study, tmp, site, effect)
        with open_store(store, read_only=True) as con, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites.append(comparative.local(con, site["name"], 1, 2, 3, settings))
    # Through the release gate under the default (strict) policy, as a study run does.
    analysis = ComparativeAnalysis(name="c", target=1, comparator=2, outcome=3, settings=settings)
    parts = [released(to_release(s, SCOPE, analysis), ReleasePolicy()) for s in sites]
    return sites, combine(parts)


@pytest.fixture(scope="module")
def truth(synth_study: Path) -> dict:
    return json.loads((synth_study / "truth.json").read_text())


def test_planted_hazard_ratio_is_recovered_and_crude_is_biased(
    synth_study: Path, truth: dict, tmp_path: Path
) -> None:
    effect = next(e for e in truth["effects"] if e["id"] == "apixaban_vs_warfarin_gi_bleed")
    sites, pooled = _run(synth_study, tmp_path, effect)
    true_hr = effect["true_hazard_ratio"]
    crude = pooled["none"]["fixed"]
    assert crude.ci_high < true_hr  # the unadjusted estimate misses the truth
    for adjustment in ("matching", "stratification", "iptw"):
        estimate = pooled[adjustment]["random"]
        assert estimate.ci_low <= true_hr <= estimate.ci_high, (adjustment, estimate)
    assert all(s.estimates[0].target_events > 0 for s in sites)
    assert all(s.balance_before > 0.1 for s in sites)


def test_null_pair_covers_one(synth_study: Path, truth: dict, tmp_path: Path) -> None:
    effect = next(e for e in truth["effects"] if e["id"] == "lisinopril_vs_hydrochlorothiazide_mi")
    _, pooled = _run(synth_study, tmp_path, effect)
    assert pooled["none"]["fixed"].ci_low > 1.0  # crude: confounded by diabetes
    for adjustment in ("stratification", "iptw"):
        estimate = pooled[adjustment]["random"]
        assert estimate.ci_low <= 1.0 <= estimate.ci_high, (adjustment, estimate)


def test_planted_negative_controls_reveal_the_crude_bias_and_calibration_corrects_it(
    synth_study: Path, truth: dict, tmp_path: Path
) -> None:
    # The ten planted controls of the pair (true HR 1, most confounded by kidney disease
    # like the outcome): their crude estimates are biased downwards as the crude estimate of
    # the effect is; adjusted, they centre on 1; calibrating the crude estimate with its own
    # controls moves it towards the planted HR.
    from medlab.analyses import assessment
    from medlab.analyses.comparative_release import released_site
    from medlab.studies.spec import control_cohort

    effect = next(e for e in truth["effects"] if e["id"] == "apixaban_vs_warfarin_gi_bleed")
    target = effect["target"]["ingredient_concept_id"]
    comparator = effect["comparator"]["ingredient_concept_id"]
    controls = [50 + i for i in range(len(effect["negative_controls"]))]
    settings = ComparativeSettings(
        population=PopulationSettings(
            first_exposure_only=True,
            remove_duplicate_subjects="remove all",
            risk_window_start=1,
        ),
        exclude_ingredients=[target, comparator],
        adjustments=["none", "stratification"],
        negative_controls=controls,
    )
    site = truth["sites"][1]  # the community hospital, 10,500 patients
    store = tmp_path / site["store"]
    shutil.copy(synth_study / site["store"], store)
    generate(store, parse_definition(new_users(target)), 1)
    generate(store, parse_definition(new_users(comparator)), 2)
    generate(store, parse_definition(outcome(effect["outcome"]["concept_id"])), 3)
    for cohort, control in zip(controls, effect["negative_controls"], strict=True):
        definition = control_cohort(cohort, control["concept_id"], "condition_occurrence")
        generate(store, parse_definition(definition["definition"]), cohort)
    with open_store(store, read_only=True) as con, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = comparative.local(con, site["name"], 1, 2, 3, settings)
    analysis = ComparativeAnalysis(name="c", target=1, comparator=2, outcome=3, settings=settings)
    shown = released_site(released(to_release(local, SCOPE, analysis)))
    assessed = {
        e["adjustment"]: assessment.assess(e, shown["controls"], shown["equipoise"])
        for e in shown["estimates"]
    }
    crude, adjusted = assessed["none"], assessed["stratification"]
    assert crude["null"]["mean"] < -0.15  # the controls' crude HRs lie below 1
    assert abs(adjusted["null"]["mean"]) < abs(crude["null"]["mean"]) / 2
    assert crude["ease"] > adjusted["ease"]
    truth_log = math.log(effect["true_hazard_ratio"])
    raw = next(e for e in shown["estimates"] if e["adjustment"] == "none")["log_hr"]
    assert abs(crude["calibrated_log_hr"] - truth_log) < abs(raw - truth_log)
    assert (
        math.log(crude["calibrated_ci_low"]) <= truth_log <= math.log(crude["calibrated_ci_high"])
    )


def _cohortmethod_smd(frame: pd.DataFrame, column: str) -> float:
    """CohortMethod's unweighted ``computeMeansPerGroup``: per arm mean and population SD,
    ``(meanTarget - meanComparator) / sqrt((sdTarget^2 + sdComparator^2) / 2)``."""
    arms = [frame.loc[frame["treatment"] == arm, column].astype(float) for arm in (1, 0)]
    (mt, st), (mc, sc) = ((a.mean(), a.std(ddof=0)) for a in arms)
    return float((mt - mc) / math.sqrt((st**2 + sc**2) / 2))


def test_each_covariates_balance_shows_the_planted_confounder_balanced_by_adjustment(
    synth_study: Path, truth: dict, tmp_path: Path
) -> None:
    # The planted confounder (a diagnosis on or before index raises both the comparator's
    # odds and the outcome's hazard) is imbalanced before adjustment and balanced after each;
    # its SMD and age's, recomputed from the store by CohortMethod's formula, are the node's.
    from medlab.analyses.balance import DEFAULT
    from medlab.analyses.comparative_release import released_site

    effect = next(e for e in truth["effects"] if e["id"] == "apixaban_vs_warfarin_gi_bleed")
    confounder = effect["outcome_model"]["confounder"]["concept_id"]
    named = f"condition_any_time_prior:{confounder}"
    target = effect["target"]["ingredient_concept_id"]
    comparator = effect["comparator"]["ingredient_concept_id"]
    settings = ComparativeSettings(
        population=PopulationSettings(
            first_exposure_only=True, remove_duplicate_subjects="remove all"
        ),
        exclude_ingredients=[target, comparator],
        adjustments=["none", "matching", "stratification", "iptw"],
        balance_covariates=[*DEFAULT, named, "condition_any_time_prior:999999999"],
    )
    site = truth["sites"][1]
    store = _site(synth_study, tmp_path, site, effect)
    with open_store(store, read_only=True) as con, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = comparative.local(con, site["name"], 1, 2, 3, settings)
        index = con.execute(
            """SELECT c.subject_id AS person_id, c.cohort_definition_id AS cohort,
                      year(c.cohort_start_date) - p.year_of_birth AS age,
                      EXISTS (SELECT 1 FROM condition_occurrence o
                              WHERE o.person_id = c.subject_id AND o.condition_concept_id = ?
                                AND o.condition_start_date <= c.cohort_start_date) AS confounder
               FROM results.cohort c JOIN person p ON p.person_id = c.subject_id
               WHERE c.cohort_definition_id IN (1, 2)""",
            [confounder],
        ).df()
    analysis = ComparativeAnalysis(name="c", target=1, comparator=2, outcome=3, settings=settings)
    shown = released_site(released(to_release(local, SCOPE, analysis), ReleasePolicy()))
    rows = {r["covariate"]: r for r in shown["covariate_balance"]}
    assert list(rows) == settings.balance_covariates  # the spec's list, in its order
    assert abs(rows[named]["smd_before"]) > 0.1
    for adjustment in ("matching", "stratification", "iptw"):
        assert abs(rows[named]["smd_after"][adjustment]) < 0.1, adjustment
    assert rows[named]["smd_after"]["none"] == rows[named]["smd_before"]
    nobody = rows["condition_any_time_prior:999999999"]  # listed, nobody has it: withheld
    assert nobody["smd_before"] is None and set(nobody["smd_after"].values()) == {None}
    # The largest |SMD| of the listed covariates never exceeds the released maximum.
    listed = [abs(r["smd_before"]) for r in rows.values() if r["smd_before"] is not None]
    assert max(listed) <= shown["max_abs_smd_before"] + 0.01
    # Recomputed outside medlab's covariate code, on the final population and the matched.
    for column, arms in (("before", local.arms["none"]), ("matching", local.arms["matching"])):
        people = index[index["person_id"].isin(arms.target | arms.comparator)].copy()
        people["treatment"] = (people["cohort"] == 1).astype(int)
        assert len(people) == len(arms.target | arms.comparator)
        cells = local.covariate_balance[column]
        assert cells[named].smd == pytest.approx(_cohortmethod_smd(people, "confounder"), abs=1e-9)
        assert cells["age"].smd == pytest.approx(_cohortmethod_smd(people, "age"), abs=1e-9)
