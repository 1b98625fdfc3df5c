"""Pooled models on secure sums through ``study run``: three synthetic sites, a logistic and
a site-stratified Cox model, equal to statsmodels on the union of the sites' rows; a site
whose own policy withholds its contribution is left out and named."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from tests import federation as fed

from medlab.ledger import parties
from medlab.ledger.log import TransparencyLog
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec
from medlab.synth.cohorts import new_users, outcome
from medlab.synth.generate import records, synthesize

POPULATION = {
    "first_exposure_only": True,
    "remove_duplicate_subjects": "remove all",
    "risk_window_start": 1,
    "risk_window_end": 0,
    "end_anchor": "cohort end",
}


def _spec(effect: dict[str, Any]) -> StudySpec:
    def analysis(name: str, model: str) -> dict[str, Any]:
        settings = {"model": model, "population": POPULATION}
        return {
            "type": "federated_model",
            "name": name,
            "target": 1,
            "comparator": 2,
            "outcome": 3,
            "settings": settings,
        }

    return StudySpec.model_validate(
        {
            "name": "pooled models",
            "cohorts": [
                {
                    "id": 1,
                    "name": "target",
                    "definition": new_users(effect["target"]["ingredient_concept_id"]),
                },
                {
                    "id": 2,
                    "name": "comparator",
                    "definition": new_users(effect["comparator"]["ingredient_concept_id"]),
                },
                {
                    "id": 3,
                    "name": "outcome",
                    "definition": outcome(effect["outcome"]["concept_id"]),
                },
            ],
            "analyses": [
                analysis("cox", "cox"),
                analysis("logit", "logistic"),
                analysis("binned", "cox_binned"),
            ],
        }
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], StudySpec]:
    tmp = tmp_path_factory.mktemp("pooled")
    truth = synthesize(tmp, sites=3, patients=5000, seed=3)
    stores = [tmp / s["store"] for s in records(truth, "sites")]
    effect = next(e for e in records(truth, "effects") if e["kind"] == "hazard_ratio")
    for store in stores:  # full precision, so the pooled fit is compared to 1e-6
        set_policy(store, ReleasePolicy(precision="none", min_events_per_parameter=5))
    return tmp, stores, _spec(effect)


def _reference(stores: list[Path], spec: StudySpec, name: str) -> Any:
    analysis = next(a for a in spec.analyses if a.name == name)
    return fed.pooled_reference(stores, analysis.settings)  # type: ignore[attr-defined]


def _terms(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in result["analyses"] if a["name"] == name)


def test_pooled_models_equal_the_fit_on_the_union(world: tuple[Path, list[Path], StudySpec]):
    tmp, stores, spec = world
    result = run_study(spec, stores, tmp / "out", hub_dir=tmp / "hub")
    assert _terms(result, "binned")["bin_days"] == 30  # the nodes' event_bin_days
    for name in ("cox", "logit", "binned"):
        found = _terms(result, name)
        assert found["converged"] and found["sites"] == sorted(s.stem for s in stores)
        reference = _reference(stores, spec, name)
        for term, b, se in zip(found["terms"], reference.params, reference.bse, strict=True):
            assert math.log(term["estimate"]) == pytest.approx(b, abs=1e-6)
            ci = math.log(term["ci_high"]) - math.log(term["ci_low"])
            assert ci / (2 * 1.959964) == pytest.approx(se, abs=1e-6)
    # The hub holds only masked vectors and sums: no site's own numbers in any output.
    written = json.loads((tmp / "out" / "results.json").read_text())
    assert "per_site" not in json.dumps(_terms(written, "cox"))
    # Each node logs a digest of every secure-aggregation message it sent, never the vector.
    with TransparencyLog(parties.node(stores[0]).log_dir, None) as log:
        events = [json.loads(log.entry(i)) for i in range(log.size)]
    sent = [e for e in events if e["type"] == "secure_sum"]
    assert {e["phase"] for e in sent} == {"advertise", "share", "mask", "consistency", "unmask"}
    assert all(e["message"].startswith("sha256:") and "y" not in e for e in sent)
    report = (tmp / "out" / "report.html").read_text()
    treatment = _terms(written, "cox")["terms"][0]
    assert "cox model on secure sums over hospital_a, hospital_b, hospital_c" in report
    assert f"<td>treatment</td><td>{treatment['estimate']}</td>" in report


def test_a_site_whose_rules_withhold_its_contribution_is_left_out(
    world: tuple[Path, list[Path], StudySpec],
):
    tmp, _, spec = world
    # Fresh nodes (copies with their own identities): the original nodes have summed these
    # very queries over all three sites and refuse to sum them over two.
    stores = fed.copy_sites(tmp, tmp / "fresh")
    set_policy(
        stores[2],
        ReleasePolicy(precision="none", min_cell_count=100_000, min_events_per_parameter=5),
    )
    result = run_study(spec, stores, tmp / "out2", hub_dir=tmp / "hub2")
    found = _terms(result, "logit")
    assert found["sites"] == sorted(s.stem for s in stores[:2])
    assert "below 100000" in found["withheld_by"][stores[2].stem]
    reference = _reference(stores[:2], spec, "logit")
    for term, b in zip(found["terms"], reference.params, strict=True):
        assert math.log(term["estimate"]) == pytest.approx(b, abs=1e-6)
