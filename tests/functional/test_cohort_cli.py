"""``medlab cohort import | sql | generate`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlglot

from medlab.cdm.store import open_store
from medlab.cli.main import main

COHORTS = Path(__file__).resolve().parents[3] / "shared/data/eunomia-cohorts"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def circe_file() -> Path:
    path = COHORTS / "CohortGenerator" / "celecoxibAge40Male.json"
    if not path.exists():
        pytest.skip("Eunomia cohorts not available")
    return path


def test_import_prints_medlab_json_and_yaml(
    capsys: pytest.CaptureFixture[str], circe_file: Path, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "cohort", "import", str(circe_file))
    definition = json.loads(out)
    assert code == 0 and definition["primary"]["criteria"][0]["domain"] == "drug_era"
    assert [r["name"] for r in definition["inclusion_rules"]] == ["Age > 40", "Gender = MALE"]
    code, out, _ = run(
        capsys, "cohort", "import", str(circe_file), "--yaml", "--out", str(tmp_path / "c.yaml")
    )
    assert code == 0 and "inclusion_rules:" in (tmp_path / "c.yaml").read_text()


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "spark"])
def test_sql_for_each_dialect(
    capsys: pytest.CaptureFixture[str], circe_file: Path, dialect: str
) -> None:
    code, out, _ = run(
        capsys,
        "cohort",
        "sql",
        str(circe_file),
        "--dialect",
        dialect,
        "--cdm-schema",
        "cdm",
        "--id",
        "9",
    )
    assert code == 0
    tree = sqlglot.parse_one(out.rstrip().rstrip(";"), read=dialect)
    assert "results.cohort" in tree.sql() and "cdm.drug_era" in tree.sql()
    code, out, _ = run(
        capsys, "cohort", "sql", str(circe_file), "--dialect", dialect, "--attrition"
    )
    assert code == 0 and "rule_index" in out


def test_generate_json_contract(
    capsys: pytest.CaptureFixture[str], circe_file: Path, eunomia_store: Path, writable_copy
) -> None:
    store = writable_copy(eunomia_store)
    code, out, _ = run(
        capsys,
        "cohort",
        "generate",
        str(store),
        "--definition",
        str(circe_file),
        "--id",
        "3",
        "--json",
    )
    result = json.loads(out)
    assert code == 0
    assert set(result) == {"cohort_id", "persons", "entries", "attrition", "sql_ms"}
    assert (result["cohort_id"], result["persons"], result["entries"]) == (3, 266, 266)
    assert [(a["rule"], a["persons"], a["entries"]) for a in result["attrition"]] == [
        ("qualifying events", 1800, 1800),
        ("Age > 40", 569, 569),
        ("Gender = MALE", 266, 266),
    ]
    code, out, _ = run(
        capsys, "cohort", "generate", str(store), "--definition", str(circe_file), "--id", "3"
    )
    assert code == 0 and "266 persons, 266 entries" in out and "Gender = MALE" in out
    with open_store(store, read_only=True) as con:
        stored = con.execute(
            "SELECT rule_index, rule_name, persons, entries FROM results.cohort_attrition "
            "WHERE cohort_definition_id = 3 ORDER BY rule_index"
        ).fetchall()
        (rows,) = con.execute(
            "SELECT count(*) FROM results.cohort WHERE cohort_definition_id = 3"
        ).fetchall()[0]
    assert stored == [
        (0, "qualifying events", 1800, 1800),
        (1, "Age > 40", 569, 569),
        (2, "Gender = MALE", 266, 266),
    ]
    assert rows == 266  # generating again replaced the rows, it did not add to them


def test_bad_definitions_exit_6_with_the_path(
    capsys: pytest.CaptureFixture[str], circe_file: Path, tmp_path: Path
) -> None:
    data = json.loads(circe_file.read_text())
    data["PrimaryCriteria"]["CriteriaList"][0]["DrugEra"]["ProviderSpecialty"] = [{"CONCEPT_ID": 1}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    code, _, err = run(capsys, "cohort", "sql", str(bad))
    assert code == 6 and "$.PrimaryCriteria.CriteriaList[0].DrugEra.ProviderSpecialty" in err
    (tmp_path / "broken.json").write_text("{not json")
    code, _, err = run(
        capsys,
        "cohort",
        "generate",
        str(tmp_path / "x.duckdb"),
        "--definition",
        str(tmp_path / "broken.json"),
    )
    assert code == 6 and "not valid JSON" in err
