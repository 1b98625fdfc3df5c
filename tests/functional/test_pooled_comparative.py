"""Pooled comparative estimates on secure sums: one propensity model across the sites, then
per adjustment a site-stratified Cox model, equal to the same algorithm on the union of the
sites' rows with ``site`` as a stratum — through ``study run`` over 3 synthetic sites, and
over one site's rows split into 10 uneven sites."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from tests import federation as fed

from medlab.analyses.federated import comparative as pooled
from medlab.analyses.federated import ps_cv
from medlab.cohorts.engine import generate
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec
from medlab.synth.generate import records, synthesize

ADJUSTMENTS = ["none", "matching", "stratification", "iptw"]


def _spec() -> StudySpec:
    data = fed.spec("pooled comparative")
    data["analyses"] = [a for a in data["analyses"] if a["type"] == "comparative"]
    data["analyses"][0]["settings"].update(
        {
            "adjustments": ADJUSTMENTS,
            "ps_prior": "laplace",
            "ps_variance": 0.1,
            "exclude_ingredients": [fed.APIXABAN, fed.WARFARIN],
            "pooled": {"max_covariates": 40},
        }
    )
    return StudySpec.model_validate(data)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], StudySpec]:
    tmp = tmp_path_factory.mktemp("pooled_cm")
    truth = synthesize(tmp, sites=3, patients=5000, seed=3)
    stores = [tmp / s["store"] for s in records(truth, "sites")]
    spec = _spec()
    for store in stores:  # full precision, so the pooled fit is compared to 1e-6
        set_policy(store, ReleasePolicy(precision="none", min_events_per_parameter=5))
        for cohort in spec.cohorts:  # the tests read the sites' rows directly too
            assert cohort.definition is not None
            generate(store, cohort.definition, cohort.id)
    return tmp, stores, spec


def _close(found: dict[str, Any], reference: dict[str, float]) -> None:
    for key in ("hr", "ci_low", "ci_high"):
        assert math.log(found[key]) == pytest.approx(math.log(reference[key]), abs=1e-6), key


def test_pooled_estimates_equal_the_algorithm_on_the_union(
    world: tuple[Path, list[Path], StudySpec],
) -> None:
    tmp, stores, spec = world
    result = run_study(spec, stores, tmp / "out", hub_dir=tmp / "hub")
    analysis = result["analyses"][0]
    found = {e["adjustment"]: e for e in analysis["pooled"]}
    assert list(found) == ADJUSTMENTS
    settings = spec.analyses[0].settings  # type: ignore[union-attr]
    sites = fed.site_rows(stores, settings)
    chosen = pooled.choose({str(i): pooled.candidates(s, 10, 40) for i, s in enumerate(sites)}, 40)
    reference = fed.pooled_comparative_reference(sites, settings, chosen)
    names = sorted(s.stem for s in stores)
    for adjustment in ADJUSTMENTS:
        assert found[adjustment]["sites"] == names and "withheld" not in found[adjustment]
        _close(found[adjustment], reference[adjustment])
    assert analysis["pooled_ps"]["covariates"] == len(chosen)
    # The pooled curves, through the strictest node's curve rules.
    curve = analysis["pooled_km"]["none"]["target"]
    assert curve[0] == {"time": 0.0, "at_risk": found["none"]["target_persons"], "value": 1.0}
    shown = [p["value"] for p in curve if p["value"] is not None]
    assert len(shown) > 10 and shown == sorted(shown, reverse=True) and shown[-1] < 1
    assert found["matching"]["target_persons"] < found["none"]["target_persons"]
    # Next to the meta-analysis of the sites' own models, and in the report.
    assert {e["adjustment"] for e in analysis["estimates"]} == set(ADJUSTMENTS)
    written = json.loads((tmp / "out" / "results.json").read_text())
    assert written["analyses"][0]["pooled"] == analysis["pooled"]
    assert (tmp / "out" / f"{analysis['name']}_pooled.csv").exists()
    report = (tmp / "out" / "report.html").read_text()
    assert "pooled on secure sums" in report
    assert re.search(rf"<td>matching</td>\s*<td>{found['matching']['hr']:.2f}</td>", report)


def _split(rows: pooled.SiteRows, parts: int, seed: int) -> list[pooled.SiteRows]:
    """One site's rows as ``parts`` uneven sites (by person; sizes in ratio 1:2:...:parts)."""
    rng = np.random.default_rng(seed)
    persons = rows.population["person_id"].unique()
    weights = np.arange(1, parts + 1) / np.arange(1, parts + 1).sum()
    owner = dict(zip(persons, rng.choice(parts, len(persons), p=weights), strict=True))
    index = rows.population["row_id"].to_numpy() - 1
    which = np.array([owner[p] for p in rows.population["person_id"]])
    out = []
    for part in range(parts):
        kept = index[which == part]
        renumber = {int(r): i + 1 for i, r in enumerate(kept)}
        population = rows.population[which == part].reset_index(drop=True)
        population["row_id"] = [renumber[int(r) - 1] for r in population["row_id"]]
        out.append(pooled.SiteRows(rows.treatment[kept], rows.matrix[kept], rows.ids, population))
    return out


@pytest.mark.filterwarnings("ignore:It looks like your weights are not integers")
def test_ten_uneven_sites_give_the_union_estimates(
    world: tuple[Path, list[Path], StudySpec],
) -> None:
    _, stores, spec = world
    # A one-day Kaplan-Meier grid: every event day its own bin, so the pooled binned curve
    # is the exact (weighted) Kaplan-Meier estimate on the union.
    settings = spec.analyses[0].settings.model_copy(  # type: ignore[union-attr]
        update={"km_step_days": 1, "km_horizon_days": 365}
    )
    whole = fed.site_rows(stores[:1], settings)[0]
    sites = _split(whole, 10, seed=4)
    assert min(len(s.population) for s in sites) * 5 < max(len(s.population) for s in sites)
    chosen = pooled.candidates(whole, 10, 30)
    size = pooled.length(settings, len(chosen))
    sums: list[list[float]] = []
    while not isinstance(step := pooled.drive(settings, chosen, sums), pooled.Finished):
        sums.append(np.sum([pooled.values(s, settings, chosen, step, size, 10) for s in sites], 0))
    reference = fed.pooled_comparative_reference(sites, settings, chosen)
    assert step.model.converged
    for o in step.outcomes:
        assert o.log_hr is not None and o.se is not None
        z = 1.959964
        found = {
            "hr": math.exp(o.log_hr),
            "ci_low": math.exp(o.log_hr - z * o.se),
            "ci_high": math.exp(o.log_hr + z * o.se),
        }
        _close(found, reference[o.adjustment])
        frame, weights = reference[o.adjustment]["frame"], reference[o.adjustment]["weights"]
        for arm, value in (("target", 1), ("comparator", 0)):
            rows = frame["treatment"].to_numpy() == value
            km = KaplanMeierFitter().fit(
                frame["days"][rows], frame["outcome"][rows], weights=weights[rows]
            )
            grid = [t for t, *_ in step.km[o.adjustment][arm]]
            expected = km.survival_function_at_times(grid).to_numpy()
            curve = np.array([s for *_, s in step.km[o.adjustment][arm]])
            assert np.allclose(curve, expected, atol=1e-9), (o.adjustment, arm)


def test_the_prior_variance_cross_validated_across_sites_is_the_union_s(
    world: tuple[Path, list[Path], StudySpec],
) -> None:
    """Folds cut within each site, a site too small to hold persons out in every fold
    holding none out: the federated lockstep cross-validation picks the union's variance,
    with the union's held-out log-likelihoods, and the estimates at it."""
    _, stores, spec = world
    settings = spec.analyses[0].settings.model_copy(  # type: ignore[union-attr]
        update={"ps_variance": None, "ps_cv_folds": 3, "adjustments": ["none"]}
    )
    rows = fed.site_rows(stores, settings)
    sites = [*_split(rows[0], 3, seed=5), *rows[1:]]  # 5 sites, 19 to 197 rows
    least = 5  # the nodes' min_cell_count
    kept = [ps_cv.site_folds(s.treatment, 3, 1, least).max() for s in sites]
    assert kept == [-1, -1, 2, 2, 2]  # the two smallest hold no fold out
    chosen = pooled.candidates(rows[1], 10, 8)
    sums: list[list[float]] = []
    while not isinstance(step := pooled.drive(settings, chosen, sums), pooled.Finished):
        size = pooled.length(settings, len(chosen), step.get("stage"))
        sums.append(
            np.sum([pooled.values(s, settings, chosen, step, size, least) for s in sites], 0)
        )
    variance, means = fed.cross_validated_variance(sites, settings, chosen, least)
    assert step.variance == variance
    replayed = iter(sums)
    _, found = ps_cv.cross_validate(len(chosen), "laplace", 3, lambda _q: list(next(replayed)))
    assert np.allclose(found, means, rtol=1e-7)
    reference = fed.pooled_comparative_reference(sites, settings, chosen, variance)
    (o,) = step.outcomes
    assert o.log_hr == pytest.approx(math.log(reference["none"]["hr"]), abs=1e-6)


def test_a_study_cross_validates_the_pooled_prior_on_secure_sums(
    world: tuple[Path, list[Path], StudySpec],
) -> None:
    tmp, stores, spec = world
    data = spec.model_dump(mode="json")
    data["analyses"][0]["settings"].update(
        {"ps_variance": None, "ps_cv_folds": 3, "adjustments": ["none"]}
    )
    data["analyses"][0]["settings"]["pooled"]["max_covariates"] = 6
    cv_spec = StudySpec.model_validate(data)
    result = run_study(cv_spec, stores, tmp / "cv", hub_dir=tmp / "hub")
    analysis = result["analyses"][0]
    settings = cv_spec.analyses[0].settings  # type: ignore[union-attr]
    sites = fed.site_rows(stores, settings)
    chosen = pooled.choose({str(i): pooled.candidates(s, 10, 6) for i, s in enumerate(sites)}, 6)
    variance, _ = fed.cross_validated_variance(sites, settings, chosen)
    assert analysis["pooled_ps"]["variance"] == variance
    assert analysis["pooled_ps"]["variance_from"] == "cross-validation"
    reference = fed.pooled_comparative_reference(sites, settings, chosen, variance)
    (found,) = analysis["pooled"]
    _close(found, reference["none"])
