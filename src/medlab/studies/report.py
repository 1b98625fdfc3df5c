"""The readable side of a study's results: plots (PNG) and one HTML report."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from jinja2 import Environment, Template, Undefined, select_autoescape

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.study }}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th:first-child,td:first-child{text-align:left}</style></head><body>
<h1>{{ r.study }}</h1>
<p>spec {{ r.spec_hash }} &middot; medlab {{ r.medlab_version }}</p>
<h2>Nodes</h2><table><tr><th>node</th><th>snapshot fingerprint</th></tr>
{% for n in r.nodes %}<tr><td>{{ n.node }}</td><td>{{ n.fingerprint }}</td></tr>{% endfor %}
</table>
{% for a in r.analyses %}<h2>{{ a.name }} ({{ a.type }})</h2>
{% if a.refused %}<p>refused at release: {{ a.refused }}</p>
{% elif a.type == "comparative" %}<table><tr><th>adjustment</th><th>HR</th><th>95% CI</th>
<th>p</th><th>calibrated HR (95% CI)</th><th>calibrated p</th><th>diagnostics</th>
<th>target persons</th><th>comparator persons</th><th>target events</th>
<th>comparator events</th></tr>{% for e in a.estimates %}<tr><td>{{ e.adjustment }}</td>
<td>{{ e.hr|num }}</td><td>{{ e.ci_low|num }}&ndash;{{ e.ci_high|num }}</td>
<td>{{ e.p|num("%.3g") }}</td><td>{{ e.calibrated_hr|num }} ({{ e.calibrated_ci_low|num }}&ndash;{{
e.calibrated_ci_high|num }})</td><td>{{ e.calibrated_p|num("%.3g") }}</td>
<td>{{ e.diagnostics }}{% if e.failing %}: {{ e.failing|join(", ") }}{% endif %}</td>
<td>{{ e.target_persons|count }}</td>
<td>{{ e.comparator_persons|count }}</td><td>{{ e.target_events|count }}</td>
<td>{{ e.comparator_events|count }}</td></tr>{% endfor %}</table>
{% if a.pooled %}<h3>pooled on secure sums (one PS model across the sites)</h3><table><tr>
<th>adjustment</th><th>HR</th><th>95% CI (Wald)</th><th>p</th><th>method</th><th>sites</th>
<th>target persons</th><th>comparator persons</th><th>target events</th>
<th>comparator events</th></tr>{% for e in a.pooled %}<tr><td>{{ e.adjustment }}</td>
{% if e.withheld %}<td colspan="9">withheld: {{ e.withheld }}</td>{% else %}
<td>{{ e.hr|num }}</td><td>{{ e.ci_low|num }}&ndash;{{ e.ci_high|num }}</td>
<td>{{ e.p|num("%.3g") }}</td><td>{{ e.method }}</td><td>{{ e.sites|join(", ") }}</td>
<td>{{ e.target_persons|count }}</td><td>{{ e.comparator_persons|count }}</td>
<td>{{ e.target_events|count }}</td><td>{{ e.comparator_events|count }}</td>{% endif %}
</tr>{% endfor %}</table>{% elif a.pooled_withheld %}<p>pooled estimates withheld:
{{ a.pooled_withheld }}</p>{% endif %}
{% for site, why in (a.pooled_withheld_by or {}).items() %}<p>{{ site }} not pooled:
{{ why }}</p>{% endfor %}
{% for site in a.per_site %}<h3>{{ site.site }}: attrition</h3><table><tr><th>step</th>
<th>target persons</th><th>comparator persons</th></tr>{% for x in site.attrition %}<tr>
<td>{{ x.step }}</td><td>{{ x.target_persons|count }}</td>
<td>{{ x.comparator_persons|count }}</td></tr>
{% endfor %}</table><h3>{{ site.site }}: diagnostics</h3><table><tr><th>adjustment</th>
{% for name in checks %}<th>{{ name }}</th>{% endfor %}<th>verdict</th></tr>
{% for e in site.estimates %}<tr><td>{{ e.adjustment }}</td>{% for name in checks %}
{% set c = e.checks[name] %}<td>{{ c.value|num("%.3g") }} {{ {True: "✓", False: "✗",
None: "not evaluated"}[c.pass] }}</td>{% endfor %}<td>{{ e.diagnostics }}</td></tr>
{% endfor %}</table>{% for w in site.warnings %}<p>warning: {{ w }}</p>{% endfor %}{% endfor %}
{% for img in a.images %}<img src="{{ img }}" alt="{{ img }}" width="480">{% endfor %}
{% elif a.type == "incidence" %}<table><tr><th>stratum</th><th>persons</th><th>outcomes</th>
<th>person-years</th><th>rate / 1,000 PY</th><th>95% CI</th></tr>
{% for x in a.rates if x.grouping in ("overall", "sex") %}<tr><td>{{ x.grouping }}
{{ x.sex or "" }}</td><td>{{ x.persons|count }}</td><td>{{ x.outcomes|count }}</td>
<td>{{ x.person_years|num("%.1f") }}</td><td>{{ x.rate|num }}</td>
<td>{{ x.ci_low|num }}&ndash;{{ x.ci_high|num }}</td></tr>{% endfor %}
</table>{% elif a.type == "feasibility" %}<table><tr><th>criterion</th><th>persons left</th>
<th>passing alone</th></tr>{% for f in a.funnel %}<tr><td>{{ f.criterion }}</td>
<td>{{ f.persons|count }}</td><td>{{ f.independent_persons|count }}</td></tr>{% endfor %}
</table>
<table><tr><th>site</th><th>eligible</th></tr>{% for x in a.sites %}<tr><td>{{ x.site }}</td>
<td>{{ x.eligible|count }}</td></tr>{% endfor %}</table>
{% elif a.type == "utilization" %}<table><tr><th>pathway (first → second → third line)</th>
<th>persons</th></tr>{% for p in a.pathways[:15] %}<tr><td>{{ p.names|join(" → ") }}</td>
<td>{{ p.persons }}</td></tr>{% endfor %}</table>
{% for img in a.images %}<img src="{{ img }}" alt="{{ img }}" width="480">{% endfor %}
{% elif a.type == "federated_model" %}{% if a.withheld %}<p>withheld: {{ a.withheld }}</p>
{% else %}<p>{{ a.model }} model on secure sums over {{ a.sites|join(", ") }}: {{ a.rows|count }}
rows, {{ a.events|count }} with the outcome, {{ a.iterations }} Newton steps
({{ "converged" if a.converged else "not converged" }})</p><table><tr><th>term</th>
<th>{{ a.scale }}</th><th>95% CI</th><th>p</th></tr>{% for t in a.terms %}<tr>
<td>{{ t.term }}</td><td>{{ t.estimate }}</td><td>{{ t.ci_low }}–{{ t.ci_high }}</td>
<td>{{ t.p }}</td></tr>{% endfor %}</table>{% endif %}
{% for site, why in (a.withheld_by or {}).items() %}<p>{{ site }} did not contribute:
{{ why }}</p>{% endfor %}
{% else %}{% for c in a.cohorts %}<p>cohort {{ c.cohort }}: {{ c.entries }} entries,
{{ c.covariates|length }} covariates</p>{% endfor %}
{% if a.table1 %}<table><tr><th>covariate (age, Charlson, then largest |SMD|)</th>
<th>cohort {{ a.cohorts[0].cohort }}</th><th>cohort {{ a.cohorts[1].cohort }}</th>
<th>SMD</th></tr>{% for x in a.table1 %}<tr><td>{{ x.name }}</td><td>{{ x.first }}</td>
<td>{{ x.second }}</td><td>{{ "%.3f"|format(x.smd) }}</td></tr>{% endfor %}</table>
{% endif %}{% endif %}{% endfor %}
<h2>Disclosure control</h2>
<p>Every number above left its node through that node's release gate, under the node's own
policy. {{ r.disclosure.shown }} values were shown and {{ r.disclosure.withheld }} withheld
(a withheld value is a small count, one that would reveal one, a population too close to one
released before, or a model with too few events; which of these, only the node's steward
sees).</p>
<table><tr><th>node</th><th>policy</th><th>minimum cell</th><th>counts protected by</th>
</tr>{% for site, p in r.disclosure.policies.items() %}<tr><td>{{ site }}</td>
<td>{{ p.version }} ({{ p.digest[:19] }}…)</td><td>{{ p.min_cell_count }}</td>
<td>{{ p.count_protection }}{% if p.count_protection == "rounding" %} ({{ p.rounding }})
{% endif %}</td></tr>{% endfor %}</table>
<table><tr><th>site</th><th>analysis</th><th>values shown</th><th>withheld</th></tr>
{% for rel in r.disclosure.releases %}<tr><td>{{ rel.site }}</td><td>{{ rel.analysis }}</td>
<td>{{ rel.shown }}</td><td>{{ rel.withheld }}</td></tr>{% endfor %}</table>
</body></html>
"""


def _save(fig: Any, out: Path, name: str, images: list[str]) -> None:
    fig.savefig(out / name, dpi=80, bbox_inches="tight")
    plt.close(fig)
    images.append(name)


CHECKS = ("max_abs_smd", "max_abs_smd_table1", "equipoise", "mdrr", "generalizability", "ease")


def _calibration_plot(analysis: dict[str, Any], site: dict[str, Any], out: Path) -> list[str]:
    """EmpiricalCalibration's plotCalibrationEffect: the controls' estimates against their
    standard errors, the traditional p < 0.05 boundary (dashed) and the calibrated one."""
    images: list[str] = []
    for e in site["estimates"]:
        controls = [
            c
            for c in site.get("controls", [])
            if c["adjustment"] == e["adjustment"] and c["log_hr"] is not None and c["se"]
        ]
        null = e.get("null")
        if not controls or not null:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        top = max(1.0, 1.1 * max(c["se"] for c in controls))
        se = np.linspace(0, top, 100)
        for sign in (-1, 1):
            ax.plot(np.exp(sign * 1.96 * se), se, "k--", linewidth=0.8)
            bound = null["mean"] + sign * 1.96 * np.sqrt(null["sd"] ** 2 + se**2)
            ax.plot(np.exp(bound), se, color="tab:red", linewidth=1)
        ax.scatter(
            [math.exp(c["log_hr"]) for c in controls],
            [c["se"] for c in controls],
            s=14,
            label="negative controls",
        )
        if e.get("log_hr") is not None and e.get("se"):
            ax.scatter(
                [math.exp(e["log_hr"])], [e["se"]], marker="D", color="tab:orange", label="estimate"
            )
        ax.set_xscale("log")
        ax.set_ylim(top, 0)
        ax.set_xlabel("hazard ratio")
        ax.set_ylabel("standard error")
        ax.set_title(f"{site['site']}: calibration, {e['adjustment']} (EASE {e['ease']:.2f})")
        ax.legend(fontsize=7)
        name = f"{analysis['name']}_{site['site']}_calibration_{e['adjustment']}.png"
        _save(fig, out, name, images)
    return images


def _km_plot(analysis: dict[str, Any], out: Path) -> list[str]:
    images: list[str] = []
    for site in analysis["per_site"]:
        images += _calibration_plot(analysis, site, out)
        for adjustment, rows in site["km"].items():
            fig, ax = plt.subplots(figsize=(6, 4))
            for arm in ("target", "comparator"):
                points = [r for r in rows if r["arm"] == arm]
                ax.step(
                    [p["day"] for p in points],
                    [p["survival"] for p in points],
                    where="post",
                    label=arm,
                )
            _at_risk_rows(ax, rows)
            ax.set_xlabel("days since the start of time at risk")
            ax.set_ylabel("without the outcome")
            ax.set_title(f"{site['site']}: Kaplan-Meier, {adjustment}")
            ax.legend()
            name = f"{analysis['name']}_{site['site']}_km_{adjustment}.png"
            _save(fig, out, name, images)
        histogram = site.get("preference_histogram") or {}
        if histogram:
            fig, ax = plt.subplots(figsize=(6, 3))
            centers = [0.025 + 0.05 * i for i in range(20)]
            for arm, counts in histogram.items():
                # Suppressed bins are drawn as empty; the release gate hid them.
                shown = [c or 0 for c in counts]
                total = sum(shown) or 1
                ax.plot(centers, [c / total for c in shown], label=arm)
            ax.axvspan(0.3, 0.7, alpha=0.1)
            ax.set_xlabel("preference score")
            ax.set_ylabel("share of the arm")
            equipoise = site["equipoise"]
            shown_equipoise = "withheld" if equipoise is None else f"{equipoise:.0%}"
            ax.set_title(f"{site['site']}: preference score (equipoise {shown_equipoise})")
            ax.legend()
            name = f"{analysis['name']}_{site['site']}_preference.png"
            _save(fig, out, name, images)
        images.append(_attrition_plot(analysis["name"], site, out))
        fig, ax = plt.subplots(figsize=(6, 3))
        labels = ["before"] + [e["adjustment"] for e in site["estimates"]]
        values = [site["max_abs_smd_before"] or 0] + [
            e["max_abs_smd"] or 0 for e in site["estimates"]
        ]
        ax.bar(labels, values)
        ax.axhline(0.1, color="red", linewidth=1)
        ax.set_ylabel("max |SMD|")
        ax.set_title(f"{site['site']}: covariate balance")
        name = f"{analysis['name']}_{site['site']}_balance.png"
        _save(fig, out, name, images)
        scatter = _covariate_scatter(site)
        if scatter is not None:
            _save(scatter, out, f"{analysis['name']}_{site['site']}_covariates.png", images)
    return images


def _covariate_scatter(site: dict[str, Any]) -> Any:
    """Each balance covariate's |SMD| before adjustment against after each adjustment
    (CohortMethod's balance scatter plot), or None when none was released."""
    rows = site.get("covariate_balance") or []
    adjustments = [e["adjustment"] for e in site["estimates"] if e["adjustment"] != "none"]
    points = {
        a: [
            (abs(r["smd_before"]), abs(r["smd_after"][a]))
            for r in rows
            if r["smd_before"] is not None and r["smd_after"].get(a) is not None
        ]
        for a in adjustments
    }
    if not any(points.values()):
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    top = max([0.11] + [v for p in points.values() for xy in p for v in xy]) * 1.05
    for adjustment, xy in points.items():
        if xy:
            ax.scatter([x for x, _ in xy], [y for _, y in xy], s=14, alpha=0.6, label=adjustment)
    ax.plot([0, top], [0, top], linestyle="dashed", color="grey", linewidth=1)
    ax.axhline(0.1, color="red", linewidth=1)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("|SMD| before adjustment")
    ax.set_ylabel("|SMD| after adjustment")
    ax.set_title(f"{site['site']}: balance of each covariate")
    ax.legend()
    return fig


def _at_risk_rows(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Numbers at risk per arm under the x-axis ticks, as KM plots in papers show them."""
    if not rows:
        return
    last = max(r["day"] for r in rows)
    ticks = [t for t in ax.get_xticks() if 0 <= t <= last]
    ax.set_xticks(ticks)
    for line, arm in enumerate(("target", "comparator")):
        points = [r for r in rows if r["arm"] == arm]
        y = -0.22 - 0.07 * line
        ax.annotate(arm, (0, y), xycoords="axes fraction", ha="right", fontsize=7)
        for tick in ticks:
            before = [p["at_risk"] for p in points if p["day"] <= tick]
            n = before[-1] if before else None
            ax.annotate(
                "–" if n is None else str(int(n)),
                (tick, y),
                xycoords=("data", "axes fraction"),
                ha="center",
                fontsize=7,
            )


def _attrition_plot(name: str, site: dict[str, Any], out: Path) -> str:
    """Persons left in each arm after each study-population step, top to bottom."""
    steps = site["attrition"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(steps) + 1.2))
    y = list(range(len(steps)))[::-1]
    for offset, arm in ((0.2, "target"), (-0.2, "comparator")):
        counts = [step[f"{arm}_persons"] for step in steps]
        bars = ax.barh([v + offset for v in y], [c or 0 for c in counts], height=0.4, label=arm)
        ax.bar_label(
            bars, ["withheld" if c is None else str(c) for c in counts], padding=2, fontsize=7
        )
    ax.set_yticks(y, [step["step"] for step in steps], fontsize=8)
    ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
    ax.set_xlabel("persons")
    ax.set_title(f"{site['site']}: attrition")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    file = f"{name}_{site['site']}_attrition.png"
    _save(fig, out, file, [])
    return file


def _sunburst_plot(analysis: dict[str, Any], out: Path) -> list[str]:
    """Treatment pathways as rings: first line inside, then second and third line."""
    paths = sorted(analysis["pathways"], key=lambda p: p["names"])
    total = sum(p["persons"] for p in paths)
    if not total:
        return []
    depth = max(len(p["names"]) for p in paths)
    drugs = sorted({n for p in paths for n in p["names"]})
    palette = plt.get_cmap("tab10")
    color = {d: palette(i % 10) for i, d in enumerate(drugs)}
    fig, ax = plt.subplots(figsize=(6, 6))
    width = 0.9 / depth
    for level in range(depth):
        sizes: list[int] = []
        colors: list[Any] = []
        prefix: tuple[str, ...] | None = None
        for p in paths:
            key = tuple(p["names"][: level + 1]) if len(p["names"]) > level else None
            if sizes and key == prefix:
                sizes[-1] += p["persons"]
                continue
            prefix = key
            sizes.append(p["persons"])
            colors.append(color[key[-1]] if key else "white")
        ax.pie(
            sizes,
            radius=0.1 + width * (level + 1),
            colors=colors,
            startangle=90,
            counterclock=False,
            wedgeprops={"width": width, "edgecolor": "white", "linewidth": 0.5},
        )
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[d]) for d in drugs]
    ax.legend(handles, drugs, loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    ax.set_title(f"{analysis['name']}: treatment lines (inner = first), {total} persons")
    file = f"{analysis['name']}_sunburst.png"
    _save(fig, out, file, [])
    return [file]


def _table1(analysis: dict[str, Any], rows: int = 25) -> list[dict[str, Any]]:
    """For two cohorts: age, the Charlson index and the covariates with the largest |SMD|,
    as proportions (binary) or mean (SD) (continuous)."""
    smd = analysis.get("standardized_differences")
    if not smd:
        return []
    first, second = ({c["covariate_id"]: c for c in x["covariates"]} for x in analysis["cohorts"])

    def shown(c: dict[str, Any] | None) -> str:
        if c is None:
            return "0.0%"
        if c["mean"] is None:
            return "suppressed"
        if c["kind"] == "binary":
            return f"{100 * c['mean']:.1f}%"
        return f"{c['mean']:.2f} ({c['sd']:.2f})"

    fixed = [k for k in ("age", "charlson_index") if k in smd]
    ranked = sorted((k for k in smd if k not in fixed), key=lambda k: -abs(smd[k]))
    table = []
    for key in [*fixed, *ranked[: rows - len(fixed)]]:
        a, b = first.get(key), second.get(key)
        table.append(
            {
                "name": (a or b or {"name": key})["name"],
                "first": shown(a),
                "second": shown(b),
                "smd": smd[key],
            }
        )
    return table


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Plots and ``report.html`` beside ``results.json``."""
    shown = dict(results)
    plots = {"comparative": _km_plot, "utilization": _sunburst_plot}
    shown["analyses"] = [
        {**a, "images": plots[a["type"]](a, out)}
        if a["type"] in plots and not a.get("refused")
        else a
        for a in results["analyses"]
    ]
    for a in shown["analyses"]:
        if a["type"] == "characterization" and not a.get("refused"):
            a["table1"] = _table1(a)
    path = out / "report.html"
    path.write_text(_template().render(r=shown, checks=CHECKS))
    return path


@cache
def _template() -> Template:
    """The report's template, compiled once per process (about 0.1 s each time)."""
    env = Environment(autoescape=select_autoescape(default=True))
    env.filters["num"] = lambda v, fmt="%.2f": (
        "–" if v is None or isinstance(v, Undefined) else fmt % v
    )
    env.filters["count"] = lambda v: "suppressed" if v is None else v
    return env.from_string(_TEMPLATE)
