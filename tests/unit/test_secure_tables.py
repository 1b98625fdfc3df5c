"""A table release split into its skeleton and numbers, summed, rebuilt and gated at the hub:
the skeleton carries no number, the sum of two sites' numbers rebuilds the table of their
sums, a row a node's audit flagged is contributed as nobody's and withheld by the hub's
gate, and an element secure sums cannot carry is refused."""

from __future__ import annotations

import json

import pytest

from medlab.privacy import gate, secure_tables
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import Cells, Constraint, Model, Population, Release, Sums


def _release(a: int, b: int, days: float) -> Release:
    cells = Cells(
        "strata",
        {
            "all": {"persons": a + b, "outcomes": 3},
            "men": {"persons": a, "outcomes": 1},
            "women": {"persons": b, "outcomes": 2},
        },
        extras={k: {"person_days": days} for k in ("all", "men", "women")},
        constraints=(Constraint("all", ("men", "women"), ("persons", "outcomes")),),
        populations={"men": Population("p:men", frozenset(range(a)))},
    )
    ages = Sums(
        "sum:age",
        a + b,
        {"sum": 50.0 * (a + b), "sum_squares": 2600.0 * (a + b)},
        magnitude=50.0 * (a + b),
        value_range=(0.0, 150.0),
    )
    return Release("incidence", "site", (cells, ages), {"strata": {"all": {"grouping": "x"}}})


def test_the_skeleton_holds_no_number_and_the_sum_rebuilds_the_table() -> None:
    one, two = _release(30, 40, 1000.0), _release(25, 35, 500.0)
    shape = secure_tables.skeleton(one)
    assert shape == secure_tables.skeleton(two)  # the shape is the spec's, not the data's
    assert "30" not in json.dumps(shape) and "1000" not in json.dumps(shape)
    summed = [x + y for x, y in zip(secure_tables.numbers(one), secure_tables.numbers(two))]
    assert len(summed) == secure_tables.size(shape)
    pooled = secure_tables.rebuild(shape, summed, "pooled")
    cells = pooled.element("strata")
    assert isinstance(cells, Cells) and cells.counts["men"] == {"outcomes": 2, "persons": 55}
    assert cells.extras["all"]["person_days"] == 1500.0
    ages = pooled.element("sum:age")
    assert isinstance(ages, Sums) and ages.n == 130 and ages.totals["sum"] == 6500.0


def test_a_flagged_row_is_contributed_as_nobodys_and_withheld_at_the_hub() -> None:
    one = secure_tables.without(_release(30, 40, 1000.0), {("strata", "men")})
    cells = one.element("strata")
    assert isinstance(cells, Cells) and cells.counts["men"] == {"persons": 0, "outcomes": 0}
    shape = secure_tables.skeleton(one)
    numbers = secure_tables.numbers(one)
    flagged = {("strata", "men")}
    pooled = secure_tables.rebuild(shape, numbers, "pooled", flagged)
    side = gate.NodeSide(auditor=secure_tables.Withheld({"withheld:strata:men"}))  # type: ignore[arg-type]
    shown = gate.apply(ReleasePolicy(rounding="none"), pooled, side).values["strata"]
    assert shown["men"]["persons"] is None
    assert shown["women"]["persons"] is None  # the margin would give it away: withheld too


def test_a_model_cannot_be_summed_as_a_table() -> None:
    model = Model("m", 1, 10, 5, {"hr": 1.0}, {"n": 10})
    with pytest.raises(secure_tables.NotATable, match="not a table"):
        secure_tables.skeleton(Release("comparative", "s", (model,)))
