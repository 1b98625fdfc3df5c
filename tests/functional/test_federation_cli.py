"""The federation's commands where no hub is needed: node policy files, tasks, approvals."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlab.cli.main import main
from medlab.privacy.node_policy import node_policy


def test_a_malformed_node_policy_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.duckdb"
    assert main(["node", "init", str(store)]) == 0
    before = node_policy(store).policy.digest()
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: x\nmin_cell_count: 10\nfederation:\n  approval: sometimes\n")
    capsys.readouterr()
    assert main(["node", "policy", "set", str(store), str(bad)]) == 7
    err = capsys.readouterr().err
    assert "policy.yaml" in err and "$.federation.approval (line 4)" in err
    assert node_policy(store).policy.digest() == before  # nothing half-written


def test_tasks_approve_and_refuse_need_a_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.duckdb"
    assert main(["node", "init", str(store)]) == 0
    capsys.readouterr()
    assert main(["node", "tasks", str(store), "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert main(["node", "approve", str(store), "tk_none"]) == 2
    assert "no task tk_none" in capsys.readouterr().err
    assert main(["node", "refuse", str(store), "tk_none", "--reason", "no"]) == 2


def test_the_client_needs_a_hub_and_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDLAB_HUB_URL", raising=False)
    monkeypatch.delenv("MEDLAB_TOKEN", raising=False)
    assert main(["study", "status", "st_1"]) == 2
    assert "MEDLAB_HUB_URL" in capsys.readouterr().err
    assert main(["study", "status", "st_1", "--hub", "http://127.0.0.1:9"]) == 2
    assert "MEDLAB_TOKEN" in capsys.readouterr().err
    code = main(["study", "status", "st_1", "--hub", "http://127.0.0.1:9", "--token", "t"])
    assert code == 2 and "did not answer" in capsys.readouterr().err


def test_an_agent_without_a_hub_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.duckdb"
    assert main(["node", "init", str(store)]) == 0
    capsys.readouterr()
    code = main(["node", "agent", str(store), "--hub", "http://127.0.0.1:9", "--once"])
    assert code == 2 and "the hub did not answer" in capsys.readouterr().err


def test_the_database_given_to_hub_init_is_the_one_every_later_command_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3
    import stat

    hub, elsewhere = tmp_path / "hub", tmp_path / "elsewhere.db"
    url = f"sqlite:///{elsewhere}"
    assert main(["hub", "init", str(hub), "--open", "--db", url]) == 0
    recorded = hub / "database"
    assert recorded.read_text().strip() == url
    assert stat.S_IMODE(recorded.stat().st_mode) == 0o600  # a URL may hold a password
    capsys.readouterr()
    assert main(["hub", "add-researcher", str(hub), "ana"]) == 0  # no --db
    assert not (hub / "hub.db").exists()
    with sqlite3.connect(elsewhere) as con:
        assert ("ana", "researcher") in con.execute("SELECT name, role FROM users").fetchall()
