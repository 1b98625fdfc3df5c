"""Characterization: sums pooled across nodes equal the union; SMDs point the planted way."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from tests.helpers import SCOPE, released, split_store

from medlab.analyses import characterization as ch
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from medlab.synth.cohorts import new_users


@pytest.fixture(scope="module")
def users(synth_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("characterization") / "hospital_c.duckdb"
    shutil.copy(synth_study / "hospital_c.duckdb", store)
    generate(store, parse_definition(new_users(43013024)), 3)  # apixaban
    generate(store, parse_definition(new_users(1310149)), 4)  # warfarin
    return store


SETTINGS = ch.CharacterizationSettings(
    domains=["condition_occurrence", "drug_exposure"],
    windows=[ch.Window(start=-365, end=0), ch.Window(start=-30, end=-1)],
)


def _combine(con: duckdb.DuckDBPyConnection, cohort: int) -> tuple[int, list[ch.Covariate]]:
    local = ch.local(con, cohort, SETTINGS)
    return ch.combine([released(ch.to_release(local, "c", cohort, SCOPE))])


def test_age_mean_and_sd_match_numpy_on_the_rows(users: Path) -> None:
    with open_store(users, read_only=True) as con:
        entries, covariates = _combine(con, 4)
        ages = np.array(
            [
                r[0]
                for r in con.execute(
                    """SELECT year(c.cohort_start_date) - p.year_of_birth FROM results.cohort c
               JOIN person p ON p.person_id = c.subject_id WHERE cohort_definition_id = 4"""
                ).fetchall()
            ],
            dtype=float,
        )
    age = next(c for c in covariates if c.covariate_id == "age")
    assert entries == len(ages)
    assert age.mean == pytest.approx(ages.mean(), rel=1e-12)
    assert age.sd == pytest.approx(ages.std(ddof=1), rel=1e-9)
    sexes = [c for c in covariates if c.covariate_id.startswith("gender:")]
    assert sum(c.count for c in sexes) == entries


def test_node_sums_equal_the_union(users: Path, tmp_path: Path) -> None:
    with open_store(users, read_only=True) as con:
        whole = _combine(con, 3)
    parts = []
    for copy in split_store(users, 3, tmp_path):
        with open_store(copy) as con:
            local = ch.local(con, 3, SETTINGS)
        assert local.entries
        parts.append(released(ch.to_release(local, copy.stem, 3, SCOPE)))
    pooled = ch.combine(parts)
    assert pooled[0] == whole[0]
    for a, b in zip(pooled[1], whole[1], strict=True):
        assert (a.covariate_id, a.count) == (b.covariate_id, b.count)
        assert a.mean == pytest.approx(b.mean, rel=1e-12)
        assert a.sd == pytest.approx(b.sd, rel=1e-9)


def test_standardized_differences_show_the_planted_confounding(users: Path) -> None:
    with open_store(users) as con:
        _, apixaban = _combine(con, 3)
        _, warfarin = _combine(con, 4)
    smd = ch.standardized_differences(apixaban, warfarin)
    ckd = smd["condition_occurrence:-365..0:46271022"]  # chronic kidney disease
    assert ckd < -0.1  # warfarin users have more kidney disease
    assert smd["age"] < -0.1  # and are older
    a = next(c for c in apixaban if c.covariate_id == "age")
    w = next(c for c in warfarin if c.covariate_id == "age")
    assert smd["age"] == pytest.approx((a.mean - w.mean) / np.sqrt((a.sd**2 + w.sd**2) / 2))


def test_charlson_index_matches_a_pandas_computation_on_the_rows(users: Path) -> None:
    from medlab.analyses.charlson import CATEGORIES

    with open_store(users, read_only=True) as con:
        _, covariates = _combine(con, 4)
        entries = con.execute(
            """SELECT subject_id, cohort_start_date FROM results.cohort
               WHERE cohort_definition_id = 4"""
        ).df()
        eras = con.execute(
            "SELECT person_id, condition_concept_id, condition_era_start_date FROM condition_era"
        ).df()
        ancestry = con.execute(
            "SELECT ancestor_concept_id, descendant_concept_id FROM concept_ancestor"
        ).df()
    category_of = {a: c for c in CATEGORIES for a in c.ancestors}
    concept_categories: dict[int, set[int]] = {}
    for a, d in ancestry.itertuples(index=False):
        if a in category_of:
            concept_categories.setdefault(int(d), set()).add(category_of[a].category_id)
    weight = {c.category_id: c.weight for c in CATEGORIES}
    by_person: dict[int, list[tuple[object, int]]] = {}
    for pid, concept, start in eras.itertuples(index=False):
        for category in concept_categories.get(int(concept), ()):
            by_person.setdefault(int(pid), []).append((start, category))
    scores = np.array(
        [
            sum(
                weight[k] for k in {k for start, k in by_person.get(int(pid), []) if start <= index}
            )
            for pid, index in entries.itertuples(index=False)
        ],
        dtype=float,
    )
    assert scores.max() > 0  # the synthetic vocabulary places diabetes and MI in Charlson
    cci = next(c for c in covariates if c.covariate_id == "charlson_index")
    assert cci.mean == pytest.approx(scores.mean(), rel=1e-12)
    assert cci.sd == pytest.approx(scores.std(ddof=1), rel=1e-9)
