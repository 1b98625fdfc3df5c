"""The ``medlab`` command end to end, called in-process through its entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medlab.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "version")
    assert code == 0 and out.strip() == "0.1.0"


def test_node_init_load_info_dq(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, eunomia_dir: Path
) -> None:
    store = tmp_path / "node.duckdb"
    code, out, _ = run(capsys, "node", "init", str(store))
    assert code == 0 and "created node store" in out

    code, out, _ = run(capsys, "node", "init", str(store))
    assert code == 3  # never overwrites

    code, out, _ = run(capsys, "node", "load", str(store), "--omop-csv", str(eunomia_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["source_cdm_version"] == "5.3.1" and report["rows_loaded"] > 400_000
    assert any("observation_period.person_id" in w for w in report["warnings"])

    code, out, _ = run(capsys, "node", "info", str(store), "--json")
    info = json.loads(out)
    assert code == 0 and info["tables"]["person"] == 2694
    assert info["fingerprint"].startswith("sha256:")

    code, out, _ = run(capsys, "node", "info", str(store))
    assert code == 0 and info["fingerprint"] in out and "person" in out

    code, out, _ = run(capsys, "node", "dq", str(store), "--json")
    dq = json.loads(out)
    assert code == 0 and dq["failed"] > 0 and dq["passed"] + dq["failed"] == len(dq["checks"])

    code, out, err = run(capsys, "node", "dq", str(store), "--fail-on-error")
    assert code == 5 and "FAIL" in out and "data quality checks failed" in err

    code, out, _ = run(capsys, "node", "dq", str(store), "--all")
    assert code == 0 and "pass" in out and "conformance" in out


def test_load_text_output_lists_files_and_warnings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "node.duckdb"
    main(["node", "init", str(store)])
    src = tmp_path / "csv"
    src.mkdir()
    (src / "PERSON.csv").write_text(
        "PERSON_ID,GENDER_CONCEPT_ID,YEAR_OF_BIRTH,RACE_CONCEPT_ID,ETHNICITY_CONCEPT_ID\n"
        "1,8507,1960,0,0\n"
    )
    (src / "notes.csv").write_text("a\n1\n")
    code, out, _ = run(capsys, "node", "load", str(store), "--omop-csv", str(src))
    assert code == 0 and "PERSON.csv" in out and "1 rows loaded" in out
    assert "notes.csv: not a CDM v5.4 table" in out


def test_refused_load_prints_where_and_exits_4(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "node.duckdb"
    main(["node", "init", str(store)])
    src = tmp_path / "csv"
    src.mkdir()
    (src / "death.csv").write_text("person_id,death_date\n1,2020-13-01\n")
    capsys.readouterr()
    code, out, err = run(capsys, "node", "load", str(store), "--omop-csv", str(src))
    assert code == 4
    assert "file death.csv, line 2, column death_date" in err
    assert "Traceback" not in err + out


def test_missing_store_is_a_plain_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "node", "info", str(tmp_path / "nope.duckdb"))
    assert code == 3 and "no node store here" in err and "medlab node init" in err


def test_not_a_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "other.duckdb"
    duckdb.connect(str(path)).close()
    code, _, err = run(capsys, "node", "dq", str(path))
    assert code == 3 and "not a medlab node store" in err


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, "node", "load", "x.duckdb")
    assert code == 2  # --omop-csv is required


def test_synth_writes_stores_and_truth(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "hospitals"
    code, out, _ = run(
        capsys, "synth", str(out_dir), "--sites", "2", "--patients", "400", "--seed", "3"
    )
    assert code == 0 and "true HR 0.6" in out
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.endswith(".lock")) == [
        "hospital_a.duckdb",
        "hospital_a.secret",  # each store's secret, made with it (0600)
        "hospital_b.duckdb",
        "hospital_b.secret",
        "truth.json",
    ]
    truth = json.loads((out_dir / "truth.json").read_text())
    assert truth["seed"] == 3 and len(truth["sites"]) == 2
    code, _, err = run(capsys, "synth", str(out_dir), "--patients", "400")
    assert code == 2 and "never overwritten" in err
    shutil.rmtree(out_dir)
    code, out, _ = run(capsys, "synth", str(out_dir), "--sites", "1", "--patients", "50", "--json")
    assert code == 0 and json.loads(out)["sites"][0]["persons"] == 50


def test_an_unforeseen_error_is_one_line_and_exit_70(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import medlab.cli.node as node_cli

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something medlab did not foresee\nsecond line")

    monkeypatch.setattr(node_cli, "open_store", broken)  # a bug deep inside a command
    code = main(["node", "info", "x.duckdb"])
    err = capsys.readouterr().err
    assert code == 70 and "Traceback" not in err
    assert "internal error: RuntimeError: something medlab did not foresee" in err
    assert "second line" not in err and "MEDLAB_DEBUG" in err
    monkeypatch.setenv("MEDLAB_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["node", "info", "x.duckdb"])
