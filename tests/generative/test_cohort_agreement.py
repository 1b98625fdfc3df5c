"""Random patients and random cohort definitions: the SQL engine and the reference agree."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from tests.generative.reference import evaluate
from tests.spec.conftest import cohort_rows
from tests.spec.definitions import CONCEPT_SETS
from tests.spec.world import World

BASE = dt.date(2000, 1, 1)
days = st.integers(min_value=0, max_value=3000)


def _date(offset: int) -> str:
    return (BASE + dt.timedelta(days=offset)).isoformat()


@st.composite
def worlds(draw: st.DrawFn) -> World:
    w = World()
    for pid in range(1, draw(st.integers(1, 5)) + 1):
        start = draw(st.integers(0, 800))
        length = draw(st.integers(200, 2500))
        w.person(
            pid,
            yob=draw(st.integers(1940, 1995)),
            gender=draw(st.sampled_from([8507, 8532])),
            start=_date(start),
            end=_date(start + length),
        )
        # Mostly inside observation, sometimes just outside it, and close together so that
        # windows, gaps and limits matter.
        when = st.integers(start - 60, start + min(length, 900) + 60)
        visits = [
            w.visit(pid, draw(st.sampled_from([9201, 9202])), _date(draw(when)))
            for _ in range(draw(st.integers(0, 2)))
        ]
        visit = st.sampled_from([None, *visits])
        for _ in range(draw(st.integers(0, 6))):
            at = draw(when)
            end = draw(st.one_of(st.none(), st.integers(0, 60)))
            w.condition(
                pid,
                draw(st.sampled_from([100, 101, 102, 900])),
                _date(at),
                _date(at + end) if end is not None else None,
                visit=draw(visit),
            )
        for _ in range(draw(st.integers(0, 6))):
            w.drug(
                pid,
                draw(st.sampled_from([200, 201, 201, 210])),
                _date(draw(when)),
                days_supply=draw(st.sampled_from([1, 10, 30, 90])),
                visit=draw(visit),
            )
        for _ in range(draw(st.integers(0, 2))):
            w.measurement(pid, 300, _date(draw(when)), draw(st.integers(80, 220)), 8876)
    return w


def _range(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[str, Any]:
    op = draw(st.sampled_from(["lt", "lte", "eq", "gt", "gte", "bt", "nbt"]))
    low = draw(values)
    out = {"op": op, "value": low}
    if op in ("bt", "nbt"):
        out["extent"] = draw(values.filter(lambda v: v >= low))
    return out


def _sometimes(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(0, one_in - 1)) == 0


CRITERIA = [
    ("condition_occurrence", 0),
    ("condition_occurrence", 0),
    ("condition_occurrence", 2),
    ("condition_occurrence", 4),
    ("condition_occurrence", 5),
    ("drug_exposure", 1),
    ("drug_exposure", 1),
    ("measurement", 3),
]


@st.composite
def criteria(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    domain, codeset = draw(st.sampled_from(CRITERIA))
    c: dict[str, Any] = {
        "domain": domain,
        "codeset_id": codeset,
        "first_occurrence": _sometimes(draw, 4),
    }
    if _sometimes(draw, 5):
        c["age"] = _range(draw, st.integers(30, 70))
    if _sometimes(draw, 5):
        c["gender"] = [draw(st.sampled_from([8507, 8532]))]
    if _sometimes(draw, 5):
        c["start_date"] = _range(draw, days.map(lambda d: BASE + dt.timedelta(days=d)))
    if domain == "drug_exposure" and _sometimes(draw, 3):
        c["days_supply"] = _range(draw, st.sampled_from([1, 10, 30, 90]))
    if domain == "measurement" and _sometimes(draw, 2):
        c["value_as_number"] = _range(draw, st.integers(80, 220))
    if _sometimes(draw, 6):
        c["visit_type"] = [9201]
    if depth == 0 and _sometimes(draw, 6):
        c["correlated"] = draw(groups(depth + 1))
    return c


endpoint = st.fixed_dictionaries(
    {
        "days": st.one_of(st.none(), st.sampled_from([0, 1, 30, 365])),
        "coeff": st.sampled_from([-1, 1]),
    }
)
windows = st.fixed_dictionaries(
    {
        "start": endpoint,
        "end": endpoint,
        "use_index_end": st.booleans(),
        "use_event_end": st.booleans(),
    }
)


@st.composite
def groups(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    kind = draw(st.sampled_from(["ALL", "ANY", "AT_LEAST", "AT_MOST"]))
    g: dict[str, Any] = {"type": kind}
    if kind in ("AT_LEAST", "AT_MOST"):
        g["count"] = draw(st.integers(0, 2))
    g["criteria"] = [
        {
            "criterion": draw(criteria(depth + 1)),
            "start_window": draw(windows),
            "end_window": draw(st.one_of(st.none(), windows)),
            "restrict_visit": _sometimes(draw, 5),
            "ignore_observation_period": _sometimes(draw, 5),
            "occurrence": {
                "type": draw(st.sampled_from(["exactly", "at_least", "at_most"])),
                "count": draw(st.integers(0, 2)),
                "distinct": draw(st.sampled_from([None, "concept", "start_date", "visit"])),
            },
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    g["demographics"] = [
        {"age": _range(draw, st.integers(30, 70))}
        if draw(st.booleans())
        else {"gender": [draw(st.sampled_from([8507, 8532]))]}
        for _ in range(draw(st.integers(0, 1)))
    ]
    g["groups"] = [
        draw(groups(depth + 1)) for _ in range(draw(st.integers(0, 1 if depth < 1 else 0)))
    ]
    return g


limits = st.sampled_from(["first", "all", "last"])


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    end = draw(
        st.sampled_from(["observation_period_end", "date_offset", "date_offset", "drug_era"])
    )
    strategy: dict[str, Any] = {"type": end}
    if end == "date_offset":
        strategy |= {
            "field": draw(st.sampled_from(["start", "end"])),
            "offset": draw(st.sampled_from([0, 7, 30, 365])),
        }
    elif end == "drug_era":
        strategy |= {
            "codeset_id": 1,
            "gap_days": draw(st.sampled_from([0, 30])),
            "offset": draw(st.sampled_from([0, 7])),
            "days_supply_override": draw(st.sampled_from([None, 5])),
        }
    window: dict[str, Any] = {}
    if _sometimes(draw, 4):
        window["start"] = _date(draw(days))
    if _sometimes(draw, 4):
        window["end"] = _date(draw(days))
    return {
        "concept_sets": CONCEPT_SETS,
        "primary": {
            "criteria": draw(st.lists(criteria(), min_size=1, max_size=2)),
            "prior_days": draw(st.sampled_from([0, 0, 30, 365])),
            "post_days": draw(st.sampled_from([0, 30])),
            "limit": draw(limits),
        },
        "additional": draw(groups()) if _sometimes(draw, 4) else None,
        "qualified_limit": draw(limits),
        "inclusion_rules": [
            {"name": f"rule {i}", "expression": draw(groups())}
            for i in range(draw(st.sampled_from([0, 0, 1, 2])))
        ],
        "expression_limit": draw(limits),
        "end_strategy": strategy,
        "censoring": [draw(criteria())] if _sometimes(draw, 3) else [],
        "era_pad_days": draw(st.sampled_from([0, 30])),
        "censor_window": window,
    }


_runs = itertools.count()


@settings(max_examples=30, deadline=None)  # each example loads a store (about 0.5 s)
@given(world=worlds(), data=definitions())
def test_sql_engine_agrees_with_reference(tmp_path_factory, world: World, data: dict) -> None:  # type: ignore[no-untyped-def]
    definition = parse_definition(data)
    directory: Path = tmp_path_factory.mktemp(f"agree{next(_runs)}")
    store = world.store(directory)
    generate(store, definition, 1)
    assert cohort_rows(store) == evaluate(world, definition)
