"""Building SQL as SQLGlot trees from fixed templates and typed values.

Templates are constants in medlab's code, written in DuckDB syntax and parsed once into trees.
Values from a definition (concept ids, days, dates, numbers) enter only as typed SQLGlot nodes
through ``:placeholders``, never as text. Two marker functions keep date arithmetic portable:
``DATEADD_DAYS(date, n)`` and ``DAYS_BETWEEN(a, b)`` become SQLGlot's DateAdd / DateDiff nodes,
which render correctly for DuckDB, PostgreSQL and Spark.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import cache
from typing import cast

import sqlglot
from sqlglot import exp

from medlab.cohorts.model import DateRange, NumericRange

Value = exp.Expression | int | float | bool | str | dt.date | None

DIALECTS = ("duckdb", "postgres", "spark")


@cache
def _parse(template: str) -> exp.Expression:
    return cast(exp.Expression, sqlglot.parse_one(template, read="duckdb"))


def literal(value: Value) -> exp.Expression:
    """A typed SQL node for a Python value."""
    if isinstance(value, exp.Expression):
        return value
    if value is None:
        return exp.null()
    if isinstance(value, bool):
        return exp.true() if value else exp.false()
    if isinstance(value, int | float):
        return exp.Literal.number(value)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.Type.DATE)
    return exp.Literal.string(str(value))


def _portable(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Anonymous):
        name = str(node.this).upper()
        if name == "DATEADD_DAYS":
            date, days = node.expressions
            return exp.cast(
                exp.DateAdd(this=date, expression=days, unit=exp.var("DAY")),
                exp.DataType.Type.DATE,
            )
        if name == "DAYS_BETWEEN":
            start, end = node.expressions
            return exp.DateDiff(this=end, expression=start, unit=exp.var("DAY"))
    return node


def sql(template: str, **values: Value) -> exp.Expression:
    """The template's tree with each ``:name`` replaced by the typed node for ``values[name]``."""
    tree = exp.replace_placeholders(
        _parse(template).copy(), **{k: literal(v) for k, v in values.items()}
    )
    return cast(exp.Expression, tree.transform(_portable))


def condition(template: str, **values: Value) -> exp.Expression:
    """A boolean expression from a template (see :func:`sql`)."""
    return cast(exp.Expression, cast(exp.Select, sql(f"SELECT {template}", **values)).selects[0])


def all_of(conditions: Sequence[exp.Expression]) -> exp.Expression:
    """AND of the conditions (TRUE when there are none)."""
    return cast(exp.Expression, exp.and_(*conditions)) if conditions else exp.true()


def is_in(column: exp.Expression, ids: Sequence[int], negate: bool = False) -> exp.Expression:
    """``column IN (ids)`` with integer literal nodes."""
    test = column.copy().isin(*[exp.Literal.number(int(i)) for i in ids])
    return exp.not_(test) if negate else test


def in_range(value: exp.Expression, r: NumericRange | DateRange) -> exp.Expression:
    """The comparison a range describes, applied to ``value``."""
    low = literal(r.value)
    if r.op == "lt":
        return exp.LT(this=value.copy(), expression=low)
    if r.op == "lte":
        return exp.LTE(this=value.copy(), expression=low)
    if r.op == "eq":
        return exp.EQ(this=value.copy(), expression=low)
    if r.op == "gt":
        return exp.GT(this=value.copy(), expression=low)
    if r.op == "gte":
        return exp.GTE(this=value.copy(), expression=low)
    between = exp.Between(this=value.copy(), low=low, high=literal(r.extent))
    return between if r.op == "bt" else exp.not_(between)


def render(tree: exp.Expression, dialect: str) -> str:
    """SQL text of a tree in one of DuckDB, PostgreSQL or Spark."""
    return tree.sql(dialect=dialect, pretty=True)
