"""Signed, logged study results; evidence bundles that ``medlab verify`` accepts or rejects."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import duckdb
import pytest

from medlab.cli.main import main
from medlab.ledger.keys import Signer, canonical

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/studies/eunomia_celecoxib_diclofenac.yaml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bundle(
    eunomia_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """A study run on a copy of the Eunomia node, exported to a bundle."""
    import shutil

    tmp = tmp_path_factory.mktemp("evidence")
    store = tmp / "eunomia.duckdb"
    shutil.copy(eunomia_store, store)
    out = tmp / "out"
    args = ["study", "run", str(EXAMPLE), "--node", str(store), "--out", str(out)]
    args += ["--hub", str(tmp / "hub"), "--approved-by", "Dr. Steward"]
    assert main(args) == 0
    path = tmp / "bundle.zip"
    assert main(["evidence", "export", str(out), "--out", str(path)]) == 0
    return path, store, tmp / "hub"


def _tampered(bundle: Path, tmp_path: Path, name: str, data: bytes) -> Path:
    """A copy of the bundle with one file replaced and the manifest made to match it, as a
    forger would."""
    with zipfile.ZipFile(bundle) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    files[name] = data
    manifest = json.loads(files["manifest.json"])
    manifest[name] = "sha256:" + hashlib.sha256(data).hexdigest()
    files["manifest.json"] = canonical(manifest)
    target = tmp_path / f"tampered-{name}"
    with zipfile.ZipFile(target, "w") as archive:
        for n, d in files.items():
            archive.writestr(n, d)
    return target


def _rejected(
    capsys: pytest.CaptureFixture[str], bundle: Path, tmp_path: Path, name: str, data: bytes
) -> str:
    """What ``medlab verify`` prints for the bundle with ``name`` replaced by ``data``; it must
    exit 9."""
    code, out, _ = run(capsys, "verify", str(_tampered(bundle, tmp_path, name, data)))
    assert code == 9
    return out


def test_the_bundle_verifies(capsys: pytest.CaptureFixture[str], bundle: tuple) -> None:
    path, store, hub = bundle
    code, out, _ = run(capsys, "verify", str(path))
    assert code == 0 and "✗" not in out and "all" in out and "checks passed" in out
    assert "✓ hub signature over the combined result" in out
    assert "✓ spec hash" in out and "✓ result hash" in out
    with zipfile.ZipFile(path) as archive:
        logs = json.loads(archive.read("logs.json"))
        evidence = json.loads(archive.read("evidence.json"))
    hub_entries = [json.loads(e["entry"]) for e in logs[0]["entries"]]
    assert hub_entries[-1]["type"] == "result_combined"
    assert evidence["environment"]["medlab"] == "0.1.0" and evidence["dq"]["eunomia"]["passed"]
    # The DQ summary is kept per snapshot fingerprint, so the next run of the same data reuses it.
    fingerprint = json.loads(zipfile.ZipFile(path).read("results.json"))["nodes"][0]["fingerprint"]
    with duckdb.connect(str(store), read_only=True) as con:
        (kept,) = con.execute(
            "SELECT value FROM medlab.store_info WHERE key = ?", [f"dq_summary.{fingerprint}"]
        ).fetchone()  # type: ignore[misc]
    assert json.loads(kept) == evidence["dq"]["eunomia"]
    code, out, _ = run(capsys, "log", "verify", str(store))
    assert code == 0 and "✓" in out
    code, out, _ = run(capsys, "log", "verify", str(hub / "ledger"))
    assert code == 0
    entries = (hub / "ledger" / "entries.bin").read_bytes()
    assert b"Dr. Steward" in entries and b"study_submitted" in entries


def test_a_changed_number_fails(
    capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path
) -> None:
    path = bundle[0]
    results = zipfile.ZipFile(path).read("results.json").decode()
    assert '"hr": 1.1' in results
    bad = _tampered(
        path, tmp_path, "results.json", results.replace('"hr": 1.1', '"hr": 0.6', 1).encode()
    )
    code, out, err = run(capsys, "verify", str(bad))
    assert code == 9 and "✗ result hash: results.json is the result the hub signed" in out
    assert "result hash" in err


def test_a_swapped_spec_fails(
    capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path
) -> None:
    path = bundle[0]
    spec = json.loads(zipfile.ZipFile(path).read("spec.json"))
    spec["analyses"][0]["settings"]["population"]["washout_period"] = 365
    assert "✗ spec hash" in _rejected(
        capsys, path, tmp_path, "spec.json", json.dumps(spec).encode()
    )


def test_a_foreign_key_fails(
    capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path
) -> None:
    path = bundle[0]
    evidence = json.loads(zipfile.ZipFile(path).read("evidence.json"))
    foreign = Signer.load_or_create(tmp_path / "foreign.key")
    evidence["hub"]["public_key"] = foreign.public_pem
    evidence["hub"]["key_id"] = foreign.key_id
    out = _rejected(capsys, path, tmp_path, "evidence.json", canonical(evidence))
    assert "✗ hub signature over the combined result" in out
    # A forger who also re-signs the statement with the foreign key is caught by the log.
    evidence["hub"]["statement"] = foreign.sign_json(evidence["hub"]["statement"]["signed"])
    out = _rejected(capsys, path, tmp_path, "evidence.json", canonical(evidence))
    assert "✗ hub log: signed by the key that signed the statements" in out


def test_a_changed_node_payload_fails(
    capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path
) -> None:
    path = bundle[0]
    evidence = json.loads(zipfile.ZipFile(path).read("evidence.json"))
    evidence["releases"][0]["payload"]["values"]["attrition"][0]["target_persons"] = 5
    out = _rejected(capsys, path, tmp_path, "evidence.json", canonical(evidence))
    assert "payload is the one the node signed" in out


def test_a_tampered_log_fails_log_verify(
    capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path
) -> None:
    import shutil

    hub = bundle[2]
    copy = tmp_path / "ledger"
    shutil.copytree(hub / "ledger", copy)
    data = (copy / "entries.bin").read_bytes()
    (copy / "entries.bin").write_bytes(data.replace(b"Dr. Steward", b"Dr. Forgery", 1))
    code, out, _ = run(capsys, "log", "verify", str(copy))
    assert code == 9 and "edited" in out


def test_a_bundle_exported_after_a_key_rotation_still_verifies(
    capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path
) -> None:
    path, store, _ = bundle
    out = path.parent / "out"
    code, printed, _ = run(capsys, "node", "key", str(store), "--rotate")
    assert code == 0 and "rotated" in printed
    again = tmp_path / "again.zip"
    assert main(["evidence", "export", str(out), "--out", str(again)]) == 0
    code, printed, _ = run(capsys, "verify", str(again))
    assert code == 0 and "✓ eunomia log: key rotation at entry" in printed
    code, printed, _ = run(capsys, "log", "verify", str(store))
    assert code == 0


def test_pinned_keys(capsys: pytest.CaptureFixture[str], bundle: tuple, tmp_path: Path) -> None:
    path = bundle[0]
    evidence = json.loads(zipfile.ZipFile(path).read("evidence.json"))
    hub_id = evidence["hub"]["key_id"]
    node_ids = [info["key_id"] for info in evidence["nodes"].values()]
    code, out, _ = run(capsys, "verify", str(path))
    assert code == 0 and f"hub {hub_id}" in out
    pins = [a for kid in [hub_id, *node_ids] for a in ("--trust", kid)]
    code, out, _ = run(capsys, "verify", str(path), *pins)
    assert code == 0 and "✓ hub key is one the auditor trusts" in out
    code, out, _ = run(capsys, "verify", str(path), "--trust", "0" * 64)
    assert code == 9 and "✗ hub key is one the auditor trusts" in out
