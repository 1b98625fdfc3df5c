"""Privacy budgets: per project per node, granted by the steward, spent atomically.

Budgets live in the node store's ``medlab`` schema (outside the CDM, so they never change the
snapshot fingerprint): ``privacy_budget`` holds, per project, the granted and spent epsilon
(pure differential privacy, Laplace) and rho (zero-concentrated DP, Gaussian); and
``privacy_spend`` logs every spend. A spend is one conditional ``UPDATE`` inside the caller's
transaction, under the store's lock: it succeeds only while the spent amount stays within the
grant, so concurrent requests can never overspend, and a refused or failed request leaves the
budget exactly as it was. Amounts must be finite and positive. Grants and spends are logged in
the node's transparency log through the store's outbox, so a committed change is always logged.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import duckdb

from medlab.cdm import outbox
from medlab.cdm.store import META_SCHEMA, fetch_first, open_store, rows_if_recorded
from medlab.errors import BudgetError

TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {META_SCHEMA}.privacy_budget (
        project VARCHAR PRIMARY KEY,
        epsilon_granted DOUBLE NOT NULL,
        epsilon_spent DOUBLE NOT NULL,
        rho_granted DOUBLE NOT NULL,
        rho_spent DOUBLE NOT NULL,
        granted_by VARCHAR NOT NULL,
        granted_at TIMESTAMP NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {META_SCHEMA}.privacy_spend (
        project VARCHAR NOT NULL,
        spent_at TIMESTAMP NOT NULL,
        epsilon DOUBLE NOT NULL,
        rho DOUBLE NOT NULL,
        query_key VARCHAR NOT NULL,
        purpose VARCHAR NOT NULL)""",
)


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the budget tables in a store that has none yet."""
    for statement in TABLES:
        con.execute(statement)


@dataclass(frozen=True)
class Budget:
    """A project's budget on one node."""

    project: str
    epsilon_granted: float
    epsilon_spent: float
    rho_granted: float
    rho_spent: float

    @property
    def epsilon_remaining(self) -> float:
        """Epsilon left to spend."""
        return max(self.epsilon_granted - self.epsilon_spent, 0.0)

    @property
    def rho_remaining(self) -> float:
        """Rho left to spend."""
        return max(self.rho_granted - self.rho_spent, 0.0)


def check_amount(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a float when it is a finite, positive (or zero, if allowed) number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BudgetError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        allowed = "zero or more" if allow_zero else "more than zero"
        raise BudgetError(f"{name} must be a finite number {allowed}, not {value!r}")
    return number


def read(con: duckdb.DuckDBPyConnection, project: str) -> Budget | None:
    """The project's budget, or None when none was granted."""
    row = fetch_first(
        con,
        f"""SELECT epsilon_granted, epsilon_spent, rho_granted, rho_spent
            FROM {META_SCHEMA}.privacy_budget WHERE project = ?""",
        [project],
    )
    return None if row is None else Budget(project, *(float(v) for v in row))


def every(con: duckdb.DuckDBPyConnection) -> list[Budget]:
    """Every project's budget on the node, by project (none before the first grant)."""
    rows = rows_if_recorded(
        con,
        f"""SELECT project, epsilon_granted, epsilon_spent, rho_granted, rho_spent
            FROM {META_SCHEMA}.privacy_budget ORDER BY project""",
    )
    return [Budget(row[0], *(float(v) for v in row[1:])) for row in rows]


def grant(
    store: Path, project: str, epsilon: float, rho: float = 0.0, by: str = "steward"
) -> Budget:
    """Set the project's granted budget (a grant below what is already spent is refused)."""
    if not project:
        raise BudgetError("name the project the budget is for")
    epsilon = check_amount("epsilon", epsilon, allow_zero=True)
    rho = check_amount("rho", rho, allow_zero=True)
    with outbox.logged_transaction(store) as con:
        ensure_tables(con)
        current = read(con, project)
        if current and (current.epsilon_spent > epsilon or current.rho_spent > rho):
            raise BudgetError(
                f"project {project}: already spent epsilon {current.epsilon_spent:g}, "
                f"rho {current.rho_spent:g}; a grant cannot go below that"
            )
        con.execute(
            f"""INSERT INTO {META_SCHEMA}.privacy_budget VALUES (?, ?, 0, ?, 0, ?, ?)
                ON CONFLICT (project) DO UPDATE SET epsilon_granted = excluded.epsilon_granted,
                   rho_granted = excluded.rho_granted, granted_by = excluded.granted_by,
                   granted_at = excluded.granted_at""",
            [project, epsilon, rho, by, dt.datetime.now(dt.UTC).replace(tzinfo=None)],
        )
        budget = read(con, project)
        outbox.stage(con, "budget_granted", project=project, epsilon=epsilon, rho=rho, by=by)
    assert budget is not None
    return budget


def shortfall(
    con: duckdb.DuckDBPyConnection, project: str, epsilon: float = 0.0, rho: float = 0.0
) -> str | None:
    """Why the project cannot spend ``epsilon`` and ``rho`` now (no grant, too little left),
    or None when it can: bookkeeping only, asked before any data is read."""
    try:
        budget = read(con, project)
    except duckdb.CatalogException:  # no budget ever granted on this node
        budget = None
    if budget is None:
        return f"project {project}: no privacy budget granted on this node"
    if budget.epsilon_remaining + 1e-12 < epsilon or budget.rho_remaining + 1e-12 < rho:
        return (
            f"project {project}: the request needs epsilon {epsilon:g}, rho {rho:g}; "
            f"remaining epsilon {budget.epsilon_remaining:g}, rho {budget.rho_remaining:g}"
        )
    return None


def status(store: Path, project: str) -> Budget:
    """The project's budget on this node (zero when never granted)."""
    with open_store(store, read_only=True) as con:
        try:
            budget = read(con, project)
        except duckdb.CatalogException:
            budget = None
    return budget or Budget(project, 0.0, 0.0, 0.0, 0.0)


def spend(
    con: duckdb.DuckDBPyConnection,
    project: str,
    *,
    epsilon: float = 0.0,
    rho: float = 0.0,
    query_key: str,
    purpose: str,
) -> Budget:
    """Spend from the project's budget inside the caller's transaction (holding the store's
    lock); raises :class:`BudgetError` and changes nothing when the budget does not cover it.
    The spend's log entry is staged in the same transaction (see :mod:`medlab.cdm.outbox`)."""
    epsilon = check_amount("epsilon", epsilon, allow_zero=True)
    rho = check_amount("rho", rho, allow_zero=True)
    if epsilon == 0 and rho == 0:
        raise BudgetError("a differentially private release must spend some epsilon or rho")
    row = fetch_first(
        con,
        f"""UPDATE {META_SCHEMA}.privacy_budget
            SET epsilon_spent = epsilon_spent + ?, rho_spent = rho_spent + ?
            WHERE project = ? AND epsilon_spent + ? <= epsilon_granted + 1e-12
              AND rho_spent + ? <= rho_granted + 1e-12
            RETURNING epsilon_granted, epsilon_spent, rho_granted, rho_spent""",
        [epsilon, rho, project, epsilon, rho],
    )
    if row is None:
        current = read(con, project)
        if current is None:
            raise BudgetError(f"project {project}: no privacy budget granted on this node")
        raise BudgetError(
            f"project {project}: the request needs epsilon {epsilon:g}, rho {rho:g}; "
            f"remaining epsilon {current.epsilon_remaining:g}, rho {current.rho_remaining:g}"
        )
    con.execute(
        f"INSERT INTO {META_SCHEMA}.privacy_spend VALUES (?, ?, ?, ?, ?, ?)",
        [project, dt.datetime.now(dt.UTC).replace(tzinfo=None), epsilon, rho, query_key, purpose],
    )
    outbox.stage(
        con, "budget_spent", project=project, epsilon=epsilon, rho=rho, query_key=query_key
    )
    return Budget(project, *(float(v) for v in row))


def charge(
    store: Path,
    project: str,
    *,
    epsilon: float = 0.0,
    rho: float = 0.0,
    query_key: str,
    purpose: str,
) -> Budget:
    """Spend from the project's budget in a transaction of its own (see :func:`spend`)."""
    with outbox.logged_transaction(store) as con:
        ensure_tables(con)
        left = spend(con, project, epsilon=epsilon, rho=rho, query_key=query_key, purpose=purpose)
    return left
