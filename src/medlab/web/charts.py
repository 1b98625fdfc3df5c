"""Plotly figures (plain JSON: data and layout) drawn from a study's released results.

Every number a figure carries comes from ``results.json`` as the hub combined it: counts the
release gate let out, estimates at the precision it rounded them to. A value the gate
withheld is ``null`` there and is drawn as a gap, never as zero. Traces whose numbers are
counts say so (``meta.counts``), so a test can hold each one against the results.
"""

from collections.abc import Callable
from typing import Any

Figure = dict[str, Any]
Say = Callable[..., str]
TARGET, COMPARATOR = "#0b5cad", "#b8500b"  # both at least 4.5:1 on white
FONT = {"family": "system-ui, 'Noto Sans CJK SC', sans-serif", "size": 13}


def _layout(title: str, **more: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "font": FONT,
        "margin": {"l": 70, "r": 20, "t": 50, "b": 60},
        "legend": {"orientation": "h", "y": -0.2},
        **more,
    }


def km(site: str, rows: list[dict[str, Any]], _: Say) -> Figure:
    """Kaplan–Meier step curves of both arms of one site (or the pooled curves)."""
    data = []
    for arm, colour in (("target", TARGET), ("comparator", COMPARATOR)):
        points = [r for r in rows if r["arm"] == arm]
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": _(arm),
                "x": [p["day"] for p in points],
                "y": [p["survival"] for p in points],
                "line": {"shape": "hv", "color": colour, "width": 2},
                "connectgaps": False,
                "meta": {"arm": arm, "site": site},
            }
        )
    shown = [r["day"] for r in rows if r["survival"] is not None]
    layout = _layout(
        f"{site}: {_('Kaplan–Meier curves')}",
        xaxis={
            "title": {"text": _("days since the start of time at risk")},
            "range": [0, max(shown, default=1) * 1.05 or 1],
        },
        yaxis={"title": {"text": _("without the outcome")}, "rangemode": "tozero"},
    )
    return {"data": data, "layout": layout}


def pooled_km_rows(curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The pooled curves in the per-site row form (arm, day, survival, at_risk)."""
    return [
        {"arm": arm, "day": p["time"], "survival": p["value"], "at_risk": p["at_risk"]}
        for arm in ("target", "comparator")
        for p in curves.get(arm, [])
    ]


def at_risk(rows: list[dict[str, Any]]) -> tuple[list[float], dict[str, list[Any]]]:
    """The numbers at risk per arm on the curves' grid (None where withheld)."""
    days = sorted({r["day"] for r in rows})
    table = {
        arm: [
            next((r["at_risk"] for r in rows if r["arm"] == arm and r["day"] == d), None)
            for d in days
        ]
        for arm in ("target", "comparator")
    }
    return days, table


def forest(adjustment: str, rows: list[dict[str, Any]], _: Say) -> Figure:
    """Hazard ratios with their 95% intervals, one row each (sites, then the combined
    estimates), on a log axis with the null at 1."""
    shown = [r for r in rows if r.get("hr") is not None]
    labels = [r["label"] for r in shown]
    hr = [r["hr"] for r in shown]
    # Each interval is a segment between its released bounds (never a derived offset).
    segments: dict[str, list[Any]] = {"x": [], "y": []}
    for r in shown:
        if r.get("ci_low") is not None and r.get("ci_high") is not None:
            segments["x"] += [r["ci_low"], r["ci_high"], None]
            segments["y"] += [r["label"], r["label"], None]
    intervals = {
        "type": "scatter",
        "mode": "lines",
        **segments,
        "line": {"color": "#1b1f24", "width": 2},
        "hoverinfo": "skip",
        "showlegend": False,
        "meta": {"adjustment": adjustment, "part": "intervals"},
    }
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": hr,
        "y": labels,
        "marker": {
            "symbol": ["diamond" if r.get("combined") else "square" for r in shown],
            "size": [14 if r.get("combined") else 10 for r in shown],
            "color": [COMPARATOR if r.get("combined") else TARGET for r in shown],
        },
        "customdata": [[r["ci_low"], r["ci_high"]] for r in shown],
        "hovertemplate": "%{y}: HR %{x} (%{customdata[0]}–%{customdata[1]})<extra></extra>",
        "showlegend": False,
        "meta": {"adjustment": adjustment, "part": "estimates"},
    }
    layout = _layout(
        f"{_('Hazard ratios')}: {adjustment}",
        xaxis={"type": "log", "title": {"text": "HR (95% CI)"}, "zeroline": False},
        yaxis={"autorange": "reversed", "automargin": True},
        shapes=[
            {
                "type": "line",
                "x0": 1,
                "x1": 1,
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "line": {"dash": "dot", "color": "#4a5360"},
            }
        ],
        height=120 + 40 * max(len(shown), 1),
    )
    return {"data": [intervals, trace], "layout": layout}


def attrition(site: str, steps: list[dict[str, Any]], _: Say) -> Figure:
    """Persons left in each arm after each study-population step, top to bottom."""
    names = [s["step"] for s in steps]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": _(arm),
            "y": names,
            "x": [s[f"{arm}_persons"] for s in steps],
            "marker": {"color": colour},
            "meta": {"counts": True, "arm": arm},
        }
        for arm, colour in (("target", TARGET), ("comparator", COMPARATOR))
    ]
    layout = _layout(
        f"{site}: {_('Attrition')}",
        barmode="group",
        yaxis={"autorange": "reversed", "automargin": True},
        xaxis={"title": {"text": _("persons")}},
        height=160 + 60 * len(steps),
    )
    return {"data": data, "layout": layout}


def balance(sites: list[dict[str, Any]], _: Say) -> Figure:
    """Each site's largest |SMD| before adjustment against after it, per adjustment (the
    line is 'no change'; below 0.1 is the usual balance threshold)."""
    adjustments = sorted({e["adjustment"] for s in sites for e in s["estimates"]})
    data = []
    for adjustment in adjustments:
        points = [
            (s["site"], s["max_abs_smd_before"], e["max_abs_smd"])
            for s in sites
            for e in s["estimates"]
            if e["adjustment"] == adjustment
        ]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": adjustment,
                "x": [p[1] for p in points],
                "y": [p[2] for p in points],
                "text": [p[0] for p in points],
                "hovertemplate": "%{text}: %{x} → %{y}<extra>" + adjustment + "</extra>",
                "marker": {"size": 11},
            }
        )
    top = max([1e-3] + [v for t in data for v in t["x"] + t["y"] if v is not None]) * 1.1
    layout = _layout(
        _("Covariate balance"),
        xaxis={"title": {"text": _("max |SMD| before adjustment")}, "range": [0, top]},
        yaxis={"title": {"text": _("max |SMD| after adjustment")}, "range": [0, top]},
        shapes=[
            {"type": "line", "x0": 0, "y0": 0, "x1": top, "y1": top, "line": {"dash": "dot"}},
            {"type": "line", "x0": 0, "x1": top, "y0": 0.1, "y1": 0.1, "line": {"color": "red"}},
        ],
    )
    return {"data": data, "layout": layout}


def covariate_label(name: str, _: Say, concept: str | None = None) -> str:
    """A balance covariate's name in words (``gender:8532`` is female); ``concept``: the
    node vocabulary's name of its concept."""
    kind, _sep, value = name.partition(":")
    fixed = {"age": _("age in years"), "charlson_index": _("Charlson index")}
    if name in fixed:
        return fixed[name]
    if kind == "gender":
        return {"8507": _("male"), "8532": _("female")}.get(value, name)
    if kind == "age_group" and value.isdigit():
        return _("age {low}–{high}", low=value, high=int(value) + 4)
    words = {
        "condition": _("condition in the year before (concept {id})"),
        "condition_any_time_prior": _("condition any time before (concept {id})"),
        "drug": _("drug in the year before (concept {id})"),
        "procedure": _("procedure in the year before (concept {id})"),
        "index_year": _("index year {id}"),
    }
    if kind not in words:
        return name
    return words[kind].format(id=f"{value} {concept}" if concept else value)


def covariate_balance(sites: list[dict[str, Any]], adjustment: str, _: Say) -> Figure:
    """Per site, each balance covariate's |SMD| before adjustment against after
    ``adjustment`` (CohortMethod's ``plotCovariateBalanceScatterPlot``: absolute values, the
    same range on both axes, the diagonal 'no change'; the red line is the 0.1 threshold).
    A covariate the gate withheld before or after is left out, as CohortMethod leaves out
    missing ones; the hover gives the signed values."""
    data = []
    for site in sites:
        rows = [
            r
            for r in site.get("covariate_balance") or []
            if r["smd_before"] is not None and (r["smd_after"] or {}).get(adjustment) is not None
        ]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": site["site"],
                "x": [abs(r["smd_before"]) for r in rows],
                "y": [abs(r["smd_after"][adjustment]) for r in rows],
                "text": [covariate_label(r["covariate"], _, r.get("name")) for r in rows],
                "customdata": [[r["smd_before"], r["smd_after"][adjustment]] for r in rows],
                "hovertemplate": "%{text}: %{customdata[0]} → %{customdata[1]}<extra>"
                + site["site"]
                + "</extra>",
                "marker": {"size": 9, "opacity": 0.7},
                "meta": {"covariates": [r["covariate"] for r in rows]},
            }
        )
    top = max([0.11] + [v for t in data for v in t["x"] + t["y"]]) * 1.05
    layout = _layout(
        _("Covariate balance, {adjustment}", adjustment=adjustment),
        height=560,
        margin={"l": 70, "r": 20, "t": 50, "b": 100},
        legend={"orientation": "h", "y": -0.22},
        xaxis={"title": {"text": _("|SMD| before adjustment")}, "range": [0, top]},
        yaxis={"title": {"text": _("|SMD| after adjustment")}, "range": [0, top]},
        shapes=[
            {"type": "line", "x0": 0, "y0": 0, "x1": top, "y1": top, "line": {"dash": "dot"}},
            {"type": "line", "x0": 0, "x1": top, "y0": 0.1, "y1": 0.1, "line": {"color": "red"}},
        ],
    )
    return {"data": data, "layout": layout}


def preference(sites: list[dict[str, Any]], _: Say) -> Figure:
    """Each site's preference-score distribution per arm, as the share of the arm in each
    of the 20 bins (a withheld bin is a gap)."""
    data = []
    for site in sites:
        histogram = site.get("preference_histogram") or {}
        for arm, counts in histogram.items():
            total = sum(c for c in counts if c is not None)
            width = 1 / len(counts) if counts else 0.05
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": f"{site['site']} · {_(arm)}",
                    "x": [round(width * (i + 0.5), 4) for i in range(len(counts))],
                    "y": [None if c is None or not total else c / total for c in counts],
                    "customdata": counts,
                    "hovertemplate": "%{x:.3f}: %{y:.1%} (%{customdata})",
                    "line": {"dash": "solid" if arm == "target" else "dash"},
                    "connectgaps": False,
                    # y is each released count's share of the arm's released counts
                    # (customdata); x the bins' centres
                    "meta": {"site": site["site"], "arm": arm, "derived": "share"},
                }
            )
    layout = _layout(
        _("Preference-score distributions"),
        xaxis={"title": {"text": _("preference score")}, "range": [0, 1]},
        yaxis={"title": {"text": _("share of the arm")}},
        shapes=[
            {
                "type": "rect",
                "x0": 0.3,
                "x1": 0.7,
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "fillcolor": "#0b5cad",
                "opacity": 0.08,
                "line": {"width": 0},
            }
        ],
    )
    return {"data": data, "layout": layout}


def funnel(rows: list[dict[str, Any]], title: str, _: Say) -> Figure:
    """A feasibility funnel: persons left after each criterion."""
    data = [
        {
            "type": "funnel",
            "y": [r["criterion"] for r in rows],
            "x": [r["persons"] for r in rows],
            "marker": {"color": TARGET},
            "meta": {"counts": True},
        }
    ]
    return {"data": data, "layout": _layout(title, yaxis={"automargin": True})}


def ranking(sites: list[dict[str, Any]], _: Say) -> Figure:
    """Sites ranked by their eligible persons (withheld counts rank last, as gaps)."""
    ranked = sorted(sites, key=lambda s: -1 if s["eligible"] is None else -s["eligible"])
    data = [
        {
            "type": "bar",
            "x": [s["site"] for s in ranked],
            "y": [s["eligible"] for s in ranked],
            "marker": {"color": TARGET},
            "meta": {"counts": True},
        }
    ]
    layout = _layout(
        _("Site ranking by eligible persons"), yaxis={"title": {"text": _("Eligible")}}
    )
    return {"data": data, "layout": layout}


def sunburst(name: str, pathways: list[dict[str, Any]], _: Say) -> Figure:
    """Treatment pathways as rings: first line inside, then the next lines outward."""
    own: dict[tuple[str, ...], int] = {}
    for p in pathways:
        key = tuple(p["names"])
        if p["persons"] is not None:
            own[key] = own.get(key, 0) + int(p["persons"])
    nodes: set[tuple[str, ...]] = set()
    for key in own:
        nodes |= {key[: i + 1] for i in range(len(key))}
    ordered = sorted(nodes, key=lambda k: (len(k), k))
    data = [
        {
            "type": "sunburst",
            "ids": [" → ".join(k) for k in ordered],
            "labels": [k[-1] for k in ordered],
            "parents": [" → ".join(k[:-1]) for k in ordered],
            "values": [own.get(k, 0) for k in ordered],
            "branchvalues": "remainder",
            "meta": {"counts": True},
        }
    ]
    return {"data": data, "layout": _layout(f"{name}: {_('Treatment pathways')}", height=520)}


def dq_trend(points: list[dict[str, Any]], _: Say) -> Figure:
    """A node's data-quality checks across its store's snapshots: how many failed, oldest
    first (``points``: ``{"checked_at", "fingerprint", "failed", "total"}``)."""
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": _("failed checks"),
            "x": [p["checked_at"] for p in points],
            "y": [p["failed"] for p in points],
            "text": [p["fingerprint"][:12] for p in points],
            "hovertemplate": "%{x}<br>%{y} / %{customdata}<br>%{text}<extra></extra>",
            "customdata": [p["total"] for p in points],
            "line": {"color": COMPARATOR, "width": 2},
        }
    ]
    layout = _layout(
        _("Failed checks per snapshot"),
        xaxis={"title": {"text": _("checked at (UTC)")}, "type": "category"},
        yaxis={"title": {"text": _("failed checks")}, "rangemode": "tozero"},
        showlegend=False,
    )
    return {"data": data, "layout": layout}
