"""The comparative cohort study (in the spirit of OHDSI CohortMethod), local and combine.

Local step, inside a node: the study population, covariates (the exposures and their
descendants left out), a propensity score, then for each adjustment a Cox model, covariate
balance and Kaplan-Meier curves. Only estimates, counts and curves leave the node. Combine
step: per-site estimates and their fixed- and random-effects meta-analysis per adjustment.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medlab.analyses import estimation as est
from medlab.analyses import meta
from medlab.analyses.population import (
    AttritionStep,
    PopulationSettings,
    covariates,
    study_population,
)
from medlab.fields import ConceptId, PositiveReal
from medlab.privacy.release import (
    Cells,
    Constraint,
    Curve,
    Element,
    Model,
    Release,
    Released,
    Statistic,
    Steps,
    require_released,
)

ADJUSTMENTS: tuple[est.Adjustment, ...] = ("none", "matching", "stratification", "iptw")


class ComparativeSettings(BaseModel):
    """Population, propensity score and adjustment settings."""

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


@dataclass(frozen=True)
class SiteResult:
    """What one node returns: attrition, estimates, balance, equipoise, curves."""

    site: str
    attrition: list[AttritionStep]
    estimates: list[est.Estimate]
    balance_before: float
    equipoise: float
    km: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    preference_histogram: dict[str, list[int]] = field(default_factory=dict)  # 20 bins of 0.05


def local(
    con: duckdb.DuckDBPyConnection,
    site: str,
    target_id: int,
    comparator_id: int,
    outcome_id: int,
    settings: ComparativeSettings,
) -> SiteResult:
    """Run the study on one node and return aggregates only."""
    population, attrition = study_population(
        con, target_id, comparator_id, outcome_id, settings.population
    )
    treatment = population["treatment"].to_numpy()
    if len(set(treatment)) < 2:
        warnings.warn(
            f"{site}: the study population lacks the target or comparator arm",
            est.EstimationWarning,
            stacklevel=2,
        )
        empty = [est.cox(population, adjustment) for adjustment in settings.adjustments]
        return SiteResult(site, attrition, empty, float("nan"), float("nan"), {})
    x = covariates(con, population, settings.exclude_ingredients).matrix
    ps = est.propensity_scores(x, treatment, settings.ps_penalty, settings.ps_strength)
    preference = est.preference_scores(ps, treatment)
    equipoise = float(((preference >= 0.3) & (preference <= 0.7)).mean())
    bins = np.linspace(0, 1, 21)
    histogram = {
        arm: np.histogram(preference[treatment == value], bins)[0].astype(int).tolist()
        for arm, value in (("target", 1), ("comparator", 0))
    }
    before = float(np.abs(est.standardized_differences(x, treatment)).max())
    estimates = []
    km: dict[str, list[dict[str, object]]] = {}
    for adjustment in settings.adjustments:
        frame, stratum, weights = population, None, None
        if adjustment == "matching":
            stratum_all = est.match(ps, treatment, settings.max_ratio, settings.caliper)
            keep = stratum_all >= 0
            if not keep.any():
                estimates.append(est.cox(population[keep], adjustment))
                continue
            frame, stratum = population[keep].reset_index(drop=True), stratum_all[keep]
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
        if adjustment != "none" and after > 0.1:
            warnings.warn(
                f"{site}: after {adjustment}, a covariate has |SMD| {after:.2f} > 0.1",
                est.BalanceWarning,
                stacklevel=2,
            )
        estimates.append(est.cox(frame, adjustment, stratum, weights, after))
        km[adjustment] = est.kaplan_meier(frame, weights)
    return SiteResult(site, attrition, estimates, before, equipoise, km, histogram)


_VALUES = ("hr", "ci_low", "ci_high", "p", "log_hr", "se")
_COUNTS = ("target_persons", "comparator_persons", "target_events", "comparator_events")
_ARMS = ("target", "comparator")


def _finite(value: float | None) -> float | None:
    return value if value is not None and np.isfinite(value) else None


def to_release(site: SiteResult, site_warnings: list[str]) -> Release:
    """Attrition as nested steps; per adjustment the Cox model, its balance and its
    Kaplan-Meier curves; balance before adjustment, equipoise and the preference-score
    histogram (whose bins add up to each arm)."""
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
        )
    ]
    population = (
        site.attrition[-1].target_persons + site.attrition[-1].comparator_persons
        if site.attrition
        else 0
    )
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
            )
        )
        elements.append(Statistic(f"balance:{e.adjustment}", _finite(e.max_abs_smd), persons))
        rows = site.km.get(e.adjustment)
        if rows:
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
                )
            )
    elements.append(Statistic("balance_before", _finite(site.balance_before), population))
    elements.append(Statistic("equipoise", _finite(site.equipoise), population))
    if site.preference_histogram:
        counts = {
            f"{arm}:{i}": {"n": n}
            for arm, bins in site.preference_histogram.items()
            for i, n in enumerate(bins)
        }
        counts.update({arm: {"n": sum(b)} for arm, b in site.preference_histogram.items()})
        margins = tuple(
            Constraint(arm, tuple(f"{arm}:{i}" for i in range(len(b))), ("n",))
            for arm, b in site.preference_histogram.items()
        )
        elements.append(Cells("preference", counts, constraints=margins))
    labels = {"adjustments": [e.adjustment for e in site.estimates], "warnings": site_warnings}
    return Release("comparative", site.site, tuple(elements), labels)


def released_site(part: Released) -> dict[str, Any]:
    """One site's released result in the readable form the study results use."""
    v = part.values
    estimates = []
    km: dict[str, list[dict[str, object]]] = {}
    for adjustment in part.labels["adjustments"]:
        model = v[f"estimate:{adjustment}"]
        estimates.append(
            {
                "adjustment": adjustment,
                **{k: model[k] for k in (*_VALUES, *_COUNTS)},
                "max_abs_smd": v[f"balance:{adjustment}"],
                "refused": model["refused"],
            }
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
        "warnings": part.labels["warnings"],
        "km": km,
        "preference_histogram": histogram,
    }


def combine(parts: list[Released]) -> dict[str, dict[str, meta.Pooled]]:
    """Per adjustment, the fixed- and random-effects pooled hazard ratios across the sites
    whose model the release gate let out."""
    require_released(parts)
    pooled: dict[str, dict[str, meta.Pooled]] = {}
    adjustments = parts[0].labels["adjustments"] if parts else []
    for adjustment in adjustments:
        models = [p.values.get(f"estimate:{adjustment}") for p in parts]
        usable = [m for m in models if m and m["refused"] is None and m["se"] and m["se"] > 0]
        if not usable:
            continue
        b, se = [m["log_hr"] for m in usable], [m["se"] for m in usable]
        pooled[adjustment] = {
            "fixed": meta.fixed_effect(b, se),
            "random": meta.random_effects(b, se),
        }
    return pooled
