"""Pseudonymization at ingest: keyed person ids, identifiers and free text not stored, shifts."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import duckdb
import pytest
from tests.spec.world import World

from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store
from medlab.errors import LoadError, PolicyError
from medlab.privacy.ingest import IngestPolicy, load_ingest_policy
from medlab.privacy.secret import secret_path

MRN = "MRN-00042"


def _csv(tmp_path: Path, name: str = "csv", persons: tuple[int, ...] = (1, 2, 3)) -> Path:
    w = World()
    for pid in persons:
        w.person(pid, yob=1960 + pid)
        w.rows["person"][-1]["person_source_value"] = f"{MRN}-{pid}"
        w.condition(pid, 100, "2010-03-01")
        w.condition(pid, 102, "2011-03-01")
        w.add(
            "observation",
            person_id=pid,
            observation_concept_id=500,
            observation_date=dt.date(2012, 1, 1),
            value_as_string=f"patient {pid} lives at 12 Elm Street",
        )
    directory = tmp_path / name
    w.write(directory)
    (directory / "location.csv").write_text(
        "location_id,address_1,address_2,city,state,zip,location_source_value\n"
        "7,12 Elm Street,Flat 3,Springfield,IL,62704-1234,HOME-42\n"
    )
    return directory


def _store(tmp_path: Path, name: str = "node.duckdb") -> Path:
    store = tmp_path / name
    init_store(store)
    return store


def _rows(store: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(store), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_default_policy_pseudonymizes_and_drops_identifiers(tmp_path: Path) -> None:
    store = _store(tmp_path)
    load_omop_csv(store, _csv(tmp_path))
    ids = [r[0] for r in _rows(store, "SELECT person_id FROM person ORDER BY 1")]
    assert len(set(ids)) == 3 and not set(ids) & {1, 2, 3}
    # Every table refers to the same pseudonyms: nothing is orphaned.
    for table in ("observation_period", "condition_occurrence", "observation"):
        (orphans,) = _rows(
            store,
            f"SELECT count(*) FROM {table} WHERE person_id NOT IN (SELECT person_id FROM person)",
        )[0]
        assert orphans == 0, table
    text = "\n".join(str(r) for r in _rows(store, "SELECT * FROM person"))
    text += "\n".join(str(r) for r in _rows(store, "SELECT * FROM location"))
    text += "\n".join(str(r) for r in _rows(store, "SELECT * FROM observation"))
    for secret in (MRN, "Elm Street", "Flat 3", "HOME-42", "62704-1234"):
        assert secret not in text, secret
    assert _rows(store, "SELECT zip, city FROM location") == [("627", "Springfield")]
    # The node keeps HMAC(source id) -> pseudonym only, and its secret is owner-only.
    mapping = _rows(store, "SELECT source_hash, pseudonym FROM medlab.pseudonyms")
    assert sorted(p for _, p in mapping) == ids
    assert all(len(h) == 64 and h not in ("1", "2", "3") for h, _ in mapping)
    mode = stat.S_IMODE(secret_path(store).stat().st_mode)
    assert mode == 0o600


def test_pseudonyms_are_stable_across_loads_and_a_second_load_of_a_person_is_refused(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    load_omop_csv(store, _csv(tmp_path, "first", persons=(1, 2)))
    first = dict(_rows(store, "SELECT year_of_birth, person_id FROM person"))
    # New persons and new events for known ones, in a later load.
    later = tmp_path / "later"
    later.mkdir()
    (later / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
        "5,8532,1990,0,0\n"
    )
    (later / "condition_occurrence.csv").write_text(
        "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,"
        "condition_type_concept_id\n"
        "100,1,102,2015-01-01,32817\n100001,5,100,2015-01-01,32817\n"
    )
    load_omop_csv(store, later)
    (person_1,) = _rows(
        store, "SELECT person_id FROM condition_occurrence WHERE condition_occurrence_id = 100"
    )[0]
    assert person_1 == first[1961]
    again = tmp_path / "again"
    again.mkdir()
    (again / "person.csv").write_text((later / "person.csv").read_text())
    with pytest.raises(LoadError, match="already in the store"):
        load_omop_csv(store, again)


def test_another_node_secret_gives_other_pseudonyms(tmp_path: Path) -> None:
    source = _csv(tmp_path)
    a, b = _store(tmp_path, "a.duckdb"), _store(tmp_path, "b.duckdb")
    load_omop_csv(a, source)
    load_omop_csv(b, source)
    ids_a = {r[0] for r in _rows(a, "SELECT person_id FROM person")}
    ids_b = {r[0] for r in _rows(b, "SELECT person_id FROM person")}
    assert not ids_a & ids_b


def test_date_shift_keeps_intervals_and_stays_within_the_bound(tmp_path: Path) -> None:
    store = _store(tmp_path)
    policy = IngestPolicy(date_shift_max_days=30)
    load_omop_csv(store, _csv(tmp_path), ingest=policy)
    rows = _rows(
        store,
        """SELECT person_id, min(condition_start_date), max(condition_start_date)
           FROM condition_occurrence GROUP BY 1""",
    )
    shifts = set()
    for _, first, last in rows:
        assert (last - first).days == 365  # 2010-03-01 .. 2011-03-01 kept
        shift = (first - dt.date(2010, 3, 1)).days
        assert 1 <= abs(shift) <= 30
        shifts.add(shift)
    assert len(shifts) > 1  # per person, not one global offset
    births = sorted(r[0] for r in _rows(store, "SELECT year_of_birth FROM person"))
    assert births == [1961, 1962, 1963]  # not shifted
    info = dict(_rows(store, "SELECT key, value FROM medlab.store_info"))
    assert json.loads(info["ingest_policy.load1"])["date_shift_max_days"] == 30


def test_free_text_only_when_the_steward_opts_in(tmp_path: Path) -> None:
    store = _store(tmp_path)
    load_omop_csv(store, _csv(tmp_path), ingest=IngestPolicy(keep_free_text=True))
    values = {r[0] for r in _rows(store, "SELECT value_as_string FROM observation")}
    assert "patient 1 lives at 12 Elm Street" in values


def test_ingest_policy_files_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "ingest.yaml"
    bad.write_text("date_shift_max_days: -4\nkeep_names: true\n")
    with pytest.raises(PolicyError) as caught:
        load_ingest_policy(bad)
    assert "$.date_shift_max_days" in str(caught.value) and "$.keep_names" in str(caught.value)
    assert load_ingest_policy(None) == IngestPolicy()


def test_record_export_is_off_by_default_and_k_anonymous_when_on(tmp_path: Path) -> None:
    from medlab.privacy.export import export_persons
    from medlab.privacy.policy import ReleasePolicy

    store = _store(tmp_path)
    load_omop_csv(store, _csv(tmp_path, persons=tuple(range(1, 31))))
    out = tmp_path / "persons.csv"
    with pytest.raises(PolicyError, match="off"):
        export_persons(store, out, ReleasePolicy())
    # 30 persons born 1961..1990 fall in six 5-year bands of 5: below k = 10.
    with pytest.raises(PolicyError, match="6 of 6 groups") as caught:
        export_persons(store, out, ReleasePolicy(record_level_export=True))
    assert "30 persons" in str(caught.value) and not out.exists()
    result = export_persons(store, out, ReleasePolicy(record_level_export=True, min_cell_count=5))
    assert result.passed and result.groups == 6
    lines = out.read_text().splitlines()
    assert lines[0] == "person_id,age_band,sex,zip3" and len(lines) == 31
    assert all(line.split(",")[0] not in {str(i) for i in range(1, 31)} for line in lines[1:])
