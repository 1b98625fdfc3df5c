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
from medlab.cdm.fingerprint import snapshot_id
from medlab.cdm.store import META_SCHEMA, open_store, rows_if_recorded, transaction
from medlab.cohorts.engine import select_rows
from medlab.cohorts.model import CohortDefinition
from medlab.errors import BudgetError, PolicyError
from medlab.fields import Real
from medlab.privacy import budget as budgets
from medlab.privacy import dp
from medlab.privacy.audit import Auditor
from medlab.privacy.persons import PersonKeys
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import Population, population_key
from medlab.privacy.secret import node_secret

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

CACHE_TABLE = f"""CREATE TABLE IF NOT EXISTS {META_SCHEMA}.privacy_cache (
    cache_key VARCHAR PRIMARY KEY, project VARCHAR NOT NULL, answer VARCHAR NOT NULL)"""


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
        numeric_bins = [
            f
            for f in (self.field, self.by)
            if f in NUMERIC and not (f == self.field and self.categories is not None)
        ]
        if (
            self.statistic == "histogram"
            and numeric_bins
            and (self.bounds is None or self.bin_width is None)
        ):
            raise ValueError(
                f"a histogram of {numeric_bins[0]} needs bounds and bin_width (fixed bins)"
            )
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


# The share of a query's privacy loss spent on the noisy differencing test; the rest pays for
# the answer. At epsilon 1 the test's Laplace scale is 4: a population within one person of
# one released before is refused 95% of the time, one 50 persons away essentially never.
AUDIT_SHARE = 0.25
REFUSED = (
    "query refused by the node's disclosure rules (its population is too close to one "
    "released before); the budget for it was spent"
)


def _loss(query: DPQuery, policy: ReleasePolicy) -> float:
    settings = policy.differential_privacy
    if settings.mechanism == "laplace":
        asked = query.epsilon if query.epsilon is not None else settings.epsilon_per_release
        return budgets.check_amount("epsilon", asked)
    asked = query.rho if query.rho is not None else settings.rho_per_release
    return budgets.check_amount("rho", asked)


def _noisy_audit(
    auditor: Auditor, population: Population, mechanism: dp.Mechanism, loss: float, k: int
) -> bool:
    """Whether the query is refused as differencing: the distance (in persons) to the
    nearest population released before under another definition, with noise paid from the
    query's loss, below the minimum cell count. The distance moves by at most one when one
    person is added or removed, so the test is differentially private like the answer."""
    _, scale = dp.count_measurement(mechanism, loss)
    # Beyond k + 40 noise scales the test refuses with probability below e^-40: no need to
    # know the distance exactly there.
    distance = auditor.nearest(population, k + int(40 * scale) + 1)
    noisy = dp.noisy_count(distance, mechanism, loss).values["count"]
    return noisy < k


def answer(store: Path, query: DPQuery, policy: ReleasePolicy) -> Answer:
    """Answer ``query`` on the node under ``policy``: cached, or fresh and paid for."""
    settings = policy.differential_privacy
    if not settings.enabled:
        raise PolicyError("differential privacy is off in this node's release policy")
    mechanism: dp.Mechanism = settings.mechanism
    loss = _loss(query, policy)
    with open_store(store) as con:
        snapshot = snapshot_id(con)
        # The cache key: the question asked (cohort definition and statistic, not the
        # project or the loss) and the data snapshot it is asked of, so a repeated question
        # gets the same noisy answer (or the same refusal) until the data change.
        what = query.model_dump(mode="json", exclude={"project", "epsilon", "rho"})
        key = _digest([what, mechanism, snapshot])
        cached = rows_if_recorded(
            con, f"SELECT answer FROM {META_SCHEMA}.privacy_cache WHERE cache_key = ?", [key]
        )
        if cached:
            stored = json.loads(cached[0][0])
            if stored.get("refused"):
                raise PolicyError(REFUSED)
            status = budgets.read(con, query.project) or budgets.Budget(
                query.project, 0.0, 0.0, 0.0, 0.0
            )
            return Answer(_release(stored), True, status)
        # A missing or spent budget is refused before any data is read.
        refusal = budgets.shortfall(con, query.project, *_losses(mechanism, loss))
        if refusal:
            raise BudgetError(refusal)
        keys = PersonKeys(node_secret(store))
        with transaction(con):
            con.execute(CACHE_TABLE)
            rows = _persons(con, query.cohort)
            population = Population(
                population_key(snapshot, "cohort", query.cohort.digest()),
                frozenset(r[0] for r in rows),
                "cohort",
                (query.cohort.digest(),),
                snapshot,
            )
            auditor = Auditor(con, keys, policy.min_cell_count)
            auditor.begin(key)
            refused = _noisy_audit(
                auditor, population, mechanism, loss * AUDIT_SHARE, policy.min_cell_count
            )
            release = _compute(query, rows, mechanism, loss * (1 - AUDIT_SHARE))
            spent = _losses(mechanism, loss)
            remaining = budgets.spend(
                con,
                query.project,
                epsilon=spent[0],
                rho=spent[1],
                query_key=key,
                purpose=f"{query.statistic} {query.field or ''}".strip(),
            )
            stored_answer = {"refused": True} if refused else release.to_dict()
            con.execute(
                f"INSERT INTO {META_SCHEMA}.privacy_cache VALUES (?, ?, ?)",
                [key, query.project, json.dumps(stored_answer)],
            )
            auditor.save()
        outbox.flush(con, store)
    if refused:
        raise PolicyError(REFUSED)
    return Answer(_with_loss(release, mechanism, loss), False, remaining)


def _losses(mechanism: dp.Mechanism, loss: float) -> tuple[float, float]:
    return (loss, 0.0) if mechanism == "laplace" else (0.0, loss)


def _with_loss(release: dp.NoisyRelease, mechanism: dp.Mechanism, loss: float) -> dp.NoisyRelease:
    """The answer as charged: the whole loss, the audit's share included."""
    epsilon, rho = _losses(mechanism, loss)
    return dp.NoisyRelease(
        release.kind,
        release.mechanism,
        release.scale,
        epsilon,
        rho,
        release.values,
        release.intervals,
    )


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
