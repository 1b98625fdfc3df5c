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
    code, out, _ = run(
        capsys, "node", "budget", "grant", str(store), "--project", "trial-7", "--epsilon", "0.8"
    )
    assert code == 0 and "0.8 left" in out
    code, out, _ = run(
        capsys, "node", "query", str(store), str(query), "--policy", str(policy), "--json"
    )
    assert code == 0
    answer = json.loads(out)
    assert answer["kind"] == "mean" and answer["epsilon"] == 0.5 and not answer["cached"]
    assert answer["budget"]["epsilon_remaining"] == pytest.approx(0.3)
    low, high = answer["ci95"]["mean"]
    assert low <= answer["values"]["mean"] <= high
    code, out, _ = run(capsys, "node", "query", str(store), str(query), "--policy", str(policy))
    assert code == 0 and "cached" in out and "epsilon 0.5 spent of 0.8" in out
    other = tmp_path / "other.yaml"
    other.write_text(query.read_text().replace("statistic: mean", "statistic: count"))
    code, _, err = run(capsys, "node", "query", str(store), str(other), "--policy", str(policy))
    assert code == 8 and "remaining epsilon 0.3" in err  # needs 0.5: refused, nothing spent
    code, out, _ = run(
        capsys, "node", "budget", "show", str(store), "--project", "trial-7", "--json"
    )
    shown = json.loads(out)
    assert shown["epsilon_spent"] == pytest.approx(0.5)
    assert shown["rho_spent_as_approximate_dp"] == {"delta": 1e-7, "epsilon": 0.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: trial-7\ncohort: cohort.yaml\nstatistic: median\n")
    code, _, err = run(capsys, "node", "query", str(store), str(bad), "--policy", str(policy))
    assert code == 6 and "$.statistic" in err
    code, _, err = run(capsys, "node", "query", str(store), str(query))
    assert code == 7 and "differential privacy is off" in err


def test_export_needs_the_policy(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "persons.csv"
    code, _, err = run(capsys, "node", "export", str(store), "--out", str(out))
    assert code == 7 and "off" in err and not out.exists()
