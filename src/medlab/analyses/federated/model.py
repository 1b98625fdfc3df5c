"""A pooled outcome model over every site, fitted by Newton's method on secure sums.

The study population is the comparative one (CohortMethod's rules, :mod:`medlab.analyses.
population`) of a target and a comparator cohort on an outcome. The model regresses the
outcome on treatment (target 1) and the chosen baseline covariates — age in decades from 60
at entry, female sex — as logistic (the outcome in the risk window), Poisson (outcome
events, log years at risk as offset) or Cox stratified by site (days to the first outcome).
Every Newton iteration is one secure sum of the sites' contributions at the current
coefficients (:mod:`.glm`, :mod:`.cox`); the hub learns only the sums, and at convergence
the fit is the pooled one on the union of the sites' rows (site-stratified for Cox).

A site contributes only when its contribution, were it released on its own, would pass the
node's small-count rules — at least ``min_cell_count`` rows, persons per arm, outcomes and
(logistic) rows without one, and persons of each sex when sex is a covariate; DataSHIELD's
``glm`` rule of at most one parameter per three rows — and when its counts are exact under
its policy (differential privacy on counts refuses, unless ``exact_models`` allows exact
models). The hub gates the pooled model again: the pooled counts by the strictest node's
count rule, events per parameter by ``min_events_per_parameter``, ratios and p-values at the
strictest precision.

The hub drives the fit by replay: :func:`advance` runs the in-process estimator on the sums
received so far and stops where it asks for the next one, so the rounds compute exactly what
:func:`medlab.analyses.federated.glm.fit` and :func:`medlab.analyses.federated.cox.fit` do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from medlab.analyses.federated import binned, cox, glm
from medlab.analyses.federated.packing import unpack
from medlab.analyses.population import PopulationSettings, exposures, outcome_days
from medlab.analyses.population import outcome_population as build_population
from medlab.privacy.precision import round_to

Model = Literal["logistic", "poisson", "cox", "cox_binned"]
Covariate = Literal["age", "female"]
FEMALE = 8532
COLUMNS = {"age": "age_per_decade", "female": "female"}
_DEFAULT_COVARIATES: tuple[Covariate, ...] = ("age", "female")


class ModelSettings(BaseModel):
    """The pooled model's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Model = "cox"
    population: PopulationSettings = PopulationSettings()
    covariates: Annotated[list[Covariate], Field(max_length=2)] = Field(
        default_factory=lambda: list(_DEFAULT_COVARIATES)
    )
    cox_ties: cox.Ties = "breslow"
    # Secure sums need at least this many sites (default: a majority of the sites asked, at
    # least 2; the study's and every node's min_sites raise it).
    threshold: Annotated[int, Field(ge=2, le=1000)] | None = None
    round_timeout_s: Annotated[int, Field(ge=1, le=86_400)] = 300
    max_iterations: Annotated[int, Field(ge=1, le=100)] = 25
    # cox_binned: the grid's end (an event after it counts as censored there); the bins'
    # width is the coarsest contributing node's event_bin_days.
    horizon_days: Annotated[int, Field(ge=1, le=36_500)] = 1800


@dataclass(frozen=True)
class Grid:
    """The event-time bins of an unstratified pooled Cox model (None: another model)."""

    width: float
    count: int

    @staticmethod
    def of(s: ModelSettings, width: int) -> Grid:
        """Bins of ``width`` days up to the settings' horizon."""
        return Grid(float(width), max(1, math.ceil(s.horizon_days / width)))


@dataclass(frozen=True)
class Design:
    """One site's rows (node-internal)."""

    x: np.ndarray
    y: np.ndarray  # logistic: outcome 0/1; Poisson: outcome count; Cox: event 0/1
    time: np.ndarray  # Cox: days to the outcome or censoring
    offset: np.ndarray | None  # Poisson: log years at risk
    treatment: np.ndarray
    female: np.ndarray
    persons: np.ndarray  # each row's person (for the node's differencing audit)


def names(settings: ModelSettings) -> list[str]:
    """The coefficients' names, in order."""
    base = [] if settings.model in ("cox", "cox_binned") else ["intercept"]
    return [*base, "treatment", *(COLUMNS[c] for c in settings.covariates)]


def design(
    con: duckdb.DuckDBPyConnection, target: int, comparator: int, outcome: int, s: ModelSettings
) -> Design:
    """The site's study population as model rows."""
    fetched = exposures(con, target, comparator, s.population)
    population, _ = build_population(
        fetched, outcome_days(con, fetched.frame, outcome), s.population
    )
    con.register("medlab_model_rows", population[["person_id", "start_date"]])
    try:
        people = con.execute(
            """SELECT (year(CAST(r.start_date AS DATE)) - p.year_of_birth - 60) / 10.0,
                      CASE WHEN p.gender_concept_id = ? THEN 1.0 ELSE 0.0 END
               FROM medlab_model_rows r JOIN person p USING (person_id)""",
            [FEMALE],
        ).fetchall()
    finally:
        con.unregister("medlab_model_rows")
    age = np.array([a for a, _ in people], dtype=float).reshape(-1)
    female = np.array([f for _, f in people], dtype=float).reshape(-1)
    treatment = population["treatment"].to_numpy(dtype=float)
    columns = [treatment] + [age if c == "age" else female for c in s.covariates]
    if s.model not in ("cox", "cox_binned"):
        columns.insert(0, np.ones(len(population)))
    x = np.column_stack(columns) if len(population) else np.zeros((0, len(columns)))
    event = population["outcome"].to_numpy(dtype=float)
    count = population["outcome_count"].to_numpy(dtype=float)
    years = population["time_at_risk"].to_numpy(dtype=float) / 365.25
    return Design(
        x=x,
        y=count if s.model == "poisson" else event,
        time=population["days"].to_numpy(dtype=float),
        offset=np.log(years) if s.model == "poisson" else None,
        treatment=treatment,
        female=female,
        persons=population["person_id"].to_numpy(),
    )


def withheld(d: Design, s: ModelSettings, min_cell_count: int, exact: bool) -> str | None:
    """Why this site may not contribute (None: it may)."""
    if not exact:
        return (
            "the node protects counts by differential privacy; exact federated models need "
            "exact sums (the policy's differential_privacy.exact_models allows them)"
        )
    n, events = len(d.y), int(np.sum(d.y > 0))
    counts = {
        "rows": n,
        "target persons": int(d.treatment.sum()),
        "comparator persons": int(n - d.treatment.sum()),
        "rows with the outcome": events,
    }
    if s.model == "logistic":
        counts["rows without the outcome"] = n - events
    if "female" in s.covariates:
        counts["women"] = int(d.female.sum())
        counts["men"] = int(n - d.female.sum())
    for what, k in counts.items():
        if k < min_cell_count:
            return f"its contribution would show {what} below {min_cell_count}"
    if d.x.shape[1] > n / 3:
        return "more than one parameter per three rows (DataSHIELD's nfilter.glm)"
    return None


def length(s: ModelSettings, grid: Grid | None = None) -> int:
    """The length of one contribution vector: the estimator's sums and one count (events
    for a GLM, rows for Cox, whose sums hold the other)."""
    p = len(names(s))
    if s.model == "cox_binned":
        assert grid is not None
        return grid.count * (2 + 2 * p + p * p) + 1
    return p * (p + 1) // 2 + p + 3


def contribution(
    d: Design, s: ModelSettings, beta: Sequence[float], grid: Grid | None = None
) -> list[float]:
    """The site's sums at ``beta``, as one vector (``grid``: the bins of ``cox_binned``)."""
    b = np.asarray(beta, dtype=float)
    if b.shape != (d.x.shape[1],) or not np.all(np.isfinite(b)):
        raise ValueError(f"the coefficients must be {d.x.shape[1]} finite numbers")
    if s.model == "cox_binned":
        assert grid is not None
        found = binned.risk_sums(d.time, d.y, d.x, b, grid.width, grid.count).flat()
        return [*found, float(len(d.y))]
    if s.model == "cox":
        sums = cox.contribution(d.time, d.y.astype(bool), d.x, b, s.cox_ties).flat()
        return [*sums, float(len(d.y))]
    family: glm.Family = "logistic" if s.model == "logistic" else "poisson"
    sums = glm.contribution(d.x, d.y, b, family, d.offset).flat()
    return [*sums, float(np.sum(d.y > 0))]


class _Pending(Exception):
    def __init__(self, beta: np.ndarray) -> None:
        self.beta = beta


@dataclass(frozen=True)
class PooledFit:
    """The converged (or stopped) pooled fit."""

    coefficients: np.ndarray
    standard_errors: np.ndarray
    iterations: int
    converged: bool


def advance(
    s: ModelSettings, sums: Sequence[Sequence[float]], grid: Grid | None = None
) -> np.ndarray | PooledFit:
    """The coefficients the next sum is to be taken at, or the fit when ``sums`` (one per
    iteration so far, in order) finish it."""
    p = len(names(s))
    recorded = iter(sums)

    def take(beta: np.ndarray) -> list[float]:
        found = next(recorded, None)
        if found is None:
            raise _Pending(beta.copy())
        return list(found)[:-1]

    try:
        if s.model == "cox_binned":
            assert grid is not None
            count = grid.count
            fit_b = cox.fit(
                binned.cox_round(lambda b: binned.RiskSums.unflat(take(b), count, p)),
                p,
                1e-9,
                s.max_iterations,
            )
            return PooledFit(
                fit_b.coefficients, fit_b.standard_errors, fit_b.iterations, fit_b.converged
            )
        if s.model == "cox":
            fit_c = cox.fit(
                lambda b: cox.CoxContribution.unflat(take(b), p), p, 1e-9, s.max_iterations
            )
            return PooledFit(
                fit_c.coefficients, fit_c.standard_errors, fit_c.iterations, fit_c.converged
            )
        family: glm.Family = "logistic" if s.model == "logistic" else "poisson"
        fit_g = glm.fit(
            lambda b: glm.Contribution.unflat(take(b), p), p, family, 1e-9, s.max_iterations
        )
        return PooledFit(
            fit_g.coefficients, fit_g.standard_errors, fit_g.iterations, fit_g.converged
        )
    except _Pending as pending:
        return pending.beta


def counts(s: ModelSettings, last: Sequence[float], grid: Grid | None = None) -> dict[str, int]:
    """The pooled rows and events a sum holds."""
    p = len(names(s))
    if s.model == "cox_binned":
        assert grid is not None
        sums = binned.RiskSums.unflat(list(last[:-1]), grid.count, p)
        return {"rows": round(last[-1]), "events": round(float(sums.d.sum()))}
    *_, (_, count) = unpack(list(last[:-1]), p, 2)
    extra = round(last[-1])
    if s.model == "cox":
        return {"rows": extra, "events": round(count)}
    return {"rows": round(count), "events": extra}


def summary(
    s: ModelSettings,
    fit: PooledFit,
    pooled: dict[str, int],
    round_count: Callable[[int], int],
    digits: tuple[int | None, int | None],
    sites: list[str],
) -> dict[str, Any]:
    """The pooled model as results show it: each coefficient on the ratio scale with its CI
    and p-value at the given precision (ratio, p-value digits), and the pooled rows and
    events as the count rule rounds them."""
    ratio_digits, p_digits = digits
    rows = []
    for name, b, se in zip(names(s), fit.coefficients, fit.standard_errors, strict=True):
        z = b / se if se > 0 else math.nan
        p = 2 * stats.norm.sf(abs(z)) if math.isfinite(z) else None
        rows.append(
            {
                "term": name,
                "estimate": round_to(math.exp(b), ratio_digits),
                "ci_low": round_to(math.exp(b - 1.959964 * se), ratio_digits),
                "ci_high": round_to(math.exp(b + 1.959964 * se), ratio_digits),
                "p": round_to(p, p_digits),
            }
        )
    scales = {"poisson": "rate ratio", "logistic": "odds ratio"}
    scale = scales.get(s.model, "hazard ratio")
    return {
        "model": s.model,
        "scale": scale,
        "terms": rows,
        "rows": round_count(pooled["rows"]),
        "events": round_count(pooled["events"]),
        "sites": sites,
        "iterations": fit.iterations,
        "converged": fit.converged,
    }
