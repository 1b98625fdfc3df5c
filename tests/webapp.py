"""The web app's test lab and the checks its tests share: a governed hub whose study covers
every kind of result page, and the numbers a page shows held against ``results.json``."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from medlab import synth
from medlab.analyses import balance as bal
from medlab.cohorts.model import example
from tests import federation as fed

VOCABULARY = Path(synth.__file__).parent / "vocabulary"  # the synthetic nodes' vocabulary
ANALYSES = ["incidence", "characterization", "comparative", "feasibility", "utilization"]


def spec(name: str = "web apixaban") -> dict[str, Any]:
    """The tests' federated study with a feasibility and a utilization analysis added, so
    its page shows every kind of result."""
    found = fed.spec(name)
    for analysis in found["analyses"]:  # each covariate's balance over the vocabulary too
        if analysis["type"] == "comparative":
            analysis.setdefault("settings", {})["balance_covariates"] = [
                *bal.DEFAULT,
                "condition_any_time_prior:*",
                "drug:*",
            ]
    warfarin = example("warfarin_af_new_users").to_data()
    found["cohorts"].append({"id": 4, "name": "warfarin AF new users", "definition": warfarin})
    found["analyses"] += [
        {"type": "feasibility", "name": "funnel", "cohort": 4},
        {
            "type": "utilization",
            "name": "anticoagulants",
            "cohort": 1,
            "drugs": [fed.APIXABAN, fed.WARFARIN],
        },
    ]
    return found


# -- the numbers a page shows -----------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
# Elements whose text is not a released figure: the frame, identifiers, times, the study's
# own facts (rounds, sites required), labels (covariate names, strata, criteria), the spec
# in words and structural counts (rows, covariates): in the templates, class "meta", "id",
# "facts", "label" or "words", or a code, time, summary or thead element (column
# headings); and the hub's records of agreements and usage (class "governance").
_SKIPPED_TAGS = {"script", "style", "code", "time", "header", "footer", "nav", "summary", "thead"}
_SKIPPED_CLASSES = {"meta", "id", "facts", "label", "governance", "words"}


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open element: whether its text is skipped
        self.found: list[str] = []
        self.charts: list[dict[str, Any]] = []
        self._chart = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "meta", "link", "input", "img", "hr"):
            return
        classes = set((dict(attrs).get("class") or "").split())
        skipped = (self.stack and self.stack[-1]) or tag in _SKIPPED_TAGS
        self.stack.append(bool(skipped or classes & _SKIPPED_CLASSES))
        self._chart = tag == "script" and any(k == "data-chart" for k, _ in attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "meta", "link", "input", "img", "hr"):
            return
        if self.stack:
            self.stack.pop()
        self._chart = False

    def handle_data(self, data: str) -> None:
        if self._chart:
            self.charts.append(json.loads(data))
        elif not (self.stack and self.stack[-1]):
            self.found += _NUMBER.findall(data)


def page_numbers(html: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The numbers in a page's text (outside the skipped elements) and its charts."""
    parser = _Text()
    parser.feed(html)
    return parser.found, parser.charts


def released_numbers(results: dict[str, Any]) -> list[float]:
    """Every number ``results.json`` holds."""
    found: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            found.extend((float(value), abs(float(value))))  # a chart may draw |SMD|
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(results)
    return found


def unexplained(shown: list[str], released: list[float]) -> list[str]:
    """The numbers of ``shown`` that no released number renders as (at the digits shown:
    ``1,234`` is 1234, ``0.83`` any released value that rounds to it)."""
    exact = set(released)
    missing = []
    for token in shown:
        text = token.replace(",", "")
        value = float(text)
        digits = len(text.split(".")[1]) if "." in text else 0
        if value in exact:
            continue
        step = 0.5 * 10**-digits
        if digits and any(abs(v - value) <= step + 1e-12 for v in released):
            continue
        if not digits and any(not v.is_integer() and abs(v - value) <= 0.5 for v in released):
            continue
        missing.append(token)
    return missing


def chart_numbers(chart: dict[str, Any]) -> list[float]:
    """The numbers a chart's traces draw (x, y, and the at-risk and bar values). A trace of
    shares (``meta.derived``) gives its counts; its shares are checked against them."""
    found: list[float] = []
    for trace in chart.get("data", []):
        keys: tuple[str, ...] = ("x", "y", "values", "customdata", "base")
        if (trace.get("meta") or {}).get("derived") == "share":
            counts = trace["customdata"]
            total = sum(c for c in counts if c is not None)
            for c, y in zip(counts, trace["y"], strict=True):
                assert (c is None and y is None) or abs(y - c / total) < 1e-12
            keys = ("customdata",)
        for key in keys:
            for v in trace.get(key) or []:
                for item in v if isinstance(v, list) else [v]:
                    if isinstance(item, int | float) and not isinstance(item, bool):
                        found.append(float(item))
        err = trace.get("error_x") or {}
        for key in ("array", "arrayminus"):
            found += [float(v) for v in err.get(key) or [] if isinstance(v, int | float)]
    return found
