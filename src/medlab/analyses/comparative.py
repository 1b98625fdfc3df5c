"""The comparative cohort study (in the spirit of OHDSI CohortMethod), local and combine.

Local step, inside a node: the study population, covariates (the exposures and their
descendants left out), a propensity score, then for each adjustment a Cox model, covariate
balance and Kaplan-Meier curves. Only estimates, counts and curves leave the node. Combine
step: per-site estimates and their fixed- and random-effects meta-analysis per adjustment.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medlab.analyses import estimation as est
from medlab.analyses import meta
from medlab.analyses.population import (
    AttritionStep,
    PopulationSettings,
    arm_persons,
    covariates,
    study_population,
)
from medlab.analyses.scope import Scope
from medlab.fields import MAX_DAYS, ConceptId, PositiveReal
from medlab.privacy.release import (
    Cells,
    Constraint,
    Curve,
    Element,
    Kind,
    Model,
    Population,
    Release,
    Released,
    Statistic,
    Steps,
    require_released,
)

ADJUSTMENTS: tuple[est.Adjustment, ...] = ("none", "matching", "stratification", "iptw")


class ComparativeSettings(BaseModel):
    """Population, propensity score and adjustment settings, and the Kaplan-Meier grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    population: PopulationSettings = PopulationSettings()
    exclude_ingredients: Annotated[list[ConceptId], Field(max_length=1000)] = Field(
        default_factory=list
    )
    ps_penalty: Literal["l1", "l2"] = "l2"
    ps_strength: Annotated[PositiveReal, Field(le=1e6)] = 1.0
    adjustments: list[est.Adjustment] = Field(default_factory=lambda: list(ADJUSTMENTS))
    max_ratio: Annotated[int, Field(ge=1, le=1000)] = 1
    caliper: Annotated[float, Field(ge=0, le=100)] = 0.2
    strata: Annotated[int, Field(ge=2, le=100)] = 5
    iptw_estimand: Literal["ate", "att"] = "att"
    max_weight: Annotated[PositiveReal, Field(le=1e6)] = 10.0
    km_step_days: Annotated[int, Field(ge=1, le=3650)] = 30
    km_horizon_days: Annotated[int, Field(ge=1, le=MAX_DAYS)] = 1800

    @model_validator(mode="after")
    def _grid(self) -> ComparativeSettings:
        if self.km_horizon_days // self.km_step_days > 1000:
            raise ValueError("the Kaplan-Meier grid has more than 1,000 points")
        return self


@dataclass(frozen=True)
class Arms:
    """Who one adjustment's model is about (node-internal): the persons of each arm, and of
    each arm those with the outcome."""

    target: frozenset[int] = frozenset()
    comparator: frozenset[int] = frozenset()
    target_events: frozenset[int] = frozenset()
    comparator_events: frozenset[int] = frozenset()


@dataclass(frozen=True)
class SiteResult:
    """What one node computed: attrition, estimates, balance, equipoise, curves, and who each
    is about (node-internal)."""

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


_BINS = np.linspace(0, 1, 21)


def _arms(frame: pd.DataFrame) -> Arms:
    events = frame[frame["outcome"] == 1]
    return Arms(
        arm_persons(frame, 1),
        arm_persons(frame, 0),
        arm_persons(events, 1),
        arm_persons(events, 0),
    )


def local(
    con: duckdb.DuckDBPyConnection,
    site: str,
    target_id: int,
    comparator_id: int,
    outcome_id: int,
    settings: ComparativeSettings,
) -> SiteResult:
    """Run the study on one node and return aggregates (and their populations) only."""
    population, attrition = study_population(
        con, target_id, comparator_id, outcome_id, settings.population
    )
    treatment = population["treatment"].to_numpy()
    grid = {"step": settings.km_step_days, "horizon": settings.km_horizon_days}
    if len(set(treatment)) < 2:
        warnings.warn(
            f"{site}: the study population lacks the target or comparator arm",
            est.EstimationWarning,
            stacklevel=2,
        )
        empty = [est.cox(population, adjustment) for adjustment in settings.adjustments]
        curves = {str(a): est.kaplan_meier(population, None, **grid) for a in settings.adjustments}
        nobody = {str(a): _arms(population) for a in settings.adjustments}
        zeros = {arm: [0] * 20 for arm in _ARMS}
        return SiteResult(site, attrition, empty, float("nan"), float("nan"), curves, zeros, nobody)
    x = covariates(con, population, settings.exclude_ingredients).matrix
    ps = est.propensity_scores(x, treatment, settings.ps_penalty, settings.ps_strength)
    preference = est.preference_scores(ps, treatment)
    within = (preference >= 0.3) & (preference <= 0.7)
    equipoise = float(within.mean())
    histogram: dict[str, list[int]] = {}
    bin_persons: dict[str, list[frozenset[int]]] = {}
    people = population["person_id"].to_numpy()
    for arm, value in (("target", 1), ("comparator", 0)):
        scores = preference[treatment == value]
        histogram[arm] = np.histogram(scores, _BINS)[0].astype(int).tolist()
        index = np.clip(np.digitize(scores, _BINS[1:-1]), 0, 19)
        members = people[treatment == value]
        bin_persons[arm] = [frozenset(int(p) for p in members[index == i]) for i in range(20)]
    before = float(np.abs(est.standardized_differences(x, treatment)).max())
    estimates = []
    km: dict[str, list[dict[str, object]]] = {}
    arms: dict[str, Arms] = {}
    for adjustment in settings.adjustments:
        frame, stratum, weights = population, None, None
        if adjustment == "matching":
            stratum_all = est.match(ps, treatment, settings.max_ratio, settings.caliper)
            keep = stratum_all >= 0
            frame = population[keep].reset_index(drop=True)
            arms[adjustment] = _arms(frame)
            km[adjustment] = est.kaplan_meier(frame, None, **grid)
            if not keep.any():
                estimates.append(est.cox(frame, adjustment))
                continue
            stratum = stratum_all[keep]
            sizes = np.bincount(stratum_all[keep] - stratum_all[keep].min())
            # ATT matching weights: each comparator counts 1/k in a set with k comparators.
            set_sizes = sizes[stratum_all[keep] - stratum_all[keep].min()] - 1
            matched_weights = np.where(treatment[keep] == 1, 1.0, 1.0 / np.maximum(set_sizes, 1))
            smd = est.standardized_differences(x[keep], treatment[keep], matched_weights)
        elif adjustment == "stratification":
            stratum = est.stratify(ps, settings.strata)
            # Balance within strata: comparators weighted to their stratum's target count.
            targets = np.bincount(stratum, weights=treatment, minlength=settings.strata)
            comparators = np.bincount(stratum, weights=1 - treatment, minlength=settings.strata)
            ratio = np.divide(
                targets, comparators, out=np.zeros_like(targets), where=comparators > 0
            )
            smd = est.standardized_differences(
                x, treatment, np.where(treatment == 1, 1.0, ratio[stratum])
            )
        elif adjustment == "iptw":
            weights = est.iptw(ps, treatment, settings.iptw_estimand, settings.max_weight)
            smd = est.standardized_differences(x, treatment, weights)
        else:
            smd = est.standardized_differences(x, treatment)
        after = float(np.abs(smd).max()) if smd.size else 0.0
        estimates.append(est.cox(frame, adjustment, stratum, weights, after))
        if adjustment != "matching":
            km[adjustment] = est.kaplan_meier(frame, weights, **grid)
            arms[adjustment] = _arms(frame)
    return SiteResult(
        site,
        attrition,
        estimates,
        before,
        equipoise,
        km,
        histogram,
        arms,
        bin_persons,
        int(within.sum()),
    )


# Released per model: the hazard ratio and its limits (ratio precision) and p; the log HR and
# its SE are derived from them after the gate (they would otherwise undo the rounding).
_VALUES = ("hr", "ci_low", "ci_high", "p")
_KINDS: dict[str, Kind] = {"hr": "ratio", "ci_low": "ratio", "ci_high": "ratio", "p": "p_value"}
_COUNTS = ("target_persons", "comparator_persons", "target_events", "comparator_events")
_ARMS = ("target", "comparator")
_Z = 1.959963984540054


def _finite(value: float | None) -> float | None:
    return value if value is not None and np.isfinite(value) else None


class _Keys:
    """The populations of one comparative release, derived from its three cohorts."""

    def __init__(self, scope: Scope, analysis: Any) -> None:
        self.scope = scope
        self.analysis = analysis
        self.roots = (analysis.target, analysis.comparator, analysis.outcome)
        self.settings = analysis.settings.model_dump(mode="json")

    def derived(self, *parts: Any, persons: frozenset[int]) -> Population:
        return self.scope.derived("comparative", self.roots, self.settings, *parts, persons=persons)

    def step(self, index: int, step: str, arm: str, persons: frozenset[int]) -> Population:
        """One arm after one attrition step: the first step is the cohort itself (medlab's
        cohorts lie within observation), the rest derive from the whole analysis."""
        if index == 0:
            cohort = self.analysis.target if arm == "target" else self.analysis.comparator
            return self.scope.cohort(cohort, persons)
        return self.derived(f"step:{step}", "arm", arm, persons=persons)


def _populations(keys: _Keys, site: SiteResult) -> dict[str, Population]:
    """The population of every model count, curve and balance of the release."""
    out: dict[str, Population] = {}
    last = len(site.attrition) - 1
    final = site.attrition[-1].step if site.attrition else ""
    for adjustment, arms in site.arms.items():
        matched = adjustment == "matching"
        basis = "matched" if matched else f"step:{final}"
        for name, persons in (
            ("target_persons", arms.target),
            ("comparator_persons", arms.comparator),
            ("target_events", arms.target_events),
            ("comparator_events", arms.comparator_events),
        ):
            arm = name.split("_")[0]
            if name.endswith("events"):
                out[f"{adjustment}:{name}"] = keys.derived(basis, "events", arm, persons=persons)
            elif matched:
                out[f"{adjustment}:{name}"] = keys.derived(basis, "arm", arm, persons=persons)
            else:  # models without matching are about the final study population
                out[f"{adjustment}:{name}"] = keys.step(last, final, arm, persons)
        out[f"{adjustment}:all"] = keys.derived(basis, "all", persons=arms.target | arms.comparator)
    return out


def to_release(site: SiteResult, scope: Scope, analysis: Any) -> Release:
    """Attrition as nested steps; per adjustment the Cox model, its balance and its
    Kaplan-Meier curves on the settings' grid; balance before adjustment, equipoise and the
    preference-score histogram (whose bins add up to each arm). ``analysis`` is the
    study's :class:`~medlab.studies.spec.ComparativeAnalysis`."""
    settings: ComparativeSettings = analysis.settings
    keys = _Keys(scope, analysis)
    steps = [
        {
            "target_persons": keys.step(i, a.step, "target", a.target),
            "comparator_persons": keys.step(i, a.step, "comparator", a.comparator),
        }
        for i, a in enumerate(site.attrition)
    ]
    elements: list[Element] = [
        Steps(
            "attrition",
            tuple(
                (
                    a.step,
                    {
                        "target_persons": a.target_persons,
                        "comparator_persons": a.comparator_persons,
                    },
                )
                for a in site.attrition
            ),
            tuple(steps),
        )
    ]
    populations = _populations(keys, site)
    last = site.attrition[-1] if site.attrition else None
    everyone = keys.derived(
        f"step:{last.step if last else ''}",
        "all",
        persons=(last.target | last.comparator) if last else frozenset(),
    )
    population = len(everyone)
    for e in site.estimates:
        persons = e.target_persons + e.comparator_persons
        elements.append(
            Model(
                f"estimate:{e.adjustment}",
                1,
                persons,
                e.target_events + e.comparator_events,
                {k: _finite(getattr(e, k)) for k in _VALUES},
                {k: getattr(e, k) for k in _COUNTS},
                ("target_events", "comparator_events"),
                _KINDS,
                {k: populations[f"{e.adjustment}:{k}"] for k in _COUNTS},
            )
        )
        elements.append(
            Statistic(
                f"balance:{e.adjustment}",
                _finite(e.max_abs_smd),
                persons,
                "smd",
                population=populations[f"{e.adjustment}:all"],
            )
        )
        rows = site.km.get(e.adjustment, [])
        elements.append(
            Curve(
                f"km:{e.adjustment}",
                {
                    arm: tuple(
                        (
                            float(r["day"]),  # type: ignore[arg-type]
                            float(r["at_risk"]),  # type: ignore[arg-type]
                            float(r["events"]),  # type: ignore[arg-type]
                            float(r["survival"]),  # type: ignore[arg-type]
                        )
                        for r in rows
                        if r["arm"] == arm
                    )
                    for arm in _ARMS
                },
                {arm: populations[f"{e.adjustment}:{arm}_persons"] for arm in _ARMS},
            )
        )
    elements.append(
        Statistic("balance_before", _finite(site.balance_before), population, "smd", None, everyone)
    )
    elements.append(
        Statistic(
            "equipoise",
            _finite(site.equipoise),
            population,
            "proportion",
            site.equipoise_persons,
            everyone,
        )
    )
    bins = {arm: site.preference_histogram.get(arm, [0] * 20) for arm in _ARMS}
    counts = {f"{arm}:{i}": {"n": n} for arm, b in bins.items() for i, n in enumerate(b)}
    counts.update({arm: {"n": sum(b)} for arm, b in bins.items()})
    margins = tuple(
        Constraint(arm, tuple(f"{arm}:{i}" for i in range(len(b))), ("n",))
        for arm, b in bins.items()
    )
    members = {
        f"{arm}:{i}": keys.derived(
            "preference",
            arm,
            i,
            persons=site.preference_persons.get(arm, [frozenset()] * 20)[i],
        )
        for arm in _ARMS
        for i in range(20)
    }
    if last:
        members["target"] = steps[-1]["target_persons"]
        members["comparator"] = steps[-1]["comparator_persons"]
    # Under differential privacy: with first exposures only, a person adds one entry to her
    # arm's total and one bin (in both arms unless subjects in both cohorts are removed).
    population_settings = settings.population
    per_person = (1 if population_settings.remove_subjects_in_both_cohorts else 2) * 2
    elements.append(
        Cells(
            "preference",
            counts,
            constraints=margins,
            populations=members,
            sensitivity={"n": float(per_person)} if population_settings.first_exposure_only else {},
        )
    )
    labels = {"adjustments": [e.adjustment for e in site.estimates]}
    return Release("comparative", site.site, tuple(elements), labels)


def _log_scale(model: dict[str, Any]) -> tuple[float | None, float | None]:
    """The log hazard ratio and its standard error, from the released ratio and limits."""
    hr, low, high = model.get("hr"), model.get("ci_low"), model.get("ci_high")
    if not hr or not low or not high or hr <= 0 or low <= 0 or high <= low:
        return None, None
    return math.log(hr), (math.log(high) - math.log(low)) / (2 * _Z)


def released_site(part: Released) -> dict[str, Any]:
    """One site's released result in the readable form the study results use, with the
    warnings its released values call for."""
    v = part.values
    estimates = []
    km: dict[str, list[dict[str, object]]] = {}
    notes: list[str] = []
    for adjustment in part.labels["adjustments"]:
        model = v[f"estimate:{adjustment}"]
        log_hr, se = _log_scale(model)
        balance = v[f"balance:{adjustment}"]
        estimates.append(
            {
                "adjustment": adjustment,
                **{k: model[k] for k in _VALUES},
                "log_hr": log_hr,
                "se": se,
                **{k: model[k] for k in _COUNTS},
                "max_abs_smd": balance,
                "refused": model["refused"],
            }
        )
        if model["refused"]:
            notes.append(f"{part.site}: {adjustment}: no hazard ratio ({model['refused']})")
        elif model["hr"] is None:
            notes.append(f"{part.site}: {adjustment}: no finite hazard ratio")
        if adjustment != "none" and balance is not None and balance > 0.1:
            notes.append(
                f"{part.site}: after {adjustment}, a covariate has |SMD| {balance:.2g} > 0.1"
            )
        curve = v.get(f"km:{adjustment}")
        if curve:
            km[adjustment] = [
                {"arm": arm, "day": p["time"], "survival": p["value"], "at_risk": p["at_risk"]}
                for arm in _ARMS
                for p in curve.get(arm, [])
            ]
    histogram: dict[str, list[int | None]] = {}
    for key, row in (v.get("preference") or {}).items():
        if ":" in key:
            arm, _ = key.split(":")
            histogram.setdefault(arm, []).append(row["n"])
    return {
        "site": part.site,
        "estimates": estimates,
        "attrition": v["attrition"],
        "max_abs_smd_before": v["balance_before"],
        "equipoise": v["equipoise"],
        "warnings": notes,
        "km": km,
        "preference_histogram": histogram,
    }


def combine(parts: list[Released]) -> dict[str, dict[str, meta.Pooled]]:
    """Per adjustment, the fixed- and random-effects pooled hazard ratios across the sites
    whose model the release gate let out."""
    require_released(parts)
    pooled: dict[str, dict[str, meta.Pooled]] = {}
    adjustments: list[str] = next((p.labels["adjustments"] for p in parts if p.labels), [])
    for adjustment in adjustments:
        models = [p.values.get(f"estimate:{adjustment}") for p in parts]
        scales = [_log_scale(m) for m in models if m and m["refused"] is None]
        usable = [(b, se) for b, se in scales if b is not None and se]
        if not usable:
            continue
        b, se = [x[0] for x in usable], [x[1] for x in usable]
        pooled[adjustment] = {
            "fixed": meta.fixed_effect(b, se),
            "random": meta.random_effects(b, se),
        }
    return pooled
