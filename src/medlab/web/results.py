"""A study's released results as the study page shows them: per analysis, its tables and
figures, drawn from ``results.json`` as the hub combined it and from nothing else.

No number is computed here that the results do not carry (no totals across sites, no
shares in a table): a page shows what the release gate let out, where it let it out.
"""

from dataclasses import dataclass, field
from typing import Any

from medlab.web import charts
from medlab.web.charts import Figure, Say


@dataclass
class Chart:
    """One figure on the page: its element id, what it shows in words, its data."""

    id: str
    label: str
    figure: Figure


@dataclass
class Section:
    """One analysis of the study as the page shows it."""

    name: str
    type: str
    charts: list[Chart] = field(default_factory=list)
    view: dict[str, Any] = field(default_factory=dict)


def sections(results: dict[str, Any], adjustment: str | None, _: Say) -> list[Section]:
    """Every analysis of ``results``; comparative ones at ``adjustment`` (default: the
    first the study asked for)."""
    shown = []
    for n, analysis in enumerate(results.get("analyses", [])):
        section = Section(analysis["name"], analysis["type"])
        build = BUILDERS.get(analysis["type"])
        if build is not None:
            build(section, analysis, adjustment, f"a{n}", _)
        shown.append(section)
    return shown


def adjustments_of(analysis: dict[str, Any]) -> list[str]:
    """The adjustments a comparative analysis was estimated under, in the study's order."""
    return [e["adjustment"] for e in analysis.get("estimates", [])] or list(
        analysis.get("meta_analysis", {})
    )


def _comparative(section: Section, a: dict[str, Any], asked: str | None, key: str, _: Say) -> None:
    options = adjustments_of(a)
    adjustment = asked if asked in options else (options[0] if options else "none")
    sites = a.get("per_site", [])
    pooled = {p["adjustment"]: p for p in a.get("pooled", [])}
    rows = []
    for site in sites:
        for e in site["estimates"]:
            if e["adjustment"] == adjustment:
                rows.append({"label": site["site"], **_interval(e)})
    random = (a.get("meta_analysis", {}).get(adjustment) or {}).get("random")
    if random:
        rows.append(
            {"label": _("random-effects meta-analysis"), "combined": True, **_interval(random)}
        )
    if adjustment in pooled:
        rows.append(
            {
                "label": _("pooled Cox (stratified by site)"),
                "combined": True,
                **_interval(pooled[adjustment]),
            }
        )
    section.charts.append(
        Chart(
            f"{key}-forest", _("Forest plot of hazard ratios"), charts.forest(adjustment, rows, _)
        )
    )
    curves = []
    for site in sites:
        km = (site.get("km") or {}).get(adjustment) or []
        if km:
            curves.append((site["site"], km))
    pooled_km = (a.get("pooled_km") or {}).get(adjustment)
    if pooled_km:
        curves.append((_("pooled"), charts.pooled_km_rows(pooled_km)))
    risk_tables = []
    for n, (label, km) in enumerate(curves):
        section.charts.append(
            Chart(
                f"{key}-km-{n}",
                _("Kaplan–Meier curves of {site}", site=label),
                charts.km(label, km, _),
            )
        )
        days, table = charts.at_risk(km)
        risk_tables.append({"label": label, "days": days, "arms": table, "chart": f"{key}-km-{n}"})
    for n, site in enumerate(sites):
        if site.get("attrition"):
            section.charts.append(
                Chart(
                    f"{key}-attrition-{n}",
                    _("Attrition at {site}", site=site["site"]),
                    charts.attrition(site["site"], site["attrition"], _),
                )
            )
    if sites:
        section.charts.append(
            Chart(f"{key}-balance", _("Covariate balance"), charts.balance(sites, _))
        )
    if any(s.get("covariate_balance") for s in sites):
        section.charts.append(
            Chart(
                f"{key}-covariates",
                _("Balance of each covariate before and after {adjustment}", adjustment=adjustment),
                charts.covariate_balance(sites, adjustment, _),
            )
        )
    if any(s.get("preference_histogram") for s in sites):
        section.charts.append(
            Chart(
                f"{key}-preference",
                _("Preference-score distributions"),
                charts.preference(sites, _),
            )
        )
    section.view = {
        "adjustment": adjustment,
        "adjustments": options,
        "estimates": a.get("estimates", []),
        "pooled": a.get("pooled", []),
        "forest": rows,
        "risk_tables": risk_tables,
        "sites": sites,
        "covariate_rows": _covariate_rows(sites, adjustment, _),
    }


def _covariate_rows(sites: list[dict[str, Any]], adjustment: str, _: Say) -> list[dict[str, Any]]:
    """Per site, the balance covariates with a released SMD before or after ``adjustment``,
    the largest |SMD| before adjustment first (as CohortMethod orders its balance table)."""
    out = []
    for site in sites:
        rows = [
            {
                "site": site["site"],
                "label": charts.covariate_label(r["covariate"], _, r.get("name")),
                "before": r["smd_before"],
                "after": (r["smd_after"] or {}).get(adjustment),
            }
            for r in site.get("covariate_balance") or []
        ]
        shown = [r for r in rows if r["before"] is not None or r["after"] is not None]
        out += sorted(shown, key=lambda r: -abs(r["before"] or 0.0))
    return out


def _interval(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "hr": e.get("hr"),
        "ci_low": e.get("ci_low"),
        "ci_high": e.get("ci_high"),
        "p": e.get("p"),
    }


def _incidence(section: Section, a: dict[str, Any], _a: str | None, _k: str, _: Say) -> None:
    section.view = {"rates": a.get("rates", [])}


def _characterization(section: Section, a: dict[str, Any], _a: str | None, _k: str, _: Say) -> None:
    cohorts = a.get("cohorts", [])
    smd = a.get("standardized_differences") or {}
    names: dict[str, str] = {}
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for c in cohorts:
        for v in c["covariates"]:
            names.setdefault(v["covariate_id"], v["name"])
            cells.setdefault(v["covariate_id"], {})[c["cohort"]] = v
    section.view = {
        "cohorts": cohorts,
        "rows": [
            {"id": cid, "name": names[cid], "cells": cells[cid], "smd": smd.get(cid)}
            for cid in names
        ],
        "has_smd": bool(smd),
    }


def _feasibility(section: Section, a: dict[str, Any], _a: str | None, key: str, _: Say) -> None:
    funnel = a.get("funnel", [])
    if funnel:
        section.charts.append(
            Chart(
                f"{key}-funnel", _("Feasibility funnel"), charts.funnel(funnel, _("All sites"), _)
            )
        )
    sites = a.get("sites", [])
    if sites:
        section.charts.append(
            Chart(f"{key}-ranking", _("Site ranking by eligible persons"), charts.ranking(sites, _))
        )
    ranked = sorted(sites, key=lambda s: -1 if s["eligible"] is None else -s["eligible"])
    section.view = {"funnel": funnel, "eligible": a.get("eligible"), "sites": ranked}


def _utilization(section: Section, a: dict[str, Any], _a: str | None, key: str, _: Say) -> None:
    pathways = a.get("pathways", [])
    if pathways:
        section.charts.append(
            Chart(
                f"{key}-sunburst",
                _("Treatment pathways"),
                charts.sunburst(section.name, pathways, _),
            )
        )
    ranked = sorted(pathways, key=lambda p: -(p["persons"] or 0))
    section.view = {"pathways": ranked}


BUILDERS = {
    "comparative": _comparative,
    "incidence": _incidence,
    "characterization": _characterization,
    "feasibility": _feasibility,
    "utilization": _utilization,
}
