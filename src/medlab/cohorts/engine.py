"""Generate a cohort on a node store: run the compiled steps, write ``results.cohort``.

Concept set rows are bound as parameters into a temporary table; every other step is the
compiled SQLGlot tree rendered for DuckDB (rendered once per definition and cohort id in a
process: a study's later rounds and repeated runs reuse the text). The whole generation is
one transaction: the cohort's old rows are replaced only when the new ones are complete.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import duckdb
from sqlglot import exp

from medlab.cdm.store import fetch_one, open_store, transaction
from medlab.cohorts.compiler import CompiledCohort, compile_cohort
from medlab.cohorts.domains import CODESET_ITEM_COLUMNS
from medlab.cohorts.model import CohortDefinition
from medlab.recent import Recent

RESULTS = "results"


@dataclass(frozen=True)
class AttritionRow:
    """Persons and entries left after a rule (and passing it on its own)."""

    rule: str
    persons: int
    entries: int
    independent_persons: int
    independent_entries: int


@dataclass(frozen=True)
class GenerationResult:
    """What generating one cohort produced on one node (local counts)."""

    cohort_id: int
    persons: int
    entries: int
    attrition: list[AttritionRow] = field(default_factory=list)
    sql_ms: float = 0.0
    # With ``with_persons`` (node-internal): the persons after each rule in order and passing
    # each rule alone (index 0: every qualified event's person), and the cohort's persons.
    rule_persons: list[frozenset[int]] = field(default_factory=list)
    alone_persons: list[frozenset[int]] = field(default_factory=list)
    members: frozenset[int] = frozenset()

    def to_dict(self) -> dict[str, object]:
        """``{"cohort_id", "persons", "entries", "attrition": [...], "sql_ms"}``."""
        return {
            "cohort_id": self.cohort_id,
            "persons": self.persons,
            "entries": self.entries,
            "attrition": [row.__dict__ for row in self.attrition],
            "sql_ms": round(self.sql_ms, 1),
        }


def _create_temp(name: str, query: exp.Expression) -> str:
    create = exp.Create(
        this=exp.to_table(name),
        kind="TABLE",
        expression=query,
        properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
    )
    return create.sql(dialect="duckdb")


@dataclass(frozen=True)
class Plan:
    """A compiled cohort rendered as DuckDB statements: the codeset rows, each step's
    ``CREATE TEMP TABLE``, the insert of the cohort rows, the attrition query and the query
    of the cohort rows alone."""

    codeset_items: tuple[tuple[int, int, bool, bool, bool], ...]
    steps: tuple[tuple[str, str], ...]  # (name, statement)
    insert: str
    attrition: str
    rows: str
    flagged: str
    flags: tuple[str, ...]
    rule_names: tuple[str, ...]


def plan_of(compiled: CompiledCohort) -> Plan:
    """The DuckDB statements of a compiled cohort."""
    rows = exp.select("subject_id", "cohort_start_date", "cohort_end_date").from_(
        cast(exp.Select, compiled.cohort_rows).subquery("c")
    )
    return Plan(
        tuple(compiled.codeset_items),
        tuple((s.name, _create_temp(s.name, s.query)) for s in compiled.steps),
        exp.insert(compiled.cohort_rows, f"{RESULTS}.cohort").sql(dialect="duckdb"),
        compiled.attrition.sql(dialect="duckdb"),
        rows.sql(dialect="duckdb"),
        compiled.flagged,
        compiled.flags,
        tuple(compiled.rule_names),
    )


_PLANS: Recent[Plan] = Recent(256)


def _plan(definition: CohortDefinition, cohort_id: int) -> Plan:
    """The definition's plan, rendered once per process for each (definition, cohort id)."""
    return _PLANS.get(
        (definition.to_json(), cohort_id), lambda: plan_of(compile_cohort(definition, cohort_id))
    )


def _create_steps(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    con.execute(
        "CREATE TEMP TABLE codeset_items ("
        + ", ".join(f"{name} {kind}" for name, kind in CODESET_ITEM_COLUMNS)
        + ")"
    )
    if plan.codeset_items:
        con.executemany(
            "INSERT INTO codeset_items VALUES (?, ?, ?, ?, ?)",
            [list(item) for item in plan.codeset_items],
        )
    for _, statement in plan.steps:
        con.execute(statement)


def _drop_steps(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    # On failure the caller rolls back, which discards these temporary tables too.
    for name in ["codeset_items", *(name for name, _ in plan.steps)]:
        con.execute(f'DROP TABLE temp."{name}"')


def select_rows(
    con: duckdb.DuckDBPyConnection, definition: CohortDefinition
) -> list[tuple[int, dt.date, dt.date]]:
    """The cohort's rows (subject, start, end), computed without writing to the store; the
    caller owns the transaction (a rollback discards the temporary tables)."""
    plan = _plan(definition, 0)
    _create_steps(con, plan)
    rows = con.execute(plan.rows).fetchall()
    _drop_steps(con, plan)
    return [(int(r[0]), r[1], r[2]) for r in rows]


def _rule_persons(
    con: duckdb.DuckDBPyConnection, plan: Plan
) -> tuple[list[frozenset[int]], list[frozenset[int]]]:
    """Persons after each rule in order, and passing each rule alone."""
    flags = plan.flags
    rows = con.execute(
        f'SELECT person_id{"".join(f", {f}" for f in flags)} FROM temp."{plan.flagged}"'
    ).fetchall()
    everyone = frozenset(int(r[0]) for r in rows)
    cumulative = [everyone]
    alone = [everyone]
    for i in range(len(flags)):
        cumulative.append(frozenset(int(r[0]) for r in rows if all(r[1 : i + 2])))
        alone.append(frozenset(int(r[0]) for r in rows if r[i + 1]))
    return cumulative, alone


def run_compiled(
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    cohort_id: int,
    persons: list[list[frozenset[int]]] | None = None,
) -> list[AttritionRow]:
    """Run the plan's steps and write the cohort rows; the caller owns the transaction. With
    ``persons`` (a list), the persons per rule in order and alone are appended to it."""
    _create_steps(con, plan)
    con.execute(f"DELETE FROM {RESULTS}.cohort WHERE cohort_definition_id = ?", [cohort_id])
    con.execute(plan.insert)
    rows = con.execute(plan.attrition).fetchall()
    if persons is not None:
        persons.extend(_rule_persons(con, plan))
    _drop_steps(con, plan)
    names = ["qualifying events", *plan.rule_names]
    return [
        AttritionRow(names[int(r[0])], int(r[1]), int(r[2] or 0), int(r[3]), int(r[4] or 0))
        for r in rows
    ]


ATTRITION_TABLE = f"{RESULTS}.cohort_attrition"


def _store_attrition(
    con: duckdb.DuckDBPyConnection, cohort_id: int, rows: list[AttritionRow]
) -> None:
    """Keep the attrition beside the cohort rows (one row per rule, in order)."""
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {ATTRITION_TABLE} (
            cohort_definition_id INTEGER NOT NULL, rule_index INTEGER NOT NULL,
            rule_name VARCHAR NOT NULL, persons BIGINT NOT NULL, entries BIGINT NOT NULL,
            independent_persons BIGINT NOT NULL, independent_entries BIGINT NOT NULL)"""
    )
    con.execute(f"DELETE FROM {ATTRITION_TABLE} WHERE cohort_definition_id = ?", [cohort_id])
    con.executemany(
        f"INSERT INTO {ATTRITION_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            [
                cohort_id,
                i,
                r.rule,
                r.persons,
                r.entries,
                r.independent_persons,
                r.independent_entries,
            ]
            for i, r in enumerate(rows)
        ],
    )


def generate(
    store: Path, definition: CohortDefinition, cohort_id: int = 1, *, with_persons: bool = False
) -> GenerationResult:
    """Generate ``definition`` as cohort ``cohort_id`` in ``store`` (replacing earlier rows)."""
    plan = _plan(definition, cohort_id)
    persons: list[list[frozenset[int]]] | None = [] if with_persons else None
    with open_store(store) as con, transaction(con):
        started = time.perf_counter()
        attrition = run_compiled(con, plan, cohort_id, persons)
        sql_ms = (time.perf_counter() - started) * 1000
        _store_attrition(con, cohort_id, attrition)
        con.execute(
            f"DELETE FROM {RESULTS}.cohort_definition WHERE cohort_definition_id = ?",
            [cohort_id],
        )
        con.execute(
            f"INSERT INTO {RESULTS}.cohort_definition VALUES (?, ?, ?, 0, ?, 0, ?)",
            [
                cohort_id,
                definition.name or f"cohort {cohort_id}",
                definition.description,
                definition.to_json(),
                dt.date.today(),
            ],
        )
        count, entries, members = fetch_one(
            con,
            f"SELECT COUNT(DISTINCT subject_id), COUNT(*), list(DISTINCT subject_id) "
            f"FROM {RESULTS}.cohort WHERE cohort_definition_id = ?",
            [cohort_id],
        )
    cumulative, alone = persons if persons else ([], [])
    return GenerationResult(
        cohort_id,
        int(count),
        int(entries),
        attrition,
        sql_ms,
        cumulative,
        alone,
        frozenset(int(p) for p in members or []) if with_persons else frozenset(),
    )
