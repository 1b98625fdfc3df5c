"""Loading OMOP CSV exports: Eunomia as is, damaged copies refused, the store unchanged."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, load_history, open_store, row_counts
from medlab.errors import LoadError
from medlab.ledger import parties
from medlab.privacy.ingest import RAW
from medlab.privacy.secret import secret_path


def _copy_with(src: Path, dest: Path, file: str, edit: Callable[[list[str]], list[str]]) -> Path:
    """A copy of an export directory (links) in which one file's lines were edited."""
    dest.mkdir()
    for path in src.iterdir():
        if path.name != file:
            (dest / path.name).symlink_to(path)
    lines = (src / file).read_text().splitlines(keepends=True)
    (dest / file).write_text("".join(edit(lines)))
    return dest


def _state(store: Path) -> tuple[str, dict[str, int], list[dict[str, object]]]:
    with open_store(store, read_only=True) as con:
        return snapshot_fingerprint(con)[0], row_counts(con), load_history(con)


@pytest.fixture
def seeded_store(tmp_path: Path) -> Path:
    """A store that already holds one earlier load (a location and a care site)."""
    store = tmp_path / "node.duckdb"
    init_store(store)
    first = tmp_path / "first_load"
    first.mkdir()
    (first / "location.csv").write_text("location_id,city\n900,Pudong\n")
    (first / "care_site.csv").write_text("care_site_id,care_site_name,location_id\n90,Ward,900\n")
    load_omop_csv(store, first)
    return store


def test_eunomia_loads_as_is(eunomia_store: Path, eunomia_dir: Path) -> None:
    with open_store(eunomia_store, read_only=True) as con:
        counts = row_counts(con)
        history = load_history(con)
    expected = {
        "person": 2694,
        "observation_period": 5343,
        "condition_occurrence": 65332,
        "drug_exposure": 67707,
        "measurement": 44053,
        "concept": 444,
        "concept_ancestor": 65690,
        "visit_occurrence": 1037,
        "death": 0,
    }
    for table, n in expected.items():
        assert counts[table] == n, table
    assert history[0]["source_cdm_version"] == "5.3.1"


def test_eunomia_warnings_name_the_real_problems(eunomia_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "e.duckdb"
    init_store(store)
    report = load_omop_csv(store, eunomia_dir)
    text = "\n".join(report.warnings)
    assert "observation_period.person_id: 2649 of 5343 rows refer to a person not in" in text
    assert "DRUG_EXPOSURE.csv: 4384 rows reuse a drug_exposure_id" in text
    assert "COHORT_ATTRIBUTE.csv: not a CDM v5.4 table" in text
    assert "cdm_version_concept_id is absent" in text
    renamed = {f.table: f.renamed_columns for f in report.files}
    assert renamed["visit_occurrence"]["admitting_source_concept_id"] == "admitted_from_concept_id"
    assert renamed["cost"] == {"reveue_code_source_value": "revenue_code_source_value"}
    assert (
        report.to_dict()["rows_loaded"] == report.rows_loaded == sum(f.rows for f in report.files)
    )


def test_v53_columns_land_under_their_v54_names(eunomia_store: Path) -> None:
    with open_store(eunomia_store, read_only=True) as con:
        (n,) = con.execute(
            "SELECT count(*) FROM visit_occurrence WHERE admitted_from_concept_id = 0"
        ).fetchall()[0]
    assert n == 1037


def test_reloading_into_a_new_store_gives_the_same_fingerprint(
    eunomia_store: Path, eunomia_dir: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.duckdb"
    init_store(again)
    # The same node (the same secret) gives every person the same pseudonym again.
    shutil.copy(secret_path(eunomia_store), secret_path(again))
    load_omop_csv(again, eunomia_dir)
    assert _state(again)[0] == _state(eunomia_store)[0]
    # Another node's secret gives other pseudonyms, so another fingerprint.
    other = tmp_path / "other.duckdb"
    init_store(other)
    load_omop_csv(other, eunomia_dir)
    assert _state(other)[0] != _state(eunomia_store)[0]


def test_a_store_rebuilt_under_the_hospitals_identity_is_the_same_node(
    eunomia_store: Path, eunomia_dir: Path, tmp_path: Path
) -> None:
    hospital = tmp_path / "identity"
    first, rebuilt = tmp_path / "first.duckdb", tmp_path / "rebuilt" / "first.duckdb"
    rebuilt.parent.mkdir()
    init_store(first, hospital)
    load_omop_csv(first, eunomia_dir)
    init_store(rebuilt, hospital)  # the old store file is gone or elsewhere: same identity
    load_omop_csv(rebuilt, eunomia_dir)
    assert _state(rebuilt)[0] == _state(first)[0]
    assert _state(first)[0] != _state(eunomia_store)[0]  # another hospital, other pseudonyms
    assert parties.node(first).signer.key_id == parties.node(rebuilt).signer.key_id
    assert parties.node(rebuilt).log_dir == hospital / "ledger"
    assert not first.with_suffix(".secret").exists() and not first.with_suffix(".key").exists()


def _refused(store: Path, directory: Path) -> LoadError:
    before = _state(store)
    with pytest.raises(LoadError) as info:
        load_omop_csv(store, directory)
    assert _state(store) == before, "a refused load must leave the store exactly as it was"
    return info.value


def test_bad_date_is_refused_with_file_line_column(
    seeded_store: Path, eunomia_dir: Path, tmp_path: Path
) -> None:
    def edit(lines: list[str]) -> list[str]:
        lines[2] = re.sub(r"\d{4}-\d{2}-\d{2}", "2013-02-30", lines[2], count=1)
        return lines

    damaged = _copy_with(eunomia_dir, tmp_path / "bad", "OBSERVATION_PERIOD.csv", edit)
    err = _refused(seeded_store, damaged)
    assert (err.file, err.line, err.column) == (
        "OBSERVATION_PERIOD.csv",
        3,
        "observation_period_start_date",
    )
    assert "'2013-02-30'" in str(err) and "date" in str(err)


def test_missing_required_column_is_refused(
    seeded_store: Path, eunomia_dir: Path, tmp_path: Path
) -> None:
    def drop_gender(lines: list[str]) -> list[str]:
        return [
            ",".join(f for i, f in enumerate(line.rstrip("\n").split(",")) if i != 1) + "\n"
            for line in lines
        ]

    damaged = _copy_with(eunomia_dir, tmp_path / "bad", "PERSON.csv", drop_gender)
    err = _refused(seeded_store, damaged)
    assert err.file == "PERSON.csv" and err.column == "gender_concept_id"
    assert "missing" in str(err)


def test_duplicate_person_id_is_refused(
    seeded_store: Path, eunomia_dir: Path, tmp_path: Path
) -> None:
    def duplicate(lines: list[str]) -> list[str]:
        clone = lines[1].split(",")
        clone[2] = "1977"  # a different person with the same id
        return [*lines, ",".join(clone)]

    damaged = _copy_with(eunomia_dir, tmp_path / "bad", "PERSON.csv", duplicate)
    err = _refused(seeded_store, damaged)
    assert (err.file, err.line, err.column) == ("PERSON.csv", 2696, "person_id")
    assert "duplicate primary key" in str(err)


def test_exact_copy_of_an_event_row_is_refused(
    seeded_store: Path, eunomia_dir: Path, tmp_path: Path
) -> None:
    damaged = _copy_with(
        eunomia_dir,
        tmp_path / "bad",
        "CONDITION_OCCURRENCE.csv",
        lambda lines: [*lines[:11], lines[10], *lines[11:]],
    )
    err = _refused(seeded_store, damaged)
    assert (err.file, err.line, err.column) == (
        "CONDITION_OCCURRENCE.csv",
        12,
        "condition_occurrence_id",
    )
    assert "repeats an earlier line exactly" in str(err)


def test_loading_the_same_data_twice_is_refused(eunomia_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "twice.duckdb"
    init_store(store)
    load_omop_csv(store, eunomia_dir)
    err = _refused(store, eunomia_dir)
    assert "already in the store" in str(err)


@pytest.mark.parametrize(
    ("value", "message"),
    [("1.5", "whole number"), ("abc", "whole number"), ("99999999999", "whole number")],
)
def test_unparsable_integers_are_refused(
    seeded_store: Path, tmp_path: Path, value: str, message: str
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
        "1,8507,1960,0,0\n"
        f"2,8532,{value},0,0\n"
    )
    err = _refused(seeded_store, tmp_path / "src")
    assert (err.line, err.column) == (3, "year_of_birth")
    assert message in str(err)


def test_whole_numbers_written_as_decimals_load(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "PERSON.csv").write_text(
        "PERSON_ID,GENDER_CONCEPT_ID,YEAR_OF_BIRTH,RACE_CONCEPT_ID,ETHNICITY_CONCEPT_ID,"
        "BIRTH_DATETIME\n1.0,8507,1960.0,0,0,1960-05-01T23:30:00+02:00\n"
    )
    load_omop_csv(seeded_store, tmp_path / "src", ingest=RAW)  # keep the id to check it
    with open_store(seeded_store, read_only=True) as con:
        row = con.execute("SELECT person_id, year_of_birth, birth_datetime FROM person").fetchall()
    assert row[0][:2] == (1, 1960)
    assert row[0][2].isoformat() == "1960-05-01T21:30:00"  # offsets are converted to UTC


def test_unknown_column_with_values_is_refused(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id,shoe\n"
        "1,8507,1960,0,0,44\n"
    )
    err = _refused(seeded_store, tmp_path / "src")
    assert err.column == "shoe" and "holds values" in str(err)


def test_quoted_newlines_still_give_the_physical_line(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "location.csv").write_text(
        'location_id,address_1,city\n1,"12 Main St\nSuite 4",Springfield\nx,"",Shelbyville\n'
    )
    err = _refused(seeded_store, tmp_path / "src")
    assert (err.line, err.column) == (4, "location_id")


def test_malformed_csv_is_refused_with_its_line(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "location.csv").write_text("location_id,city\n1,A\n2,B,extra\n")
    err = _refused(seeded_store, tmp_path / "src")
    assert err.file == "location.csv" and err.line == 3


def test_directory_without_csv_files_is_refused(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="no OMOP CSV files"):
        load_omop_csv(seeded_store, tmp_path / "empty")


def test_load_log_records_files_and_hashes(eunomia_store: Path) -> None:
    with open_store(eunomia_store, read_only=True) as con:
        files = json.loads(con.execute("SELECT files FROM medlab.load_log").fetchall()[0][0])
    person = next(f for f in files if f["table"] == "person")
    assert person["rows"] == 2694 and len(person["sha256"]) == 64


def test_athena_tab_separated_vocabulary_loads(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "athena").mkdir()
    (tmp_path / "athena" / "CONCEPT.csv").write_text(
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\t"
        "standard_concept\tconcept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
        '320128\tEssential "primary" hypertension\tCondition\tSNOMED\tClinical Finding\tS\t'
        "59621000\t20020131\t20991231\t\n"
    )
    load_omop_csv(seeded_store, tmp_path / "athena")
    with open_store(seeded_store, read_only=True) as con:
        name, start = con.execute("SELECT concept_name, valid_start_date FROM concept").fetchall()[
            0
        ]
    assert name == 'Essential "primary" hypertension' and start.isoformat() == "2002-01-31"


def test_two_files_for_one_table_are_refused(seeded_store: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for name in ("PERSON.csv", "person.csv"):
        (tmp_path / "src" / name).write_text("person_id\n")
    err = _refused(seeded_store, tmp_path / "src")
    assert "both PERSON.csv and person.csv" in str(err)
