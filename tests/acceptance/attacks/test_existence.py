"""Existence: what a release lists must not depend on who is in it.

A characterization of a one-person cohort used to list, with every value suppressed, the
covariates that exist: her concept history. Now every covariate, stratum, grid point, bin and
step is enumerated from the spec, the policy and the vocabulary before any data is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.attacks import worlds as w


@pytest.fixture(params=[True, False], ids=["secret", "no-secret"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bool]:
    return w.build(tmp_path, request.param), request.param


def _one_person_study() -> w.StudySpec:
    return w.study(
        "who is she",
        {1: w.cohort(w.MARKED), 2: w.cohort(w.OUTCOME)},
        [
            {"type": "characterization", "name": "her_history", "cohorts": [1]},
            {"type": "incidence", "name": "her_follow_up", "target": 1, "outcome": 2},
            {"type": "feasibility", "name": "her_funnel", "cohort": 1},
            {"type": "utilization", "name": "her_drugs", "cohort": 1, "drugs": [200, 210]},
        ],
    )


def test_a_one_person_cohort_releases_the_same_view_in_both_worlds(tmp_path: Path) -> None:
    secret = w.run(_one_person_study(), w.build(tmp_path, True), tmp_path / "a" / "out")
    plain = w.run(_one_person_study(), w.build(tmp_path, False), tmp_path / "b" / "out")
    assert w.keys(secret) == w.keys(plain)  # the same shape everywhere
    assert secret == plain  # and, for one person, nothing but withheld values in it
    # Her outcome (concept 102) is listed as a covariate whether or not she has it: listed
    # because the vocabulary has it, withheld because one person is a small count.
    covariates = secret["results"]["analyses"][0]["cohorts"][0]["covariates"]
    rows = {c["covariate_id"]: c for c in covariates}
    outcome = rows["condition_occurrence:-365..-1:102"]
    assert outcome["count"] is None and outcome["mean"] is None


def test_two_worlds_one_person_apart_give_releases_with_identical_keys(
    tmp_path: Path,
) -> None:
    """The general rule, on a study with every analysis type over large cohorts: the worlds
    differ in one person's outcome; the releases differ at most in values, never in keys."""
    spec = w.study(
        "everything",
        {
            1: w.cohort(w.DRUG_200),
            2: w.cohort(w.DRUG_210),
            3: w.cohort(w.OUTCOME, qualified_limit="all"),
            4: w.cohort(w.CONDITION),
        },
        [
            {
                "type": "comparative",
                "name": "c",
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {"km_horizon_days": 360, "adjustments": ["none", "matching"]},
            },
            {"type": "incidence", "name": "i", "target": 4, "outcome": 3},
            {"type": "characterization", "name": "ch", "cohorts": [1, 2]},
            {"type": "feasibility", "name": "f", "cohort": 4},
            {"type": "utilization", "name": "u", "cohort": 4, "drugs": [200, 210]},
        ],
    )
    secret = w.run(spec, w.build(tmp_path, True), tmp_path / "a" / "out")
    plain = w.run(spec, w.build(tmp_path, False), tmp_path / "b" / "out")
    assert w.keys(secret["results"]) == w.keys(plain["results"])
    assert w.keys(secret["payloads"]) == w.keys(plain["payloads"])
    assert w.keys(secret["disclosure"]) == w.keys(plain["disclosure"])
    assert [t.splitlines()[0] for t in secret["tables"].values()] == [
        t.splitlines()[0] for t in plain["tables"].values()
    ]
    assert {n: len(t.splitlines()) for n, t in secret["tables"].items()} == {
        n: len(t.splitlines()) for n, t in plain["tables"].items()
    }


def test_strata_are_listed_whether_or_not_anyone_is_in_them(world: tuple[Path, bool]) -> None:
    store, _ = world
    out = store.parent / "out"
    results = w.run(_one_person_study(), store, out)["results"]
    rates = results["analyses"][1]["rates"]
    years = [r["year"] for r in rates if r["grouping"] == "year"]
    assert years == ["before", *map(str, range(1950, 2031)), "after"]
    sexes = [r["sex"] for r in rates if r["grouping"] == "sex"]
    assert sexes == ["male", "female", "other"]
    assert all(r["persons"] is None for r in rates)  # one person: nothing shown
