"""Differentially private queries on a node, with budgets, caching and differencing guards.

A researcher's query names a project, a cohort (any medlab or Circe definition) and a
statistic over the cohort's persons (first entry per person): ``count``; ``histogram`` of a
field (or a contingency table of two); ``sum`` or ``mean`` of a numeric field within stated
bounds. The node answers only when its release policy turns differential privacy on, and:

- **auditing**: it remembers, as keyed hashes that never leave the node, the persons behind
  every answer. A cohort definition whose population lies within fewer than the minimum cell
  count of a population released under another definition (A against A plus or minus a few
  persons: differencing, or a tracker padding a small set) is refused, as is a population
  smaller than the minimum cell count;
- **caching**: the same question (cohort definition and statistic) over the same data
  returns the stored noisy answer and spends nothing, so repeating a query cannot average the
  noise away;
- **budgets**: a fresh answer spends epsilon (Laplace) or rho (Gaussian) from the project's
  budget atomically; a refused query spends nothing and stores nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medlab.cdm import outbox
from medlab.cdm.store import META_SCHEMA, open_store, transaction
from medlab.cohorts.engine import select_rows
from medlab.cohorts.model import CohortDefinition
from medlab.errors import PolicyError
from medlab.fields import Real
from medlab.privacy import budget as budgets
from medlab.privacy import dp
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.secret import keyed_int, node_secret

MAX_BINS = 1000
MAX_BOUND = 1e9  # clamping bounds: far beyond any age, year or day count


Bound = Annotated[Real, Field(ge=-MAX_BOUND, le=MAX_BOUND)]
# The privacy loss of one answer: below 1e-4 the noise swamps any count; above 100 it is
# no protection at all.
Loss = Annotated[Real, Field(ge=1e-4, le=100)]
Category = Annotated[str, Field(max_length=200)]
QueryField = Literal["age", "sex", "index_year", "prior_observation_days"]
NUMERIC: tuple[QueryField, ...] = ("age", "index_year", "prior_observation_days")
SEXES = {8507: "male", 8532: "female"}

AUDIT_TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {META_SCHEMA}.privacy_audit (
        release_key VARCHAR NOT NULL, cohort_key VARCHAR NOT NULL, project VARCHAR NOT NULL,
        released_at TIMESTAMP NOT NULL, size INTEGER NOT NULL, persons BIGINT[] NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {META_SCHEMA}.privacy_cache (
        cache_key VARCHAR PRIMARY KEY, project VARCHAR NOT NULL, answer VARCHAR NOT NULL)""",
)


class DPQuery(BaseModel):
    """One differentially private question about one cohort."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: Annotated[str, Field(min_length=1, max_length=200)]
    cohort: CohortDefinition
    statistic: Literal["count", "histogram", "sum", "mean"]
    field: QueryField | None = None
    by: QueryField | None = None
    bounds: tuple[Bound, Bound] | None = None
    bin_width: Annotated[Real, Field(gt=0)] | None = None
    categories: Annotated[list[Category], Field(max_length=MAX_BINS)] | None = None
    epsilon: Loss | None = None
    rho: Loss | None = None

    @model_validator(mode="after")
    def _shape(self) -> DPQuery:
        if self.statistic != "count" and self.field is None:
            raise ValueError(f"a {self.statistic} needs a field")
        if self.statistic in ("sum", "mean"):
            if self.field not in NUMERIC:
                raise ValueError(f"a {self.statistic} needs a numeric field: {', '.join(NUMERIC)}")
            if self.bounds is None or not self.bounds[0] < self.bounds[1]:
                raise ValueError("give bounds [lower, upper] with lower < upper")
        if self.bounds is not None and self.bin_width is not None:
            if not self.bounds[0] < self.bounds[1]:
                raise ValueError("give bounds [lower, upper] with lower < upper")
            bins = math.ceil((self.bounds[1] - self.bounds[0]) / self.bin_width)
            if bins > MAX_BINS:
                raise ValueError(
                    f"bounds and bin_width make {bins:,} bins; a histogram has at most {MAX_BINS:,}"
                )
        if self.by is not None and self.statistic != "histogram":
            raise ValueError("'by' makes a contingency table; use it with a histogram")
        return self


@dataclass(frozen=True)
class Answer:
    """A released answer, whether it came from the cache, and the budget left."""

    release: dp.NoisyRelease
    cached: bool
    budget: budgets.Budget

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            **self.release.to_dict(),
            "cached": self.cached,
            "budget": {
                "project": self.budget.project,
                "epsilon_remaining": self.budget.epsilon_remaining,
                "rho_remaining": self.budget.rho_remaining,
                "epsilon_spent": self.budget.epsilon_spent,
                "rho_spent": self.budget.rho_spent,
            },
        }


def _persons(
    con: duckdb.DuckDBPyConnection, cohort: CohortDefinition
) -> list[tuple[int, int, str, int, int]]:
    """(person, age, sex, index year, prior observation days) at each person's first entry."""
    rows = select_rows(con, cohort)
    first: dict[int, dt.date] = {}
    for person, start, _ in rows:
        if person not in first or start < first[person]:
            first[person] = start
    # Registered for this connection only; on failure the connection is rolled back and closed.
    con.register("medlab_query_first", _frame(first))
    found = con.execute(
        """WITH f AS (SELECT person_id, CAST(start_date AS DATE) AS d FROM medlab_query_first)
           SELECT f.person_id, year(f.d) - p.year_of_birth, p.gender_concept_id, year(f.d),
                  coalesce(max(date_diff('day', op.observation_period_start_date, f.d)), 0)
           FROM f JOIN person p USING (person_id)
           LEFT JOIN observation_period op ON op.person_id = f.person_id
            AND f.d BETWEEN op.observation_period_start_date AND op.observation_period_end_date
           GROUP BY ALL ORDER BY f.person_id"""
    ).fetchall()
    con.unregister("medlab_query_first")
    return [(int(p), int(a), SEXES.get(g, "other"), int(y), int(d)) for p, a, g, y, d in found]


def _frame(first: dict[int, dt.date]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {"person_id": list(first), "start_date": pd.to_datetime(list(first.values()))}
    ).astype({"person_id": "int64"})


def _value(row: tuple[int, int, str, int, int], field: QueryField) -> Any:
    return {"age": row[1], "sex": row[2], "index_year": row[3], "prior_observation_days": row[4]}[
        field
    ]


def _labels(query: DPQuery, field: QueryField) -> tuple[list[str], Any]:
    """The fixed categories of a field and a function from a value to its label."""
    if field == "sex" or (query.categories is not None and field == query.field):
        labels = query.categories or ["male", "female", "other"]
        return labels, lambda v: str(v) if str(v) in labels else None
    if query.bounds is None or query.bin_width is None:
        raise PolicyError(f"a histogram of {field} needs bounds and bin_width (fixed bins)")
    lower, upper = query.bounds
    width = query.bin_width
    # Edges by index, never by repeated addition (which stalls when width is below the
    # spacing of floats at the bounds); the validator bounds their number.
    edges = [lower + i * width for i in range(math.ceil((upper - lower) / width))]
    labels = [f"{e:g}-{min(e + width, upper):g}" for e in edges]

    def label(v: float) -> str:
        v = min(max(v, lower), upper)
        index = min(int((v - lower) // width), len(labels) - 1)
        return labels[index]

    return labels, label


def _compute(
    query: DPQuery, rows: list[tuple[int, int, str, int, int]], mechanism: dp.Mechanism, loss: float
) -> dp.NoisyRelease:
    if query.statistic == "count":
        return dp.noisy_count(len(rows), mechanism, loss)
    assert query.field is not None
    if query.statistic in ("sum", "mean"):
        assert query.bounds is not None
        values = [float(_value(r, query.field)) for r in rows]
        make = dp.noisy_sum if query.statistic == "sum" else dp.noisy_mean
        return make(values, query.bounds, mechanism, loss)
    labels, label = _labels(query, query.field)
    if query.by is not None:
        by_labels, by_label = _labels(query.model_copy(update={"categories": None}), query.by)
        cells = [f"{a}|{b}" for a in labels for b in by_labels]
        keys = [f"{label(_value(r, query.field))}|{by_label(_value(r, query.by))}" for r in rows]
    else:
        cells = labels
        keys = [str(label(_value(r, query.field))) for r in rows]
    counts = [sum(1 for k in keys if k == c) for c in cells]
    return dp.noisy_histogram(cells, counts, mechanism, loss)


def _audit(
    con: duckdb.DuckDBPyConnection, hashed: list[int], cohort_key: str, policy: ReleasePolicy
) -> str | None:
    """Why this population may not be released, given every earlier released population.

    Populations of other cohort definitions within fewer than the minimum cell count of this
    one are refused, the identical population included: if only near-but-different ones were
    refused, the refusal itself would tell A from A plus one person. Further statistics of the
    same definition over the same persons are allowed.
    """
    k = policy.min_cell_count
    if len(hashed) < k:
        return f"the cohort has fewer than {k} persons"
    mine = set(hashed)
    for (persons,) in con.execute(
        f"""SELECT persons FROM {META_SCHEMA}.privacy_audit
            WHERE abs(size - ?) < ? AND cohort_key <> ?""",
        [len(hashed), k, cohort_key],
    ).fetchall():
        if len(mine.symmetric_difference(persons)) < k:
            return (
                f"the cohort's persons are within {k - 1} of a population released "
                "under another definition (a differencing or tracker query)"
            )
    return None


def answer(store: Path, query: DPQuery, policy: ReleasePolicy) -> Answer:
    """Answer ``query`` on the node under ``policy``: cached, or fresh and paid for."""
    settings = policy.differential_privacy
    if not settings.enabled:
        raise PolicyError("differential privacy is off in this node's release policy")
    mechanism: dp.Mechanism = settings.mechanism
    if mechanism == "laplace":
        loss = budgets.check_amount(
            "epsilon", query.epsilon if query.epsilon is not None else settings.epsilon_per_release
        )
    else:
        loss = budgets.check_amount(
            "rho", query.rho if query.rho is not None else settings.rho_per_release
        )
    secret = node_secret(store)
    with open_store(store) as con, transaction(con):
        for statement in (*budgets.TABLES, *AUDIT_TABLES):
            con.execute(statement)
        # The cache key: the question asked (cohort definition and statistic, not the
        # project or the loss) and the data it is asked of (CDM data change only by
        # loads), so a repeated question gets the same noisy answer until the data change.
        what = query.model_dump(mode="json", exclude={"project", "epsilon", "rho"})
        cohort_key = _digest(query.cohort.model_dump(mode="json"))
        data_version = con.execute(
            f"SELECT count(*), max(load_id), max(loaded_at) FROM {META_SCHEMA}.load_log"
        ).fetchall()
        key = _digest([what, mechanism, str(data_version)])
        cached = con.execute(
            f"SELECT answer FROM {META_SCHEMA}.privacy_cache WHERE cache_key = ?", [key]
        ).fetchall()
        if cached:
            status = budgets.read(con, query.project) or budgets.Budget(
                query.project, 0.0, 0.0, 0.0, 0.0
            )
            return Answer(_release(json.loads(cached[0][0])), True, status)
        rows = _persons(con, query.cohort)
        hashed = sorted(keyed_int(secret, "audit", str(r[0])) for r in rows)
        refusal = _audit(con, hashed, cohort_key, policy)
        if refusal:
            raise PolicyError(f"query refused: {refusal}; nothing was spent")
        release = _compute(query, rows, mechanism, loss)
        remaining = budgets.spend(
            con,
            query.project,
            epsilon=release.epsilon,
            rho=release.rho,
            query_key=key,
            purpose=f"{query.statistic} {query.field or ''}".strip(),
        )
        con.execute(
            f"INSERT INTO {META_SCHEMA}.privacy_cache VALUES (?, ?, ?)",
            [key, query.project, json.dumps(release.to_dict())],
        )
        con.execute(
            f"INSERT INTO {META_SCHEMA}.privacy_audit VALUES (?, ?, ?, ?, ?, ?)",
            [
                key,
                cohort_key,
                query.project,
                dt.datetime.now(dt.UTC).replace(tzinfo=None),
                len(hashed),
                hashed,
            ],
        )
    outbox.flush_store(store)
    return Answer(release, False, remaining)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _release(data: dict[str, Any]) -> dp.NoisyRelease:
    return dp.NoisyRelease(
        data["kind"],
        data["mechanism"],
        data["noise_scale"],
        data["epsilon"],
        data["rho"],
        data["values"],
        {k: (v[0], v[1]) for k, v in data["ci95"].items()},
    )
