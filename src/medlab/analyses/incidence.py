"""Incidence rates: outcomes per 1,000 person-years in a time-at-risk window.

Local step (inside a node): per stratum, the persons, entries, person-days and outcomes of a
target cohort's time at risk. Combine step (anywhere): sums across nodes, then rates with exact
Poisson limits. Sums of node-local counts equal the counts on the union of the nodes, because a
person belongs to one node.

Time at risk starts at the target entry's start (or end) plus an offset and ends at its start
(or end) plus an offset, clipped to the observation period of the entry. Person-time counts
days, both ends included. Strata by age group and sex use the age at the start of time at
risk; strata by calendar year split each entry's time at risk (and its outcomes) across the
years it crosses, so the year strata add up to the overall person-time. Every stratum is
released, whether anyone is in it or not: overall, each age group up to ``100+``, each sex
(male, female, other), each row of the study's calendar (with ``before`` and ``after``), and
each age group by sex. With
``first_occurrence_only`` an entry with an earlier outcome is left out and time at risk stops
at the first outcome. Otherwise every outcome counts, except
those within ``clean_window`` days of the last counted one, and those days are not at risk.
``washout_days`` leaves out entries with an outcome in that many days before time at risk.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from medlab.analyses.poisson import rate_interval
from medlab.analyses.scope import SEX_LABELS, Calendar, Scope, age_group, age_groups, sex_label
from medlab.fields import Days, NonNegativeDays
from medlab.privacy.release import (
    Cells,
    Constraint,
    Release,
    Released,
    require_released,
)

DAYS_PER_YEAR = 365.25
GROUPINGS: tuple[tuple[str, ...], ...] = (
    (),
    ("age_group",),
    ("sex",),
    ("year",),
    ("age_group", "sex"),
)


class IncidenceSettings(BaseModel):
    """Time at risk, outcome counting and strata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tar_start_anchor: Literal["start", "end"] = "start"
    tar_start_offset: Days = 0
    tar_end_anchor: Literal["start", "end"] = "end"
    tar_end_offset: Days = 0
    first_occurrence_only: bool = True
    washout_days: NonNegativeDays | None = None
    clean_window: NonNegativeDays = 0
    age_group_years: Annotated[int, Field(ge=1, le=50)] = 10


@dataclass(frozen=True)
class StratumCount:
    """The local aggregate of one stratum (``grouping`` names its dimensions)."""

    grouping: str
    age_group: str | None
    sex: str | None
    year: str | None  # a calendar year, or ``before`` / ``after`` the study's calendar
    persons: int
    entries: int
    person_days: int
    outcomes: int
    members: frozenset[int] = frozenset()  # the persons (node-internal)


@dataclass(frozen=True)
class IncidenceRate:
    """A combined stratum with its rate per 1,000 person-years and exact 95% limits."""

    grouping: str
    age_group: str | None
    sex: str | None
    year: str | None
    persons: int | None  # None from here on: every node's release gate suppressed the stratum
    entries: int | None
    person_years: float | None
    outcomes: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    suppressed_sites: int = 0


@dataclass
class _Cell:
    persons: set[int] = field(default_factory=set)
    entries: int = 0
    days: int = 0
    events: int = 0

    def add(self, person: int, days: int, events: int) -> None:
        self.persons.add(person)
        self.entries += 1
        self.days += days
        self.events += events


Interval = tuple[dt.date, dt.date]


def _time_at_risk(
    tar_start: dt.date, tar_end: dt.date, outcomes: list[dt.date], s: IncidenceSettings
) -> tuple[list[Interval], list[dt.date]] | None:
    """The days at risk of one entry (disjoint intervals, both ends included) and the dates of
    its counted outcomes, or None when the entry is left out."""
    prior = [o for o in outcomes if o < tar_start]
    if s.first_occurrence_only and prior:
        return None
    if s.washout_days is not None and any(
        o >= tar_start - dt.timedelta(days=s.washout_days) for o in prior
    ):
        return None
    within = [o for o in outcomes if tar_start <= o <= tar_end]
    if s.first_occurrence_only:
        if within:
            return [(tar_start, within[0])], [within[0]]
        return [(tar_start, tar_end)], []
    counted: list[dt.date] = []
    intervals: list[Interval] = []
    at_risk_from = tar_start
    last: dt.date | None = None
    for o in sorted(outcomes):
        if o > tar_end:
            break
        if last is not None and (o - last).days <= s.clean_window:
            continue
        if o >= tar_start:
            counted.append(o)
        last = o
        # The clean window after a counted outcome is not time at risk.
        window_start = max(o + dt.timedelta(days=1), tar_start)
        window_end = min(o + dt.timedelta(days=s.clean_window), tar_end)
        if s.clean_window and window_end >= window_start:
            if window_start > at_risk_from:
                intervals.append((at_risk_from, window_start - dt.timedelta(days=1)))
            at_risk_from = window_end + dt.timedelta(days=1)
    if at_risk_from <= tar_end:
        intervals.append((at_risk_from, tar_end))
    return intervals, counted


def _by_year(intervals: list[Interval], events: list[dt.date]) -> dict[int, tuple[int, int]]:
    """Person-days and outcomes per calendar year the intervals cross."""
    out: dict[int, list[int]] = {}
    for first, last in intervals:
        for year in range(first.year, last.year + 1):
            lo = max(first, dt.date(year, 1, 1))
            hi = min(last, dt.date(year, 12, 31))
            out.setdefault(year, [0, 0])[0] += (hi - lo).days + 1
    for event in events:
        out.setdefault(event.year, [0, 0])[1] += 1
    return {year: (days, n) for year, (days, n) in out.items()}


def strata(settings: IncidenceSettings, calendar: Calendar) -> list[tuple[str, dict[str, str]]]:
    """Every stratum the release lists, in order: overall, each age group, sex and calendar
    row, and each age group by sex (fixed by the settings and the calendar, never by data)."""
    values = {
        "age_group": age_groups(settings.age_group_years),
        "sex": list(SEX_LABELS),
        "year": calendar.labels,
    }
    out = []
    for grouping in GROUPINGS:
        for combination in itertools.product(*(values[g] for g in grouping)):
            out.append(
                (",".join(grouping) or "overall", dict(zip(grouping, combination, strict=True)))
            )
    return out


def local(
    con: duckdb.DuckDBPyConnection,
    target_cohort_id: int,
    outcome_cohort_id: int,
    settings: IncidenceSettings | None = None,
    calendar: Calendar | None = None,
) -> list[StratumCount]:
    """Per-stratum counts of the target cohort's time at risk on one node, for every stratum
    :func:`strata` enumerates."""
    settings = settings or IncidenceSettings()
    calendar = calendar or Calendar()
    entries = con.execute(
        """SELECT c.subject_id, c.cohort_start_date, c.cohort_end_date, p.year_of_birth,
                  p.gender_concept_id, op.observation_period_end_date
           FROM results.cohort c
           JOIN person p ON p.person_id = c.subject_id
           LEFT JOIN observation_period op ON op.person_id = c.subject_id
            AND c.cohort_start_date BETWEEN op.observation_period_start_date
                                        AND op.observation_period_end_date
           WHERE c.cohort_definition_id = ?
           ORDER BY c.subject_id, c.cohort_start_date""",
        [target_cohort_id],
    ).fetchall()
    outcomes: dict[int, list[dt.date]] = defaultdict(list)
    for person, start in con.execute(
        """SELECT subject_id, cohort_start_date FROM results.cohort
           WHERE cohort_definition_id = ? ORDER BY subject_id, cohort_start_date""",
        [outcome_cohort_id],
    ).fetchall():
        outcomes[person].append(start)
    cells: dict[tuple[str, tuple[str, ...]], _Cell] = {}
    for person, start, end, year_of_birth, gender, op_end in entries:
        anchor_start = start if settings.tar_start_anchor == "start" else end
        anchor_end = start if settings.tar_end_anchor == "start" else end
        tar_start = anchor_start + dt.timedelta(days=settings.tar_start_offset)
        tar_end = anchor_end + dt.timedelta(days=settings.tar_end_offset)
        if op_end is not None:
            tar_end = min(tar_end, op_end)
        if tar_end < tar_start:
            continue
        counted = _time_at_risk(tar_start, tar_end, outcomes.get(person, []), settings)
        if counted is None:
            continue
        intervals, events = counted
        days = sum((last - first).days + 1 for first, last in intervals)
        values: dict[str, str] = {
            "age_group": age_group(tar_start.year - year_of_birth, settings.age_group_years),
            "sex": sex_label(gender),
        }
        by_row: dict[str, list[int]] = {}
        for year, (year_days, year_events) in _by_year(intervals, events).items():
            row = by_row.setdefault(calendar.label(year), [0, 0])
            row[0] += year_days
            row[1] += year_events
        for grouping in GROUPINGS:
            if "year" not in grouping:
                cell_key = (",".join(grouping) or "overall", tuple(values[g] for g in grouping))
                cells.setdefault(cell_key, _Cell()).add(person, days, len(events))
                continue
            for label, (year_days, year_events) in by_row.items():
                cells.setdefault(("year", (label,)), _Cell()).add(person, year_days, year_events)
    result = []
    for stratum, named in strata(settings, calendar):
        cell = cells.get((stratum, tuple(named.values())), _Cell())
        result.append(
            StratumCount(
                stratum,
                named.get("age_group"),
                named.get("sex"),
                named.get("year"),
                len(cell.persons),
                cell.entries,
                cell.days,
                cell.events,
                frozenset(cell.persons),
            )
        )
    return result


def _key(grouping: str, age: str | None, sex: str | None, year: str | None) -> str:
    return f"{grouping}|{age or ''}|{sex or ''}|{year or ''}"


# Which columns add up over each kind of margin: persons and entries do not add up over
# calendar years (time at risk is split across them), persons not over age groups (a person's
# entries can start at different ages).
_ADDITIVE = {
    "sex": ("persons", "entries", "outcomes", "person_days"),
    "age_group": ("entries", "outcomes", "person_days"),
    "year": ("outcomes", "person_days"),
}


def to_release(
    counts: list[StratumCount],
    site: str,
    scope: Scope,
    target: int,
    outcome: int,
    settings: IncidenceSettings,
) -> Release:
    """The strata as one table for the release gate, with every margin a reader could use."""
    rows = {_key(c.grouping, c.age_group, c.sex, c.year): c for c in counts}
    constraints = []
    overall = _key("overall", None, None, None)
    for dimension, columns in _ADDITIVE.items():
        one_way = [k for k, c in rows.items() if c.grouping == dimension]
        if overall in rows and one_way:
            constraints.append(Constraint(overall, tuple(one_way), columns))
    # Each age group is the sum of its age-by-sex cells (a person has one sex), and each sex
    # the sum of its age-by-sex cells over the age groups.
    for dimension, columns in (
        ("age_group", ("persons", "entries", "outcomes", "person_days")),
        ("sex", ("entries", "outcomes", "person_days")),
    ):
        for key in [k for k, c in rows.items() if c.grouping == dimension]:
            value = getattr(rows[key], dimension)
            parts = tuple(
                k
                for k, c in rows.items()
                if c.grouping == "age_group,sex" and getattr(c, dimension) == value
            )
            constraints.append(Constraint(key, parts, columns))
    settings_data = settings.model_dump(mode="json")
    cells = Cells(
        "strata",
        {
            k: {"persons": c.persons, "entries": c.entries, "outcomes": c.outcomes}
            for k, c in rows.items()
        },
        extras={k: {"person_days": float(c.person_days)} for k, c in rows.items()},
        constraints=tuple(constraints),
        populations={
            k: scope.derived("incidence", (target, outcome), settings_data, k, persons=c.members)
            for k, c in rows.items()
        },
        sensitivity=_sensitivity(scope, target, settings, len(scope.calendar.labels)),
    )
    labels = {
        "strata": {
            k: {"grouping": c.grouping, "age_group": c.age_group, "sex": c.sex, "year": c.year}
            for k, c in rows.items()
        }
    }
    return Release("incidence", site, (cells,), labels)


def _sensitivity(
    scope: Scope, target: int, settings: IncidenceSettings, years: int
) -> dict[str, float]:
    """How much one person moves each column over all strata, when the target cohort holds
    at most one entry per person (else no bound: unbounded entries, withheld under DP): one
    row of each of four groupings plus every calendar row her time at risk crosses; person-days
    only when time at risk is bounded (anchored on the start at both ends)."""
    if scope.entries_per_person.get(target) != 1:
        return {}
    out = {"persons": 4.0 + years, "entries": 4.0 + years, "outcomes": 5.0}
    if settings.tar_start_anchor == settings.tar_end_anchor == "start":
        tar = max(settings.tar_end_offset - settings.tar_start_offset + 1, 0)
        out["person_days"] = 5.0 * tar
    return out


def combine(parts: list[Released]) -> list[IncidenceRate]:
    """Sum the released strata across nodes and compute rates with exact Poisson limits. A
    stratum a node suppressed counts only the nodes that released it (``suppressed_sites``)."""
    require_released(parts)
    totals: dict[str, list[int]] = {}
    labels: dict[str, dict[str, Any]] = {}
    for part in parts:
        for key, row in part.values.get("strata", {}).items():
            labels[key] = part.labels["strata"][key]
            cell = totals.setdefault(key, [0, 0, 0, 0, 0])
            if row["persons"] is None:
                cell[4] += 1
                continue
            cell[0] += row["persons"]
            cell[1] += row["entries"]
            cell[2] += int(row["person_days"])
            cell[3] += row["outcomes"]
    rates = []
    for key, (persons, entries, days, events, suppressed) in totals.items():  # release order
        label = labels[key]
        stratum = (label["grouping"], label["age_group"], label["sex"], label["year"])
        if suppressed == len(parts):
            rates.append(IncidenceRate(*stratum, *(None,) * 7, suppressed))
            continue
        years = days / DAYS_PER_YEAR
        # No person-time, no rate (a stratum nobody is in is listed all the same).
        rate, low, high = rate_interval(events, years) if days > 0 else (None, None, None)
        rates.append(
            IncidenceRate(*stratum, persons, entries, years, events, rate, low, high, suppressed)
        )
    return rates
