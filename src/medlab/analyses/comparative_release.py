"""The comparative study's release (what leaves a node) and its combination at the hub.

Per site: attrition as nested steps; per adjustment the Cox model, its balance (all and
table-1 covariates), generalizability and Kaplan-Meier curves; balance before adjustment,
equipoise, the PS model's AUC, mean follow-up per arm, the preference-score histogram; and
every control outcome's Cox model per adjustment. Only released values are combined.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medlab.analyses import balance as bal
from medlab.analyses import meta
from medlab.analyses.comparative import Arms, ComparativeSettings, Control, SiteResult
from medlab.analyses.estimation import Estimate
from medlab.analyses.scope import Scope
from medlab.privacy.release import (
    Balance,
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

    def control(self, outcome: int, *parts: Any, persons: frozenset[int]) -> Population:
        """A population of one control outcome's model (its own study population)."""
        roots = (self.analysis.target, self.analysis.comparator, outcome)
        return self.scope.derived("comparative", roots, self.settings, *parts, persons=persons)

    def step(self, index: int, step: str, arm: str, persons: frozenset[int]) -> Population:
        """One arm after one attrition step: the first ("Original cohorts", every row of
        the cohort table) is the cohort itself, the rest derive from the whole analysis."""
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
    per_person = (1 if population_settings.remove_duplicate_subjects != "keep all" else 2) * 2
    elements.append(
        Cells(
            "preference",
            counts,
            constraints=margins,
            populations=members,
            sensitivity={"n": float(per_person)} if population_settings.first_exposure_only else {},
        )
    )
    # The shape follows the settings alone: every adjustment and every control has its
    # elements whether or not the node could compute them (missing values are withheld).
    for adjustment in settings.adjustments:
        arms = site.arms.get(adjustment, Arms())
        kept = keys.derived(
            "matched" if adjustment == "matching" else f"step:{last.step if last else ''}",
            "all",
            persons=arms.target | arms.comparator,
        )
        for name, values in (
            ("balance_table1", site.balance_table1),
            ("generalizability", site.generalizability),
        ):
            elements.append(
                Statistic(
                    f"{name}:{adjustment}",
                    _finite(values.get(adjustment, math.nan)),
                    len(kept),
                    "smd",
                    population=kept,
                )
            )
    elements.append(_balance(site, settings, steps, populations))
    auc = _finite(site.auc)
    elements.append(Statistic("ps_auc", auc, population, "proportion", None, everyone))
    for arm in _ARMS:
        followed = steps[-1][f"{arm}_persons"] if steps else everyone
        elements.append(
            Statistic(
                f"followup:{arm}",
                _finite(site.followup.get(arm, math.nan)),
                len(followed),
                "mean",
                population=followed,
            )
        )
    computed = {c.outcome: c for c in site.controls}
    controls = settings.control_outcomes()
    for outcome, true_log_hr in controls:
        control = computed.get(outcome) or Control(
            outcome,
            true_log_hr,
            [Estimate(a, *(math.nan,) * 6, 0, 0, 0, 0) for a in settings.adjustments],
            {},
        )
        for e in control.estimates:
            arms = control.arms.get(e.adjustment, Arms())
            who = {
                "target_persons": arms.target,
                "comparator_persons": arms.comparator,
                "target_events": arms.target_events,
                "comparator_events": arms.comparator_events,
            }
            elements.append(
                Model(
                    f"control:{control.outcome}:{e.adjustment}",
                    1,
                    e.target_persons + e.comparator_persons,
                    e.target_events + e.comparator_events,
                    {k: _finite(getattr(e, k)) for k in _VALUES},
                    {k: getattr(e, k) for k in _COUNTS},
                    ("target_events", "comparator_events"),
                    _KINDS,
                    {
                        k: keys.control(control.outcome, e.adjustment, k, persons=v)
                        for k, v in who.items()
                    },
                )
            )
    labels = {
        "adjustments": [e.adjustment for e in site.estimates],
        "controls": [[outcome, true_log_hr] for outcome, true_log_hr in controls],
        "balance_names": dict(site.balance_names),  # the node's vocabulary's
    }
    return Release("comparative", site.site, tuple(elements), labels)


def _balance(
    site: SiteResult,
    settings: ComparativeSettings,
    steps: list[dict[str, Population]],
    populations: dict[str, Population],
) -> Balance:
    """Each balance covariate's SMD before adjustment (on the final step's arms) and after
    each adjustment (on the arms of its model), keyed by the settings and the node's
    vocabulary alone."""
    columns = [bal.BEFORE, *settings.adjustments]
    arms: dict[str, dict[str, Population]] = {}
    if steps:
        arms[bal.BEFORE] = {arm: steps[-1][f"{arm}_persons"] for arm in _ARMS}
    for adjustment in settings.adjustments:
        if f"{adjustment}:target_persons" in populations:
            arms[adjustment] = {arm: populations[f"{adjustment}:{arm}_persons"] for arm in _ARMS}
    computed = site.covariate_balance
    named = site.balance_covariates  # the settings' list, each KIND:* expanded at the node
    cell = {
        c: {column: computed[column][c] for column in columns if c in computed.get(column, {})}
        for c in named
    }
    return Balance(
        "covariate_balance",
        {
            c: {
                column: _finite(cell[c][column].smd) if column in cell[c] else None
                for column in columns
            }
            for c in named
        },
        arms,
        {c: {k: v.counts for k, v in cell[c].items()} for c in cell},
        {c: {k: v.contributions for k, v in cell[c].items()} for c in cell},
        bal.BEFORE,
    )


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
                "max_abs_smd_table1": v.get(f"balance_table1:{adjustment}"),
                "generalizability": v.get(f"generalizability:{adjustment}"),
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
    controls = []
    for outcome, true_log_hr in part.labels.get("controls", []):
        for adjustment in part.labels["adjustments"]:
            model = v[f"control:{outcome}:{adjustment}"]
            log_hr, se = _log_scale(model)
            controls.append(
                {
                    "outcome": outcome,
                    "true_log_hr": true_log_hr,
                    "adjustment": adjustment,
                    **{k: model[k] for k in _VALUES},
                    "log_hr": log_hr,
                    "se": se,
                    **{k: model[k] for k in _COUNTS},
                    "refused": model["refused"],
                }
            )
    shown = v.get("covariate_balance") or {}
    words = part.labels.get("balance_names") or {}
    balance = [
        {
            "covariate": c,
            "name": words.get(c),
            "smd_before": row.get(bal.BEFORE),
            "smd_after": {a: row.get(a) for a in part.labels["adjustments"]},
        }
        for c, row in shown.items()
    ]
    return {
        "site": part.site,
        "estimates": estimates,
        "covariate_balance": balance,
        "controls": controls,
        "ps_auc": v.get("ps_auc"),
        "followup_mean_days": {arm: v.get(f"followup:{arm}") for arm in _ARMS},
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
