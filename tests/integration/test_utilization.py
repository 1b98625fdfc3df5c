"""Treatment utilization: shares by year and pathways, pooled exactly across nodes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.helpers import SCOPE, released, split_store
from tests.spec.world import World

from medlab.analyses import utilization
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from medlab.studies.spec import UtilizationAnalysis

HYPERTENSION = {
    "concept_sets": [{"id": 0, "items": [{"concept_id": 320128}]}],
    "primary": {
        "criteria": [{"domain": "condition_occurrence", "codeset_id": 0, "first_occurrence": True}]
    },
}
DRUGS = [1308216, 974166, 1332418]  # lisinopril, hydrochlorothiazide, amlodipine


def test_lines_and_yearly_shares_on_a_small_world(tmp_path: Path) -> None:
    w = World()
    w.condition(w.person(1), 100, "2010-01-01")
    w.drug(1, 201, "2010-02-01")  # drug X (via its clinical drug), first line
    w.drug(1, 210, "2011-03-01")  # drug Y, second line
    w.drug(1, 201, "2011-04-01")
    w.condition(w.person(2), 100, "2010-06-01")
    w.drug(2, 210, "2010-07-01")
    store = w.store(tmp_path)
    generate(
        store,
        parse_definition(
            {
                "concept_sets": [{"id": 0, "items": [{"concept_id": 100}]}],
                "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
            }
        ),
        1,
    )
    with open_store(store, read_only=True) as con:
        u = utilization.local(con, 1, [200, 210])
    # Every pathway of up to three lines is listed, whoever follows it.
    assert set(u.pathways) == {(200,), (210,), (200, 210), (210, 200)}
    assert {p: n for p, n in u.pathways.items() if n} == {(200, 210): 1, (210,): 1}
    assert u.persons_by_year["2010"] == 2
    assert u.treated_by_year[("2011", 200)] == 1 and u.share("2010", 210) == 0.5
    assert u.treated_by_year[("1990", 200)] == 0 and u.persons_by_year["after"] == 0


def test_node_sums_equal_the_union(synth_study: Path, tmp_path: Path) -> None:
    store = tmp_path / "hospital_b.duckdb"
    shutil.copy(synth_study / "hospital_b.duckdb", store)
    generate(store, parse_definition(HYPERTENSION), 1)
    with open_store(store, read_only=True) as con:
        whole = utilization.local(con, 1, DRUGS)
    parts = []
    for copy in split_store(store, 3, tmp_path / "split"):
        with open_store(copy, read_only=True) as con:
            parts.append(utilization.local(con, 1, DRUGS))
    analysis = UtilizationAnalysis(name="u", cohort=1, drugs=DRUGS)
    pooled = utilization.combine(
        [
            released(utilization.to_release(p, f"part{i}", SCOPE, analysis))
            for i, p in enumerate(parts)
        ]
    )
    assert pooled.persons_by_year == whole.persons_by_year
    assert pooled.treated_by_year == whole.treated_by_year
    assert pooled.pathways == whole.pathways
    # Most hypertensive patients start lisinopril or hydrochlorothiazide first (as planted).
    first_lines = {path[0] for path, n in pooled.pathways.items() if n >= 10}
    assert first_lines <= {1308216, 974166, 1332418}
    assert pooled.share("2015", 1308216) == pytest.approx(
        pooled.treated_by_year[("2015", 1308216)] / pooled.persons_by_year["2015"]
    )
