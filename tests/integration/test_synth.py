"""Synthetic hospitals: deterministic, realistic in structure, real vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.store import open_store
from medlab.errors import UsageError
from medlab.synth.generate import site_names, split_patients, synthesize


def _fingerprints(out: Path) -> list[str]:
    prints = []
    for store in sorted(out.glob("*.duckdb")):
        with open_store(store, read_only=True) as con:
            prints.append(snapshot_fingerprint(con)[0])
    return prints


def test_same_seed_same_data_other_seed_other_data(synth_small: Path, tmp_path: Path) -> None:
    synthesize(tmp_path / "again", sites=3, patients=1500, seed=11)
    synthesize(tmp_path / "other", sites=3, patients=1500, seed=12)
    assert _fingerprints(tmp_path / "again") == _fingerprints(synth_small)
    assert set(_fingerprints(tmp_path / "other")).isdisjoint(_fingerprints(synth_small))
    assert (tmp_path / "again" / "truth.json").read_text() == (
        synth_small / "truth.json"
    ).read_text()


def test_patients_split_by_site_weight() -> None:
    assert split_patients(30000, 3) == [12000, 10500, 7500]
    assert sum(split_patients(1001, 4)) == 1001
    assert site_names(3) == ["hospital_a", "hospital_b", "hospital_c"]
    assert site_names(28)[-2:] == ["hospital_aa", "hospital_ab"]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        synthesize(tmp_path, sites=0, patients=10, seed=1)
    with pytest.raises(UsageError):
        synthesize(tmp_path, sites=3, patients=2, seed=1)


def test_every_table_a_study_needs_has_rows(synth_small: Path) -> None:
    with open_store(synth_small / "hospital_c.duckdb", read_only=True) as con:
        for table in (
            "person",
            "observation_period",
            "visit_occurrence",
            "condition_occurrence",
            "drug_exposure",
            "procedure_occurrence",
            "device_exposure",
            "measurement",
            "observation",
            "death",
            "drug_era",
            "condition_era",
            "care_site",
            "provider",
            "location",
            "cdm_source",
            "concept",
            "concept_ancestor",
            "concept_relationship",
        ):
            (n,) = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0]
            assert n > 0, table


def test_chronic_diseases_raise_each_other(synth_study: Path) -> None:
    with open_store(synth_study / "hospital_b.duckdb", read_only=True) as con:
        with_obesity, without = con.execute(
            """WITH f AS (SELECT p.person_id,
                   bool_or(c.condition_concept_id = 433736) AS obese,
                   bool_or(c.condition_concept_id = 201826) AS diabetic
                 FROM person p LEFT JOIN condition_occurrence c USING (person_id)
                 GROUP BY p.person_id)
               SELECT avg(diabetic::INT) FILTER (WHERE obese),
                      avg(diabetic::INT) FILTER (WHERE NOT obese) FROM f"""
        ).fetchall()[0]
    assert with_obesity > 1.5 * without


def test_drugs_are_found_through_ingredient_descendants(synth_small: Path) -> None:
    with open_store(synth_small / "hospital_c.duckdb", read_only=True) as con:
        direct, via_ancestor = con.execute(
            """SELECT count(*) FILTER (WHERE d.drug_concept_id = 1310149),
                      count(*) FILTER (WHERE a.ancestor_concept_id = 1310149)
               FROM drug_exposure d
               JOIN concept_ancestor a ON a.descendant_concept_id = d.drug_concept_id"""
        ).fetchall()[0]
        (mapped,) = con.execute(
            """SELECT count(*) FROM condition_occurrence co
               JOIN concept_relationship r ON r.concept_id_1 = co.condition_source_concept_id
                AND r.relationship_id = 'Maps to' AND r.concept_id_2 = co.condition_concept_id
               WHERE co.condition_source_value = 'I10'"""
        ).fetchall()[0]
        units = con.execute(
            """SELECT DISTINCT c.concept_name FROM measurement m
               JOIN concept c ON c.concept_id = m.unit_concept_id"""
        ).fetchall()
    assert direct == 0 and via_ancestor > 0  # warfarin is recorded as a clinical drug
    assert mapped > 0  # ICD-10-CM I10 source codes map to Essential hypertension
    assert ("kilogram",) in units


def test_drug_exposures_have_supply_and_refills(synth_small: Path) -> None:
    with open_store(synth_small / "hospital_b.duckdb", read_only=True) as con:
        supplies, max_refills, bad_end = con.execute(
            """SELECT list(DISTINCT days_supply ORDER BY days_supply), max(refills),
                      count(*) FILTER (WHERE drug_exposure_end_date
                                       <> drug_exposure_start_date + days_supply - 1)
               FROM drug_exposure"""
        ).fetchall()[0]
    assert {7, 10, 30, 90} <= set(supplies) and max_refills > 0 and bad_end == 0


def test_truth_documents_every_planted_effect(synth_small: Path) -> None:
    truth = json.loads((synth_small / "truth.json").read_text())
    kinds = {e["id"]: e for e in truth["effects"]}
    assert kinds["apixaban_vs_warfarin_gi_bleed"]["true_hazard_ratio"] == 0.6
    assert kinds["lisinopril_vs_hydrochlorothiazide_mi"]["true_hazard_ratio"] == 1.0
    assert kinds["appendicitis_incidence"]["rate_per_1000_person_years"] == 1.2
    assert [s["profile"] for s in truth["sites"]] == [
        "urban_teaching",
        "community",
        "rural_elderly",
    ]
