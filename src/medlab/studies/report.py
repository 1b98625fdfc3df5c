"""The readable side of a study's results: plots (PNG) and one HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from jinja2 import Environment, select_autoescape

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
{% if a.type == "comparative" %}<table><tr><th>adjustment</th><th>HR</th><th>95% CI</th>
<th>p</th><th>target persons</th><th>comparator persons</th><th>target events</th>
<th>comparator events</th></tr>{% for e in a.estimates %}<tr><td>{{ e.adjustment }}</td>
<td>{{ e.hr|num }}</td><td>{{ e.ci_low|num }}&ndash;{{ e.ci_high|num }}</td>
<td>{{ e.p|num("%.3g") }}</td><td>{{ e.target_persons }}</td>
<td>{{ e.comparator_persons }}</td><td>{{ e.target_events }}</td>
<td>{{ e.comparator_events }}</td></tr>{% endfor %}</table>
{% for site in a.per_site %}<h3>{{ site.site }}: attrition</h3><table><tr><th>step</th>
<th>target persons</th><th>comparator persons</th></tr>{% for x in site.attrition %}<tr>
<td>{{ x.step }}</td><td>{{ x.target_persons }}</td><td>{{ x.comparator_persons }}</td></tr>
{% endfor %}</table>{% for w in site.warnings %}<p>warning: {{ w }}</p>{% endfor %}{% endfor %}
{% for img in a.images %}<img src="{{ img }}" alt="{{ img }}" width="480">{% endfor %}
{% elif a.type == "incidence" %}<table><tr><th>stratum</th><th>persons</th><th>outcomes</th>
<th>person-years</th><th>rate / 1,000 PY</th><th>95% CI</th></tr>
{% for x in a.rates if x.grouping in ("overall", "sex") %}<tr><td>{{ x.grouping }}
{{ x.sex or "" }}</td><td>{{ x.persons }}</td><td>{{ x.outcomes }}</td>
<td>{{ "%.1f"|format(x.person_years) }}</td><td>{{ "%.2f"|format(x.rate) }}</td>
<td>{{ "%.2f"|format(x.ci_low) }}&ndash;{{ "%.2f"|format(x.ci_high) }}</td></tr>{% endfor %}
</table>{% elif a.type == "feasibility" %}<table><tr><th>criterion</th><th>persons left</th>
<th>passing alone</th></tr>{% for f in a.funnel %}<tr><td>{{ f.criterion }}</td>
<td>{{ f.persons }}</td><td>{{ f.independent_persons }}</td></tr>{% endfor %}</table>
<table><tr><th>site</th><th>eligible</th></tr>{% for x in a.sites %}<tr><td>{{ x.site }}</td>
<td>{{ x.eligible }}</td></tr>{% endfor %}</table>
{% elif a.type == "utilization" %}<table><tr><th>pathway (drug concept ids)</th>
<th>persons</th></tr>{% for p in a.pathways[:15] %}<tr><td>{{ p.path|join(" → ") }}</td>
<td>{{ p.persons }}</td></tr>{% endfor %}</table>
{% else %}{% for c in a.cohorts %}<p>cohort {{ c.cohort }}: {{ c.entries }} entries,
{{ c.covariates|length }} covariates</p>{% endfor %}{% endif %}{% endfor %}
</body></html>
"""


def _save(fig: Any, out: Path, name: str, images: list[str]) -> None:
    fig.savefig(out / name, dpi=80, bbox_inches="tight")
    plt.close(fig)
    images.append(name)


def _km_plot(analysis: dict[str, Any], out: Path) -> list[str]:
    images: list[str] = []
    for site in analysis["per_site"]:
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
                total = sum(counts) or 1
                ax.plot(centers, [c / total for c in counts], label=arm)
            ax.axvspan(0.3, 0.7, alpha=0.1)
            ax.set_xlabel("preference score")
            ax.set_ylabel("share of the arm")
            ax.set_title(f"{site['site']}: preference score (equipoise {site['equipoise']:.0%})")
            ax.legend()
            name = f"{analysis['name']}_{site['site']}_preference.png"
            _save(fig, out, name, images)
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
    return images


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Plots and ``report.html`` beside ``results.json``."""
    shown = dict(results)
    shown["analyses"] = [
        {**a, "images": _km_plot(a, out)} if a["type"] == "comparative" else a
        for a in results["analyses"]
    ]
    env = Environment(autoescape=select_autoescape(default=True))
    env.filters["num"] = lambda v, fmt="%.2f": "–" if v is None else fmt % v
    html = env.from_string(_TEMPLATE)
    path = out / "report.html"
    path.write_text(html.render(r=shown))
    return path
