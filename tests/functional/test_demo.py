"""``make demo`` runs end to end (here with fewer synthetic patients)."""

import json
from pathlib import Path

import pytest

from medlab.demo import main
from medlab.screens import CHROMIUM


def test_demo_prints_one_row_per_node(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, eunomia_dir: Path
) -> None:
    out = tmp_path / "demo-output"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    assert main(out, patients=900, eunomia_dir=eunomia_dir) == 0
    printed = capsys.readouterr().out
    for node in ("hospital_a", "hospital_b", "hospital_c", "eunomia"):
        assert node in printed
    assert "Eunomia GiBleed (CDM v5.3.1)" in printed
    assert "planted truth: apixaban vs warfarin" in printed
    assert "new warfarin users with AF" in printed
    assert "Strategus/3.json" in printed and "479" in printed
    assert "hazard ratios" in printed and (out / "study" / "report.html").exists()
    # Authorized operation: onboarding, a project with agreements, two approvals.
    assert "onboarded: operator olga; stewards sam (eunomia) and sue" in printed
    assert "rita (project lead) approves: submitted" in printed
    assert "olga (operator's reviewer) approves: running" in printed
    assert "usage of nsaid-gi-safety" in printed and "audit trail of st_" in printed
    assert "study_dispatched" in printed
    # The study ran as a federation: a hub and four agents, Eunomia's steward approving.
    assert "hub serving on http://127.0.0.1:" in printed
    assert "eunomia: awaiting_approval" in printed and "medlab node approve" in printed
    assert "hospital_a: completed" in printed and "study completed: answered 4 of 4" in printed
    # Pooled estimates on secure sums are asked for; the demo test's small synthetic sites
    # cannot take part, so they are withheld, with each site's reason.
    assert "pooled estimates withheld: 1 sites may contribute; need 2" in printed
    assert "hospital_a not pooled: its contribution would show" in printed
    assert "disclosure report" in printed and (out / "study" / "disclosure.json").exists()
    assert "privacy budget of demo-project" in printed and "cache: True" in printed
    assert "offline checks pass" in printed and (out / "evidence.zip").exists()
    assert not (out / "stale.txt").exists()
    assert (out / "synthetic" / "truth.json").exists()
    # Each workspace as a picture, taken while the hub served; the tokens to sign in again.
    assert (out / "tokens.json").stat().st_mode & 0o077 == 0
    assert set(json.loads((out / "tokens.json").read_text())) >= {"olga", "sam", "aude"}
    if CHROMIUM.exists():
        shots = {p.name for p in (out / "screenshots").glob("*.png")}
        assert shots >= {
            "researcher-study.png",
            "researcher-covariate-balance.png",
            "researcher-cohort-editor.png",
            "steward-waiting-task.png",
            "auditor-verify.png",
            "operator.png",
        }, shots
        assert all(p.stat().st_size > 20_000 for p in (out / "screenshots").glob("*.png"))
        assert "screenshots of each workspace in" in printed


def test_demo_without_eunomia_shows_three_nodes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(tmp_path / "out", patients=300, eunomia_dir=tmp_path / "missing") == 0
    printed = capsys.readouterr().out
    assert "showing 3 nodes" in printed and "hospital_c" in printed
