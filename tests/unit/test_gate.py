"""The release gate's rules, and an attacker who solves the margins of a suppressed table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linprog

from medlab.errors import PolicyError
from medlab.privacy import gate
from medlab.privacy.policy import Dominance, ReleasePolicy, load_policy
from medlab.privacy.release import (
    WITHHELD,
    Cells,
    Constraint,
    Curve,
    Model,
    Release,
    Released,
    Statistic,
    Steps,
    Sums,
    require_released,
)

EXACT = ReleasePolicy(rounding="none", precision="none")


def _apply(policy: ReleasePolicy, *elements: object, node: gate.NodeSide | None = None) -> Released:
    return gate.apply(policy, Release("incidence", "site", tuple(elements)), node)  # type: ignore[arg-type]


def _journal(policy: ReleasePolicy, *elements: object) -> list[str]:
    """The rules the gate applied (node-internal: the steward's view)."""
    node = gate.NodeSide()
    _apply(policy, *elements, node=node)
    return [d.rule for d in node.journal]


def test_count_rule_and_rounding() -> None:
    p = ReleasePolicy()
    assert gate.count_rule(p, 0) == "zero count"
    assert gate.count_rule(ReleasePolicy(allow_zeros=True), 0) is None
    assert gate.count_rule(p, 9) == "count below 10"
    # midpoint-6: 10..12 -> 9, which would show a count under 10, so it is suppressed too.
    assert gate.count_rule(p, 12) == "rounded count below 10"
    assert gate.count_rule(p, 13) is None and p.round_count(13) == 15
    assert [p.round_count(n) for n in (1, 6, 7, 18, 19)] == [3, 3, 9, 15, 21]
    nearest5 = ReleasePolicy(rounding="nearest5")
    assert [nearest5.round_count(n) for n in (10, 12, 13, 17, 18)] == [10, 10, 15, 15, 20]


def _table(cells: dict[tuple[int, int], int]) -> Cells:
    """A 3 x 3 table with row, column and grand totals as additive margins."""
    counts = {f"r{i}c{j}": {"n": v} for (i, j), v in cells.items()}
    for i in range(3):
        counts[f"r{i}"] = {"n": sum(cells[i, j] for j in range(3))}
        counts[f"c{i}"] = {"n": sum(cells[j, i] for j in range(3))}
    counts["all"] = {"n": sum(cells.values())}
    margins = [Constraint(f"r{i}", tuple(f"r{i}c{j}" for j in range(3)), ("n",)) for i in range(3)]
    margins += [Constraint(f"c{j}", tuple(f"r{i}c{j}" for i in range(3)), ("n",)) for j in range(3)]
    margins += [Constraint("all", ("r0", "r1", "r2"), ("n",))]
    margins += [Constraint("all", ("c0", "c1", "c2"), ("n",))]
    return Cells("table", counts, constraints=tuple(margins))


def _attack(table: Cells, released: dict[str, dict[str, int | None]], target: str) -> float:
    """The width of the interval a linear-programming attacker can pin ``target`` to, using
    every released count, every margin and non-negativity."""
    unknown = [r for r, v in released.items() if v["n"] is None]
    index = {r: i for i, r in enumerate(unknown)}
    a_eq, b_eq = [], []
    for c in table.constraints:
        row = np.zeros(len(unknown))
        rhs = 0.0
        for r, sign in [(c.total, -1.0)] + [(p, 1.0) for p in c.parts]:
            if r in index:
                row[index[r]] += sign
            else:
                rhs -= sign * released[r]["n"]  # type: ignore[operator]
        if row.any():
            a_eq.append(row)
            b_eq.append(rhs)
    objective = np.zeros(len(unknown))
    objective[index[target]] = 1.0
    low = linprog(objective, A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).fun
    high = -linprog(-objective, A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).fun
    return float(high - low)


def test_a_suppressed_cell_cannot_be_rebuilt_from_row_and_column_totals() -> None:
    cells = {(i, j): 40 + 7 * i + 3 * j for i in range(3) for j in range(3)}
    cells[1, 1] = 3  # the secret
    table = _table(cells)
    released = _apply(EXACT, table).values["table"]
    assert released["r1c1"]["n"] is None
    suppressed = [r for r, v in released.items() if v["n"] is None]
    assert len(suppressed) >= 4  # primary plus complementary suppression
    for row in suppressed:
        assert _attack(table, released, row) >= 10, row
    # Without complementary suppression the attacker would recover it exactly.
    only_primary = {r: ({"n": None} if r == "r1c1" else v) for r, v in table.counts.items()}
    assert _attack(table, only_primary, "r1c1") == pytest.approx(0)  # type: ignore[arg-type]


def test_a_complement_below_the_minimum_suppresses_the_row() -> None:
    cells = Cells(
        "covariates",
        {"entries": {"n": 200}, "male": {"n": 196}, "diabetes": {"n": 50}},
        complements={"male": "entries", "diabetes": "entries"},
    )
    released = _apply(EXACT, cells)
    assert released.values["covariates"]["male"]["n"] is None  # 4 are not male
    assert released.values["covariates"]["diabetes"]["n"] == 50
    assert any(rule.startswith("complement") for rule in _journal(EXACT, cells))


def test_nested_steps_hide_small_removals() -> None:
    steps = Steps(
        "attrition",
        (
            ("original", {"persons": 500}),
            ("washout", {"persons": 497}),  # 3 removed: shows 500
            ("prior outcome", {"persons": 489}),  # 11 removed since the shown 500
            ("at risk", {"persons": 7}),
        ),
    )
    shown = [s["persons"] for s in _apply(EXACT, steps).values["attrition"]]
    assert shown == [500, 500, 489, None]


def test_sums_need_a_group_and_no_dominant_contributor() -> None:
    big = Sums("age", 100, {"sum": 5000.0}, largest=(80.0, 79.0), magnitude=5000.0)
    assert _apply(EXACT, big).values["age"]["mean"] == 50.0
    small = Sums("age", 5, {"sum": 250.0}, largest=(60.0, 55.0), magnitude=250.0)
    assert _apply(EXACT, small).values["age"]["mean"] is None
    dominated = Sums("cost", 50, {"sum": 1e6}, largest=(9.5e5, 1e4), magnitude=1e6)
    released = _apply(EXACT, dominated)
    assert released.values["cost"]["mean"] is None
    assert "dominance" in _journal(EXACT, dominated)[0]
    # With the defaults (n = 2, k = 90%, p = 10%) the p% rule implies the (n, k) rule; a
    # steward who relaxes (n, k) still has it.
    lax = ReleasePolicy(rounding="none", dominance=Dominance(n=1, k=0.9, p=0.5))
    p_rule = Sums("cost", 50, {"sum": 1000.0}, largest=(500.0, 300.0), magnitude=1000.0)
    assert "p% rule" in _journal(lax, p_rule)[0]


def _model(events: tuple[int, int], persons: tuple[int, int] = (400, 400)) -> Model:
    return Model(
        "cox",
        1,
        sum(persons),
        sum(events),
        {"hr": 0.8, "ci_low": 0.5, "ci_high": 1.2},
        {
            "target_persons": persons[0],
            "comparator_persons": persons[1],
            "target_events": events[0],
            "comparator_events": events[1],
        },
        ("target_events", "comparator_events"),
    )


def test_models_refused_with_too_few_events() -> None:
    ok = _apply(EXACT, _model((30, 40))).values["cox"]
    assert ok["refused"] is None and ok["hr"] == 0.8 and ok["target_events"] == 30
    few = _apply(EXACT, _model((4, 4))).values["cox"]
    assert few["hr"] is None and few["refused"] == WITHHELD  # one text for every reason
    assert "events per parameter" in _journal(EXACT, _model((4, 4)))[-1]  # the steward's
    one_arm = _apply(EXACT, _model((30, 4))).values["cox"]
    assert one_arm["hr"] is None and one_arm["comparator_events"] is None
    wide = Model("cox", 3, 12, 40, {"hr": 1.0}, {})
    assert _apply(EXACT, wide).values["cox"]["refused"] == WITHHELD
    assert "degrees of freedom" in _journal(EXACT, wide)[-1]


def test_curves_stop_where_few_remain_and_group_steps() -> None:
    points = tuple((float(t), 100.0 - 3 * t, 3.0, 1 - 0.03 * t) for t in range(40))
    released = _apply(EXACT, Curve("km", {"target": points})).values["km"]["target"]
    assert [p["time"] for p in released] == [float(t) for t in range(40)]  # the whole grid
    shown = [p for p in released if p["at_risk"] is not None]
    assert all(p["at_risk"] >= 10 for p in shown)
    assert max(p["time"] for p in shown) <= 30  # at t = 31, 7 remain at risk
    # A new step shows only after 10 events (every 4th point, 3 events each); points in
    # between repeat the last shown value.
    changes = [b["time"] for a, b in itertools.pairwise(shown) if a["value"] != b["value"]]
    assert all(b - a >= 3 for a, b in itertools.pairwise(changes))


def test_statistics_need_a_group() -> None:
    released = _apply(EXACT, Statistic("equipoise", 0.5, 9), Statistic("smd", 0.05, 100, "smd"))
    assert released.values == {"equipoise": None, "smd": 0.05}
    # A proportion whose numerator (or complement) is a small count is withheld too.
    small = _apply(EXACT, Statistic("equipoise", 5 / 100, 100, numerator=5))
    assert small.values["equipoise"] is None


def test_analysis_types_outside_the_policy_release_nothing() -> None:
    policy = ReleasePolicy(allowed_analyses=["characterization"])
    released = _apply(policy, Statistic("x", 1.0, 100))
    assert released.values == {"refused": "analysis type not allowed by the node's policy"}


def test_only_the_gate_makes_released_payloads() -> None:
    with pytest.raises(TypeError):
        Released("incidence", "s", "v", "d", {}, {}, {})
    with pytest.raises(TypeError, match="only released"):
        require_released([Release("incidence", "s", ())])  # type: ignore[list-item]
    released = _apply(EXACT, Statistic("x", 1.0, 100))
    require_released([released])
    assert released.policy_digest == EXACT.digest() != ReleasePolicy().digest()


def test_policy_files_are_validated_with_paths(tmp_path: Path) -> None:
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"min_cell_count": 0, "dominance": {"k": 2}}))
    with pytest.raises(PolicyError) as caught:
        load_policy(bad)
    assert "$.min_cell_count" in str(caught.value) and "$.dominance.k" in str(caught.value)
    nan = tmp_path / "nan.yaml"
    nan.write_text("differential_privacy: {epsilon_per_release: .nan}\n")
    with pytest.raises(PolicyError, match="epsilon_per_release"):
        load_policy(nan)
    good = tmp_path / "good.yaml"
    good.write_text("version: ward-7\nmin_cell_count: 5\nrounding: nearest5\n")
    policy = load_policy(good)
    assert (policy.version, policy.min_cell_count) == ("ward-7", 5)
    assert load_policy(None) == ReleasePolicy()
