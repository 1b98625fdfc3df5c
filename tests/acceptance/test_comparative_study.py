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
        store = tmp / site["store"]
        shutil.copy(synth_study / site["store"], store)
        generate(store, parse_definition(new_users(target)), 1)
        generate(store, parse_definition(new_users(comparator)), 2)
        generate(store, parse_definition(outcome(effect["outcome"]["concept_id"])), 3)
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
