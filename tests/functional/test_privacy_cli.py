"""``medlab node budget``, ``node query`` and ``node export`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.spec.world import World

from medlab.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path: Path) -> Path:
    w = World()
    for pid in range(1, 61):
        w.person(pid, yob=1950 + pid % 40)
        w.condition(pid, 100, "2010-01-01")
    return w.store(tmp_path)


def test_grant_query_and_budget(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("differential_privacy: {enabled: true, epsilon_per_release: 0.5}\n")
    (tmp_path / "cohort.yaml").write_text(
        yaml.safe_dump(
            {
                "concept_sets": [{"id": 0, "items": [{"concept_id": 100}]}],
                "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
            }
        )
    )
    query = tmp_path / "query.yaml"
    query.write_text(
        "project: trial-7\ncohort: cohort.yaml\nstatistic: mean\nfield: age\nbounds: [0, 120]\n"
    )
    # The policy a request brings may only tighten the node's: DP stays off until the
    # steward turns it on at the node.
    code, _, err = run(capsys, "node", "query", str(store), str(query), "--policy", str(policy))
    assert code == 7 and "$.differential_privacy.enabled" in err and "only tighten" in err
    code, out, _ = run(capsys, "node", "policy", "set", str(store), str(policy), "--by", "dr. s")
    assert code == 0 and "set" in out and "by dr. s" in out
    code, out, _ = run(
        capsys, "node", "budget", "grant", str(store), "--project", "trial-7", "--epsilon", "0.8"
    )
    assert code == 0 and "0.8 left" in out
    code, out, _ = run(capsys, "node", "query", str(store), str(query), "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["kind"] == "mean" and answer["epsilon"] == 0.5 and not answer["cached"]
    assert answer["budget"]["epsilon_remaining"] == pytest.approx(0.3)
    low, high = answer["ci95"]["mean"]
    assert low <= answer["values"]["mean"] <= high
    code, out, _ = run(capsys, "node", "query", str(store), str(query))
    assert code == 0 and "cached" in out and "epsilon 0.5 spent of 0.8" in out
    other = tmp_path / "other.yaml"
    other.write_text(query.read_text().replace("statistic: mean", "statistic: count"))
    code, _, err = run(capsys, "node", "query", str(store), str(other))
    assert code == 8 and "remaining epsilon 0.3" in err  # needs 0.5: refused, nothing spent
    code, out, _ = run(
        capsys, "node", "budget", "show", str(store), "--project", "trial-7", "--json"
    )
    shown = json.loads(out)
    assert shown["epsilon_spent"] == pytest.approx(0.5)
    assert shown["rho_spent_as_approximate_dp"] == {"delta": 1e-7, "epsilon": 0.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: trial-7\ncohort: cohort.yaml\nstatistic: median\n")
    code, _, err = run(capsys, "node", "query", str(store), str(bad))
    assert code == 6 and "$.statistic" in err
    off = tmp_path / "off.yaml"
    off.write_text("differential_privacy: {enabled: false}\n")  # tighter: DP off again
    code, _, err = run(capsys, "node", "query", str(store), str(query), "--policy", str(off))
    assert code == 7 and "differential privacy is off" in err


def test_the_node_policy_is_set_logged_and_shown(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    from medlab.ledger.log import TransparencyLog

    code, out, _ = run(capsys, "node", "policy", "show", str(store))
    assert code == 0 and "medlab's defaults" in out and "below 10 is suppressed" in out
    looser = tmp_path / "looser.yaml"
    looser.write_text("version: ward-5\nmin_cell_count: 5\nrounding: none\n")
    code, out, _ = run(capsys, "node", "policy", "set", str(store), str(looser), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["version_no"] == 1 and shown["policy"]["min_cell_count"] == 5
    with TransparencyLog(store.with_suffix(".ledger"), None) as log:
        last = json.loads(log.entry(log.size - 1))
    assert last["type"] == "policy_set" and last["policy_digest"] == shown["digest"]
    code, out, _ = run(capsys, "node", "policy", "show", str(store))
    assert "ward-5" in out and "below 5" in out and "shown exactly" in out
    # A request may tighten the node's policy, never loosen it; each loosened field is named.
    loose = tmp_path / "loose.yaml"
    loose.write_text("min_cell_count: 1\nrecord_level_export: true\nallow_zeros: true\n")
    code, _, err = run(
        capsys, "node", "export", str(store), "--out", "x.csv", "--policy", str(loose)
    )
    assert code == 7
    for field in ("$.min_cell_count", "$.record_level_export", "$.allow_zeros"):
        assert field in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_cell_count: 0\n")
    code, _, err = run(capsys, "node", "policy", "set", str(store), str(bad))
    assert code == 7 and "$.min_cell_count" in err
    code, out, _ = run(capsys, "node", "policy", "show", str(store), "--json")
    assert json.loads(out)["version_no"] == 1  # the refused setting changed nothing


def test_export_needs_the_policy(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "persons.csv"
    code, _, err = run(capsys, "node", "export", str(store), "--out", str(out))
    assert code == 7 and "off" in err and not out.exists()
