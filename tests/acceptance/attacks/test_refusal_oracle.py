"""Refusals that leak nothing: the same question gets the same kind of answer in both worlds.

The attack: refusals were free and said different things depending on the data ("fewer than
10 persons" was checked before the budget, "within 9 of a released population" after), with
the budget exhausted and for a project never granted one. Now a missing or spent budget is
refused before any data is read, small populations are answered with noise like any other,
and the one data-dependent refusal (the noisy differencing test) has one text and costs the
query's budget. The secret: whether the target has observation 500, so a cohort of her alone
holds one person or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from medlab.cohorts.model import parse_definition
from medlab.errors import BudgetError, MedlabError
from medlab.privacy import budget as budgets
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.privacy.query import DPQuery, answer
from tests.acceptance.attacks import worlds as w

POLICY = ReleasePolicy(differential_privacy=DifferentialPrivacy(enabled=True))
HER_WITH_500 = {
    "concept_sets": [*w.SETS, w.concept_set(5, 500)],
    "primary": {"criteria": [w.MARKED]},
    "inclusion_rules": [
        {
            "name": "observation 500",
            "expression": {
                "criteria": [
                    {"criterion": {"domain": "observation", "codeset_id": 5}, "start_window": {}}
                ]
            },
        }
    ],
}


def _state(store: Path) -> dict[str, Any]:
    """What a refusal must leave as it was: budgets, spends, caches, audit, the log."""
    with duckdb.connect(str(store), read_only=True) as con:
        tables = [
            t
            for (t,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'medlab'"
            ).fetchall()
        ]
        rows = {t: con.execute(f"SELECT * FROM medlab.{t} ORDER BY ALL").fetchall() for t in tables}
    ledger = store.with_suffix(".ledger") / "entries.bin"
    return {"tables": rows, "log": ledger.read_bytes() if ledger.exists() else b""}


def _ask(store: Path, project: str, **extra: Any) -> str:
    """What the attacker sees: the kind of answer, or the refusal text."""
    query = DPQuery(
        project=project, cohort=parse_definition(HER_WITH_500), statistic="count", **extra
    )
    try:
        result = answer(store, query, POLICY)
    except MedlabError as exc:
        return f"{type(exc).__name__}: {exc.message}"
    return f"answered with noise scale {result.release.scale:g}"


@pytest.fixture
def worlds(tmp_path: Path) -> list[Path]:
    stores = []
    for secret in (True, False):
        store = w.build(tmp_path / str(secret), secret)
        set_policy(store, POLICY)
        stores.append(store)
    return stores


def test_a_project_never_granted_a_budget(worlds: list[Path]) -> None:
    seen = []
    for store in worlds:
        before = _state(store)
        seen.append(_ask(store, "never-granted"))
        assert _state(store) == before  # refused before anything was read or written
    assert seen[0] == seen[1] and seen[0].startswith("BudgetError: project never-granted")


def test_an_exhausted_budget(worlds: list[Path]) -> None:
    seen = []
    for store in worlds:
        budgets.grant(store, "spent", epsilon=1.0)
        budgets.charge(store, "spent", epsilon=1.0, query_key="earlier", purpose="earlier work")
        before = _state(store)
        seen.append(_ask(store, "spent"))
        assert _state(store) == before
    assert seen[0] == seen[1] and "remaining epsilon 0" in seen[0]


def test_a_population_of_one_or_none_is_answered_with_noise_either_way(
    worlds: list[Path],
) -> None:
    seen = []
    for store in worlds:
        budgets.grant(store, "p", epsilon=10.0)
        seen.append(_ask(store, "p"))
    assert seen[0] == seen[1] and seen[0].startswith("answered")
    assert all(budgets.status(s, "p").epsilon_spent == pytest.approx(1.0) for s in worlds)


def test_study_releases_under_dp_need_a_grant_before_any_data(worlds: list[Path]) -> None:
    dp_studies = ReleasePolicy(
        count_protection="differential_privacy",
        differential_privacy=DifferentialPrivacy(enabled=True),
    )
    seen = []
    for store in worlds:
        set_policy(store, dp_studies)
        spec = w.study(
            "dp study",
            {1: HER_WITH_500},
            [{"type": "feasibility", "name": "f", "cohort": 1}],
        ).model_copy(update={"project": "ungranted"})
        view = w.run(spec, store, store.parent / "out")
        seen.append(view["results"]["analyses"][0])
    assert seen[0] == seen[1]
    assert "no privacy budget" in seen[0]["refused"]


def test_budget_errors_name_no_data(worlds: list[Path]) -> None:
    with pytest.raises(BudgetError) as caught:
        budgets.charge(worlds[0], "x", epsilon=1.0, query_key="k", purpose="p")
    assert "person" not in caught.value.message
