"""The comparative cohort study (in the spirit of OHDSI CohortMethod), local and combine.

Local step, inside a node: the study population, covariates (the exposures and their
descendants left out), a propensity score, then for each adjustment a Cox model, covariate
balance and Kaplan-Meier curves. Only estimates, counts and curves leave the node. Combine
step: per-site estimates and their fixed- and random-effects meta-analysis per adjustment.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import sparse

from medlab.analyses import balance as bal
from medlab.analyses import estimation as est
from medlab.analyses.cox import Interval, Ties
from medlab.analyses.matching import CaliperScale, match_on_ps
from medlab.analyses.population import (
    AttritionStep,
    PopulationSettings,
    arm_persons,
    covariates,
    exposures,
    outcome_days,
    outcome_population,
)
from medlab.analyses.propensity import Prior, propensity_model
from medlab.fields import MAX_DAYS, CohortId, ConceptId, PositiveReal

ADJUSTMENTS: tuple[est.Adjustment, ...] = ("none", "matching", "stratification", "iptw")


class ConceptControl(BaseModel):
    """A negative-control outcome given as a concept: the study synthesizes the cohort
    "first occurrence of the concept, descendants included" in ``domain``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concept_id: ConceptId
    domain: Literal["condition_occurrence", "procedure_occurrence", "observation"] = (
        "condition_occurrence"
    )


class PositiveControl(BaseModel):
    """An outcome cohort with a known true hazard ratio (fits the systematic error model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cohort: CohortId
    true_hr: Annotated[PositiveReal, Field(le=1000)]


class PooledSettings(BaseModel):
    """A pooled estimate per adjustment on secure sums across the sites
    (:mod:`medlab.analyses.federated.comparative`), next to the meta-analysis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_covariates: Annotated[int, Field(ge=1, le=300)] = 50
    # Secure sums need at least this many sites (default: a majority of the sites asked, at
    # least 2; the study's and every node's min_sites raise it).
    threshold: Annotated[int, Field(ge=2, le=1000)] | None = None
    round_timeout_s: Annotated[int, Field(ge=1, le=86_400)] = 300


class ComparativeSettings(BaseModel):
    """Population, propensity model, adjustment, outcome model and control settings, and the
    Kaplan-Meier grid. Defaults are CohortMethod's (see the README for each equivalent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    population: PopulationSettings = PopulationSettings()
    exclude_ingredients: Annotated[list[ConceptId], Field(max_length=1000)] = Field(
        default_factory=list
    )
    ps_prior: Prior = "laplace"
    ps_variance: Annotated[PositiveReal, Field(le=1e6)] | None = None
    ps_cv_folds: Annotated[int, Field(ge=2, le=20)] = 10
    ps_cv_seed: int = 1
    adjustments: list[est.Adjustment] = Field(default_factory=lambda: list(ADJUSTMENTS))
    max_ratio: Annotated[int, Field(ge=1, le=1000)] = 1
    caliper: Annotated[float, Field(ge=0, le=100)] = 0.2
    caliper_scale: CaliperScale = "standardized_logit"
    strata: Annotated[int, Field(ge=2, le=100)] = 5
    iptw_estimand: est.Estimand = "att"
    max_weight: Annotated[PositiveReal, Field(le=1e6)] = 10.0
    iptw_variance: Literal["robust", "model"] = "robust"
    cox_ties: Ties = "breslow"
    cox_ci: Interval = "profile"
    negative_controls: Annotated[list[CohortId | ConceptControl], Field(max_length=200)] = Field(
        default_factory=list
    )
    positive_controls: Annotated[list[PositiveControl], Field(max_length=200)] = Field(
        default_factory=list
    )
    # The covariates whose balance the release shows one by one (CohortMethod's
    # ``covariateFilter``): named here, never chosen from the data.
    balance_covariates: Annotated[
        list[Annotated[str, Field(pattern=bal.COVARIATE.pattern)]], Field(max_length=500)
    ] = Field(default_factory=lambda: list(bal.DEFAULT))
    km_step_days: Annotated[int, Field(ge=1, le=3650)] = 30
    km_horizon_days: Annotated[int, Field(ge=1, le=MAX_DAYS)] = 1800
    pooled: PooledSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        """The earlier sklearn-named settings: ``ps_penalty: l2`` with ``ps_strength: C`` is
        exactly a normal prior of variance C (the intercept was never penalized); ``l1``
        penalized the intercept too, so it is refused rather than silently changed."""
        if not isinstance(data, dict) or not ({"ps_penalty", "ps_strength"} & set(data)):
            return data
        data = dict(data)
        penalty = data.pop("ps_penalty", "l2")
        strength = data.pop("ps_strength", 1.0)
        if penalty != "l2":
            raise ValueError(
                "ps_penalty: l1 is replaced by ps_prior: laplace (intercept unpenalized, "
                "variance = 2 * ps_strength^2); give ps_prior and ps_variance"
            )
        if "ps_prior" in data or "ps_variance" in data:
            raise ValueError("give ps_prior/ps_variance or ps_penalty/ps_strength, not both")
        data["ps_prior"], data["ps_variance"] = "normal", strength
        return data

    @model_validator(mode="after")
    def _grid(self) -> ComparativeSettings:
        if self.km_horizon_days // self.km_step_days > 1000:
            raise ValueError("the Kaplan-Meier grid has more than 1,000 points")
        if self.ps_prior == "none" and self.ps_variance is not None:
            raise ValueError("ps_prior none has no variance")
        controls = [c for c in self.negative_controls if isinstance(c, int)]
        controls += [p.cohort for p in self.positive_controls]
        concepts = [c for c in self.negative_controls if not isinstance(c, int)]
        if len(set(controls)) != len(controls) or len(set(concepts)) != len(concepts):
            raise ValueError("each control outcome once")
        if len(set(self.balance_covariates)) != len(self.balance_covariates):
            raise ValueError("each balance covariate once")
        return self

    def control_outcomes(self) -> list[tuple[int, float]]:
        """(outcome cohort id, true log HR) of every control, negatives first. Concept
        controls must have been replaced by their synthesized cohorts (the study does it)."""
        out = []
        for item in self.negative_controls:
            if not isinstance(item, int):
                raise ValueError("concept negative controls are synthesized into cohorts first")
            out.append((item, 0.0))
        out += [(p.cohort, math.log(p.true_hr)) for p in self.positive_controls]
        return out


@dataclass(frozen=True)
class Arms:
    """Who one adjustment's model is about (node-internal): the persons of each arm, and of
    each arm those with the outcome."""

    target: frozenset[int] = frozenset()
    comparator: frozenset[int] = frozenset()
    target_events: frozenset[int] = frozenset()
    comparator_events: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Control:
    """One control outcome's estimates per adjustment and who each is about."""

    outcome: int
    true_log_hr: float
    estimates: list[est.Estimate]
    arms: dict[str, Arms]


@dataclass(frozen=True)
class SiteResult:
    """What one node computed: attrition, estimates, balance, equipoise, curves, controls,
    diagnostics, and who each is about (node-internal)."""

    site: str
    attrition: list[AttritionStep]
    estimates: list[est.Estimate]
    balance_before: float
    equipoise: float
    km: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    preference_histogram: dict[str, list[int]] = field(default_factory=dict)  # 20 bins of 0.05
    arms: dict[str, Arms] = field(default_factory=dict)
    preference_persons: dict[str, list[frozenset[int]]] = field(default_factory=dict)
    equipoise_persons: int = 0
    balance_table1: dict[str, float] = field(default_factory=dict)
    generalizability: dict[str, float] = field(default_factory=dict)
    auc: float = float("nan")
    followup: dict[str, float] = field(default_factory=dict)  # mean days at risk per arm
    controls: list[Control] = field(default_factory=list)
    # Per population ("before", then each adjustment), each balance covariate's cell; the
    # balance covariates with each ``KIND:*`` expanded from the vocabulary, and their names.
    covariate_balance: dict[str, dict[str, bal.Cell]] = field(default_factory=dict)
    balance_covariates: list[str] = field(default_factory=list)
    balance_names: dict[str, str] = field(default_factory=dict)


_BINS = np.linspace(0, 1, 21)
_ARMS = ("target", "comparator")
# FeatureExtraction's default Table 1 covers demographics, the Charlson index and medical
# history; medlab's table-1 covariates are those of its covariate set.
_TABLE1 = ("age_group:", "gender:", "condition_any_time_prior:", "charlson_index")


def _arms(frame: pd.DataFrame) -> Arms:
    events = frame[frame["outcome"] == 1]
    return Arms(
        arm_persons(frame, 1),
        arm_persons(frame, 0),
        arm_persons(events, 1),
        arm_persons(events, 0),
    )


def _tiebreak(frame: pd.DataFrame) -> np.ndarray:
    """A key per entry that does not depend on the store's row order: a keyed hash of the
    person and the entry's start (ties in the score are ordered by it)."""
    keys = [
        hashlib.blake2b(f"{p}:{d}".encode(), key=b"medlab-matching", digest_size=8).digest()
        for p, d in zip(frame["person_id"], frame["start_date"].dt.strftime("%Y%m%d"), strict=True)
    ]
    return np.array([int.from_bytes(k, "big") >> 1 for k in keys], dtype=np.int64)


class _Model(NamedTuple):
    ties: Ties
    interval: Interval
    robust: bool


@dataclass(frozen=True)
class Adjusted:
    """One adjustment's rows, strata and weights (node-internal)."""

    frame: pd.DataFrame
    stratum: np.ndarray | None
    weights: np.ndarray | None  # outcome-model weights (IPTW)
    balance: np.ndarray  # balance weights per kept row
    keep: np.ndarray  # which rows of the population the adjustment keeps


def adjust(
    adjustment: est.Adjustment,
    population: pd.DataFrame,
    ps: np.ndarray,
    settings: ComparativeSettings,
    spread: float | None = None,
    share: float | None = None,
) -> Adjusted:
    """One adjustment on one outcome's population (matching, PS strata or weights);
    ``spread`` and ``share``: the caliper's standard deviation and the target share of the
    weights, when they come from the union of several sites (default: this population's)."""
    treatment = population["treatment"].to_numpy()
    everyone = np.ones(len(population), dtype=bool)
    if adjustment == "matching":
        sets = match_on_ps(
            ps,
            treatment,
            settings.max_ratio,
            settings.caliper,
            settings.caliper_scale,
            _tiebreak(population),
            spread,
        )
        keep = sets >= 0
        stratum = sets[keep]
        sizes = np.bincount(stratum) if keep.any() else np.zeros(0, dtype=np.int64)
        # ATT matching weights: each comparator counts 1/k in a set with k comparators.
        comparators = sizes[stratum] - 1 if keep.any() else np.zeros(0)
        balance = np.where(treatment[keep] == 1, 1.0, 1.0 / np.maximum(comparators, 1))
        return Adjusted(population[keep].reset_index(drop=True), stratum, None, balance, keep)
    if adjustment == "stratification":
        stratum = est.stratify(ps, settings.strata)
        targets = np.bincount(stratum, weights=treatment, minlength=settings.strata)
        comparators = np.bincount(stratum, weights=1 - treatment, minlength=settings.strata)
        ratio = np.divide(targets, comparators, out=np.zeros_like(targets), where=comparators > 0)
        balance = np.where(treatment == 1, 1.0, ratio[stratum])
        return Adjusted(population, stratum, None, balance, everyone)
    if adjustment == "iptw":
        w = est.iptw(ps, treatment, settings.iptw_estimand, settings.max_weight, share)
        return Adjusted(population, None, w, w, everyone)
    return Adjusted(population, None, None, np.ones(len(population)), everyone)


def _generalizability(
    x: Any, treatment: np.ndarray, keep: np.ndarray, weights: np.ndarray, targets_only: bool
) -> float:
    """Max |SMD| between the population an estimate is about, after adjustment (weighted),
    and before it: the target arm for an ATT estimate (matching, IPTW ATT), both arms
    otherwise, as CohortMethod's ``getGeneralizabilityTable`` chooses its base."""
    base = treatment == 1 if targets_only else np.ones(len(treatment), dtype=bool)
    before = x[base]
    kept = base[keep]
    after = x[keep][kept]
    stacked = sparse.vstack([before, after], format="csr")
    group = np.r_[np.zeros(before.shape[0]), np.ones(after.shape[0])]
    w = np.r_[np.ones(before.shape[0]), weights[kept]]
    smd = est.standardized_differences(stacked, group.astype(int), w)
    return float(np.abs(smd).max()) if smd.size else 0.0


def _att(adjustment: est.Adjustment, settings: ComparativeSettings) -> bool:
    """Whether the adjustment estimates the effect in the target arm (CohortMethod's
    ``targetEstimator``: matching ATT, IPTW its estimand, strata and none ATE)."""
    return adjustment == "matching" or (adjustment == "iptw" and settings.iptw_estimand == "att")


def local(
    con: duckdb.DuckDBPyConnection,
    site: str,
    target_id: int,
    comparator_id: int,
    outcome_id: int,
    settings: ComparativeSettings,
) -> SiteResult:
    """Run the study on one node and return aggregates (and their populations) only: the
    propensity model is fitted once on the fetched entries (CohortMethod's shared PS), each
    outcome (the study's and every control) then gets its own population and adjustments."""
    s = settings.population
    named, words = bal.expand(con, settings.balance_covariates)
    fetched = exposures(con, target_id, comparator_id, s)
    population, attrition = outcome_population(
        fetched, outcome_days(con, fetched.frame, outcome_id), s
    )
    grid = {"step": settings.km_step_days, "horizon": settings.km_horizon_days}
    treatment_all = fetched.frame["treatment"].to_numpy()
    if len(set(treatment_all)) < 2 or len(set(population["treatment"])) < 2:
        warnings.warn(
            f"{site}: the study population lacks the target or comparator arm",
            est.EstimationWarning,
            stacklevel=2,
        )
        empty = [est.cox(population, adjustment) for adjustment in settings.adjustments]
        curves = {str(a): est.kaplan_meier(population, None, **grid) for a in settings.adjustments}
        nobody = {str(a): _arms(population) for a in settings.adjustments}
        zeros = {arm: [0] * 20 for arm in _ARMS}
        return SiteResult(
            site,
            attrition,
            empty,
            float("nan"),
            float("nan"),
            curves,
            zeros,
            nobody,
            balance_covariates=named,
            balance_names=words,
        )
    cov = covariates(con, fetched.frame, settings.exclude_ingredients)
    fitted = propensity_model(
        cov.matrix,
        treatment_all,
        settings.ps_prior,
        settings.ps_variance,
        settings.ps_cv_folds,
        settings.ps_cv_seed,
    )
    table1 = np.array([any(c.startswith(p) for p in _TABLE1) for c in cov.ids], dtype=bool)

    def rows(frame: pd.DataFrame) -> np.ndarray:
        return frame["row_id"].to_numpy() - 1

    index = rows(population)
    x = cov.matrix[index]
    ps = fitted.scores[index]
    treatment = population["treatment"].to_numpy()
    preference = est.preference_scores(ps, treatment)
    within = (preference >= 0.3) & (preference <= 0.7)
    histogram: dict[str, list[int]] = {}
    bin_persons: dict[str, list[frozenset[int]]] = {}
    people = population["person_id"].to_numpy()
    for arm, value in (("target", 1), ("comparator", 0)):
        scores = preference[treatment == value]
        histogram[arm] = np.histogram(scores, _BINS)[0].astype(int).tolist()
        bins = np.clip(np.digitize(scores, _BINS[1:-1]), 0, 19)
        members = people[treatment == value]
        bin_persons[arm] = [frozenset(int(p) for p in members[bins == i]) for i in range(20)]
    before = float(np.abs(est.standardized_differences(x, treatment)).max())
    balance = {bal.BEFORE: bal.cells(x, cov.ids, named, treatment, people, np.ones(len(people)))}
    model = _Model(settings.cox_ties, settings.cox_ci, settings.iptw_variance == "robust")
    estimates = []
    km: dict[str, list[dict[str, object]]] = {}
    arms: dict[str, Arms] = {}
    table: dict[str, float] = {}
    general: dict[str, float] = {}
    for adjustment in settings.adjustments:
        adj = adjust(adjustment, population, ps, settings)
        kept_x, kept_t = x[adj.keep], treatment[adj.keep]
        smd = est.standardized_differences(kept_x, kept_t, adj.balance) if adj.keep.any() else None
        after = float(np.abs(smd).max()) if smd is not None and smd.size else float("nan")
        table[adjustment] = (
            float(np.abs(smd[table1]).max()) if smd is not None and table1.any() else float("nan")
        )
        general[adjustment] = (
            _generalizability(x, treatment, adj.keep, adj.balance, _att(adjustment, settings))
            if adj.keep.any()
            else float("nan")
        )
        estimates.append(est.cox(adj.frame, adjustment, adj.stratum, adj.weights, after, *model))
        km[adjustment] = est.kaplan_meier(adj.frame, adj.weights, **grid)
        arms[adjustment] = _arms(adj.frame)
        balance[adjustment] = (
            balance[bal.BEFORE]  # every row, unit weights: the same cells as before
            if adjustment == "none"
            else bal.cells(kept_x, cov.ids, named, kept_t, people[adj.keep], adj.balance)
        )
    controls = []
    for control, true_log_hr in settings.control_outcomes():
        frame, _ = outcome_population(fetched, outcome_days(con, fetched.frame, control), s)
        control_ps = fitted.scores[rows(frame)]
        found = []
        who: dict[str, Arms] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", est.EstimationWarning)
            for adjustment in settings.adjustments:
                adj = adjust(adjustment, frame, control_ps, settings)
                found.append(est.cox(adj.frame, adjustment, adj.stratum, adj.weights, None, *model))
                who[adjustment] = _arms(adj.frame)
        controls.append(Control(control, true_log_hr, found, who))
    followup = {
        arm: float(population.loc[population["treatment"] == value, "time_at_risk"].mean())
        for arm, value in (("target", 1), ("comparator", 0))
    }
    return SiteResult(
        site,
        attrition,
        estimates,
        before,
        float(within.mean()),
        km,
        histogram,
        arms,
        bin_persons,
        int(within.sum()),
        table,
        general,
        fitted.auc,
        followup,
        controls,
        balance,
        named,
        words,
    )
