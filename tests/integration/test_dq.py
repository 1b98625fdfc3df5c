"""Each data quality check, on data made to violate it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from medlab.cdm.dq import all_checks, run_checks
from medlab.cdm.store import open_store

ONE_PERSON = "(SELECT min(person_id) FROM person)"
FEMALE = "(SELECT min(person_id) FROM person WHERE gender_concept_id = 8532)"
MALE = "(SELECT min(person_id) FROM person WHERE gender_concept_id = 8507)"

# check name -> SQL that makes the synthetic store violate it beyond its threshold.
VIOLATIONS: dict[str, list[str]] = {
    "is_primary_key:person.person_id": [
        f"UPDATE person SET person_id = {ONE_PERSON} "
        "WHERE person_id = (SELECT max(person_id) FROM person)"
    ],
    "is_required:person.gender_concept_id": [
        "ALTER TABLE person ALTER COLUMN gender_concept_id DROP NOT NULL",
        f"UPDATE person SET gender_concept_id = NULL WHERE person_id = {ONE_PERSON}",
    ],
    "is_foreign_key:observation_period.person_id": [
        "UPDATE observation_period SET person_id = 999999999 WHERE observation_period_id = 1"
    ],
    "concept_exists:condition_occurrence.condition_concept_id": [
        "UPDATE condition_occurrence SET condition_concept_id = 123456789 "
        "WHERE condition_occurrence_id = 1"
    ],
    "fk_domain:condition_occurrence.condition_concept_id": [
        "UPDATE condition_occurrence SET condition_concept_id = 1310149 "
        "WHERE condition_occurrence_id = 1"
    ],
    "is_standard_valid_concept:condition_occurrence.condition_concept_id": [
        "UPDATE condition_occurrence SET condition_concept_id = 35208414 "
        "WHERE condition_occurrence_id = 1"
    ],
    "cdm_source_row:cdm_source": ["DELETE FROM cdm_source"],
    "datetime_matches_date:visit_occurrence.visit_start_datetime": [
        "UPDATE visit_occurrence SET visit_start_datetime = visit_start_datetime "
        "+ INTERVAL 3 DAY WHERE visit_occurrence_id = 1"
    ],
    "measure_person_completeness:observation_period": [
        f"DELETE FROM observation_period WHERE person_id = {ONE_PERSON}"
    ],
    "standard_concept_record_completeness:measurement.measurement_concept_id": [
        "UPDATE measurement SET measurement_concept_id = 0 WHERE measurement_id % 5 = 0"
    ],
    "source_value_completeness:condition_occurrence.condition_source_value": [
        "UPDATE condition_occurrence SET condition_concept_id = 0, condition_source_value = NULL "
        "WHERE condition_occurrence_id % 5 = 0"
    ],
    "plausible_after_birth:condition_occurrence.condition_start_date": [
        "UPDATE condition_occurrence SET condition_start_date = DATE '1900-01-01' "
        "WHERE condition_occurrence_id % 20 = 0"
    ],
    "plausible_before_death:drug_exposure.drug_exposure_start_date": [
        "UPDATE death SET death_date = DATE '2000-01-01'"
    ],
    "plausible_start_before_end:drug_exposure.drug_exposure_end_date": [
        "UPDATE drug_exposure SET drug_exposure_end_date = drug_exposure_start_date - 5 "
        "WHERE drug_exposure_id % 10 = 0"
    ],
    "plausible_not_in_future:measurement.measurement_date": [
        "UPDATE measurement SET measurement_date = current_date + 30 WHERE measurement_id = 1"
    ],
    "within_observation_period:procedure_occurrence.procedure_date": [
        "UPDATE procedure_occurrence SET procedure_date = DATE '1990-01-01' "
        "WHERE procedure_occurrence_id % 10 = 0"
    ],
    "within_visit_dates:measurement.measurement_date": [
        "UPDATE measurement SET measurement_date = measurement_date + 30 "
        "WHERE measurement_id % 20 = 0"
    ],
    "plausible_year_of_birth:person.year_of_birth": [
        "UPDATE person SET year_of_birth = 1800 WHERE person_id % 20 = 0"
    ],
    "plausible_age:observation_period.observation_period_end_date": [
        "UPDATE person SET birth_datetime = TIMESTAMP '1870-01-01' WHERE person_id % 20 = 0"
    ],
    "observation_period_overlap:observation_period": [
        "INSERT INTO observation_period SELECT 99999999, person_id, "
        "observation_period_start_date + 1, observation_period_end_date + 1, 32817 "
        "FROM observation_period WHERE observation_period_id = 1"
    ],
    "one_death_per_person:death.person_id": ["INSERT INTO death SELECT * FROM death LIMIT 1"],
    "plausible_value_range:drug_exposure.days_supply": [
        "UPDATE drug_exposure SET days_supply = 400 WHERE drug_exposure_id % 20 = 0"
    ],
    "plausible_measurement_value:measurement.value_as_number": [
        "UPDATE measurement SET value_as_number = 1000 WHERE measurement_concept_id = 3025315"
    ],
    "plausible_gender_male_only:procedure_occurrence.procedure_concept_id": [
        f"INSERT INTO procedure_occurrence (procedure_occurrence_id, person_id, "
        f"procedure_concept_id, procedure_date, procedure_type_concept_id) "
        f"VALUES (99999999, {FEMALE}, 4330583, DATE '2015-01-01', 32817)"
    ],
    "plausible_gender_female_only:condition_occurrence.condition_concept_id": [
        f"INSERT INTO condition_occurrence (condition_occurrence_id, person_id, "
        f"condition_concept_id, condition_start_date, condition_type_concept_id) "
        f"VALUES (99999999, {MALE}, 45769019, DATE '2015-01-01', 32817)"
    ],
}


@pytest.fixture
def store(synth_small: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a synthetic store; every change is rolled back afterwards."""
    with open_store(synth_small / "hospital_b.duckdb") as con:
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        finally:
            con.execute("ROLLBACK")


def test_every_check_kind_has_a_violation_test() -> None:
    kinds = {c.kind for c in all_checks()}
    assert len(kinds) >= 25
    assert kinds == {name.split(":")[0] for name in VIOLATIONS}
    assert len(all_checks()) == len({c.name for c in all_checks()})


def test_clean_synthetic_store_passes_every_check(synth_small: Path) -> None:
    with open_store(synth_small / "hospital_b.duckdb", read_only=True) as con:
        report = run_checks(con)
    assert report.failed == []
    assert report.to_dict()["passed"] == len(all_checks())


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_check_fails_on_violating_data(store: duckdb.DuckDBPyConnection, name: str) -> None:
    checks = [c for c in all_checks() if c.name == name]
    assert len(checks) == 1, name
    assert run_checks(store, checks).failed == []
    for statement in VIOLATIONS[name]:
        store.execute(statement)
    result = run_checks(store, checks).results[0]
    assert result.violations > 0 and result.denominator > 0
    assert not result.passed, f"{name}: {result.pct_violated:.2f}% <= {checks[0].threshold}%"


def test_eunomia_referential_gap_shows_up(eunomia_store: Path) -> None:
    with open_store(eunomia_store, read_only=True) as con:
        report = run_checks(con)
    failed = {r.check.name: r for r in report.failed}
    gap = failed["is_foreign_key:observation_period.person_id"]
    assert (gap.violations, gap.denominator) == (2649, 5343)
    assert "is_primary_key:drug_exposure.drug_exposure_id" in failed
    payload = report.to_dict()
    assert payload["failed"] == len(report.failed)
    assert set(payload["checks"][0]) >= {
        "name",
        "category",
        "table",
        "violations",
        "denominator",
        "threshold",
        "passed",
    }


def test_sources_scanned_together_count_as_each_alone(
    eunomia_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.cdm import dq

    with open_store(eunomia_store, read_only=True) as con:
        together = run_checks(con).to_dict()
        monkeypatch.setattr(dq, "_SOURCES_TOGETHER", 1)  # one query per source
        alone = run_checks(con).to_dict()
    assert together == alone and together["failed"] > 0


def test_a_snapshot_is_checked_once_for_the_profile_and_the_study_run(
    synth_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node agent's profile and a study run read the same kept checks: one scan per
    snapshot, and keeping them leaves the snapshot's fingerprint as it was."""
    from tests import federation as fed

    from medlab.cdm import dq
    from medlab.cdm.fingerprint import snapshot_fingerprint
    from medlab.federation.node import profile
    from medlab.studies import local

    (store,) = fed.copy_sites(synth_small, tmp_path, ("hospital_a",))
    scans = []
    real = dq.run_checks
    monkeypatch.setattr(dq, "run_checks", lambda con: scans.append(1) or real(con))
    with open_store(store, read_only=True) as con:
        before, _ = snapshot_fingerprint(con)
    first = profile.build(store)
    assert profile.build(store).dq == first.dq
    with open_store(store) as con:
        summary = local._quality(con, before)
        after, _ = snapshot_fingerprint(con)
    assert len(scans) == 1 and after == before
    assert first.dq is not None and first.dq.fingerprint == before
    failed = sum(not c.passed for c in first.dq.checks)
    assert summary == {"passed": len(first.dq.checks) - failed, "failed": failed}
