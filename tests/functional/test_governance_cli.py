"""The governance commands end to end against a real hub process on loopback: init prints
the operator's token, the operator onboards with ``hub organisation|user|node|project``, the
lead drafts an agreement, the steward signs it at the node, the operator activates it, a
study is submitted and approved twice, and usage and the audit trail are printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests import federation as fed

from medlab.cli.main import main
from medlab.federation import launch
from medlab.ledger import parties
from medlab.synth.cohorts import new_users, outcome

SPEC = {
    "name": "cli bleeds",
    "cohorts": [
        {"id": 1, "name": "t", "definition": new_users(fed.APIXABAN)},
        {"id": 3, "name": "o", "definition": outcome(fed.GI_BLEED)},
    ],
    "analyses": [{"type": "incidence", "name": "i", "target": 1, "outcome": 3}],
}


def test_the_governance_commands_walk_a_study_to_dispatch(
    synth_small: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (store,) = fed.copy_sites(synth_small, tmp_path / "nodes", ("hospital_a",))
    fed.federation_policy(store, require_agreement=True)
    hub_dir = tmp_path / "hub"

    def run(*args: str, token: str | None = None, code: int = 0) -> str:
        capsys.readouterr()
        if token is not None:
            monkeypatch.setenv("MEDLAB_TOKEN", token)
        assert main(list(args)) == code, capsys.readouterr()
        return capsys.readouterr().out

    def last(out: str) -> str:
        return out.strip().splitlines()[-1]

    operator = last(run("hub", "init", str(hub_dir), "--operator", "olga"))
    assert operator.startswith("mlt_")
    port = launch.free_port()
    monkeypatch.setenv("MEDLAB_HUB_URL", f"http://{launch.LOOPBACK}:{port}")
    server = launch.start_hub(hub_dir, port, tmp_path / "hub.log")
    try:
        run("hub", "organisation", "add", "org-a", "--kind", "hospital", token=operator)
        run("hub", "organisation", "add", "pharma-x", "--kind", "pharma")
        tokens = {}
        for name, role, org in (
            ("sam", "steward", "org-a"),
            ("rita", "researcher", "pharma-x"),
            ("alan", "researcher", "pharma-x"),
        ):
            tokens[name] = last(
                run("hub", "user", "add", name, "--role", role, "--organisation", org)
            )
        pem = tmp_path / "node.pem"
        pem.write_text(parties.node(store).signer.public_pem)
        run("hub", "node", "add", "hospital_a", "--key", str(pem), "--organisation", "org-a")
        run(
            "hub",
            "project",
            "add",
            "p1",
            "--organisation",
            "pharma-x",
            "--purpose",
            "x",
            "--lead",
            "rita",
            "--ends",
            "2099-01-01",
        )
        run("hub", "project", "member", "p1", "alan", "--role", "analyst", token=tokens["rita"])
        agreement = last(
            run(
                "hub",
                "agreement",
                "add",
                "p1",
                "--node",
                "hospital_a",
                "--analyses",
                "incidence",
                "--policy-version",
                "test-1",
                "--expires",
                "2098-01-01",
                "--domains",
                "condition_occurrence,drug_exposure",
            )
        )
        assert agreement.startswith("ag_")
        # The steward signs at the node (with the node's key) and the hub verifies it.
        out = run("node", "agreement", "sign", str(store), agreement, token=tokens["sam"])
        assert f"signed {agreement} at hospital_a" in out
        run("hub", "agreement", "activate", agreement, token=operator)
        listed = json.loads(run("hub", "agreement", "list", "p1", "--json"))
        assert [a["state"] for a in listed] == ["active"]
        spec = tmp_path / "study.json"
        spec.write_text(json.dumps(SPEC))
        study = last(run("study", "submit", str(spec), "--project", "p1", token=tokens["alan"]))
        run("hub", "approve", study, token=tokens["alan"], code=10)  # not their own
        assert "submitted" in run("hub", "approve", study, token=tokens["rita"])
        assert "running" in run("hub", "approve", study, token=operator)
        rows = json.loads(run("hub", "studies", "--json", token=tokens["sam"]))
        assert [r["study_id"] for r in rows] == [study]
        assert "p1: 1 studies" in run("hub", "usage", "p1", token=tokens["rita"])
        csv = run("hub", "usage", "--csv", token=operator).splitlines()
        assert csv[0].startswith("project,node,studies") and csv[1].startswith("p1,,1")
        trail = run("hub", "audit", str(hub_dir), "--study", study)
        for event in ("study_submitted", "study_approved", "study_dispatched"):
            assert event in trail
        found = json.loads(run("hub", "audit", str(hub_dir), "--user", "alan", "--json"))
        assert {e.get("status") for e in found if e["type"] == "api"} >= {201, 403}
    finally:
        launch.stop(server)
