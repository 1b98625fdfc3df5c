"""Trial feasibility: how many patients pass each eligibility criterion, per site and in total.

Eligibility is a cohort definition whose inclusion rules are the criteria, in order. Local
step: generate the cohort on the node; return the funnel (persons left after each criterion),
each criterion's independent pass count, and eligible persons per index year. Combine step:
totals per criterion and year, and sites ranked by eligible persons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medlab.analyses.scope import Calendar, Scope
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import CohortDefinition
from medlab.privacy.release import (
    Cells,
    Constraint,
    Population,
    Release,
    Released,
    Steps,
    require_released,
)


@dataclass(frozen=True)
class FunnelStep:
    """Persons after a criterion (in order) and passing it on its own."""

    criterion: str
    persons: int | None  # None: suppressed by the release gate
    independent_persons: int | None


@dataclass(frozen=True)
class SiteFeasibility:
    """What one node computed (the persons, node-internal, only before the gate)."""

    site: str
    funnel: list[FunnelStep]
    eligible: int | None
    by_year: dict[str, int | None]
    step_persons: list[frozenset[int]] = field(default_factory=list)
    alone_persons: list[frozenset[int]] = field(default_factory=list)
    year_persons: dict[str, frozenset[int]] = field(default_factory=dict)
    eligible_persons: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Feasibility:
    """The combined view: funnel and years in total, and sites ranked by eligible persons."""

    funnel: list[FunnelStep]
    eligible: int | None
    by_year: dict[str, int | None]
    sites: list[SiteFeasibility]


def local(
    store: Path,
    site: str,
    eligibility: CohortDefinition,
    cohort_id: int,
    calendar: Calendar | None = None,
) -> SiteFeasibility:
    """Generate the eligibility cohort on one node and count it: eligible persons by the
    year of their first entry, for every row of the study's calendar."""
    calendar = calendar or Calendar()
    result = generate(store, eligibility, cohort_id, with_persons=True)
    with open_store(store, read_only=True) as con:
        firsts = con.execute(
            """SELECT subject_id, year(min(cohort_start_date)) FROM results.cohort
               WHERE cohort_definition_id = ? GROUP BY subject_id""",
            [cohort_id],
        ).fetchall()
    years: dict[str, set[int]] = {label: set() for label in calendar.labels}
    for person, year in firsts:
        years[calendar.label(int(year))].add(int(person))
    funnel = [FunnelStep(a.rule, a.persons, a.independent_persons) for a in result.attrition]
    return SiteFeasibility(
        site,
        funnel,
        result.persons,
        {label: len(p) for label, p in years.items()},
        result.rule_persons,
        result.alone_persons,
        {label: frozenset(p) for label, p in years.items()},
        result.members,
    )


def to_release(site: SiteFeasibility, scope: Scope, cohort_id: int) -> Release:
    """The funnel as nested steps; each criterion alone against the entry population (its
    complement must be safe too); eligible persons per calendar row, which add up to the
    eligible."""

    def population(*parts: object, persons: frozenset[int]) -> Population:
        return scope.derived("feasibility", (cohort_id,), *parts, persons=persons)

    funnel = Steps(
        "funnel",
        tuple((step.criterion, {"persons": int(step.persons or 0)}) for step in site.funnel),
        tuple(
            {"persons": population("step", i, persons=site.step_persons[i])}
            for i in range(len(site.step_persons))
        ),
    )
    # The local step's counts are never None; None appears only after the gate.
    independent = {"all": {"n": int(site.funnel[0].persons or 0)}} if site.funnel else {}
    independent.update(
        {
            f"{i}": {"n": int(step.independent_persons or 0)}
            for i, step in enumerate(site.funnel)
            if i
        }
    )
    alone = Cells(
        "independent",
        independent,
        complements={k: "all" for k in independent if k != "all"},
        populations={
            ("all" if i == 0 else str(i)): population("step" if i == 0 else "alone", i, persons=p)
            for i, p in enumerate(site.alone_persons)
        },
        # A person is in the entry population and in each criterion she passes.
        sensitivity={"n": float(len(independent))},
    )
    years = {"eligible": {"n": int(site.eligible or 0)}}
    years.update({label: {"n": int(n or 0)} for label, n in site.by_year.items()})
    members = {"eligible": scope.cohort(cohort_id, site.eligible_persons)}
    members.update(
        {label: population("year", label, persons=p) for label, p in site.year_persons.items()}
    )
    by_year = Cells(
        "by_year",
        years,
        constraints=(Constraint("eligible", tuple(site.by_year), ("n",)),),
        populations=members,
        sensitivity={"n": 2.0},  # the eligible total and the year of her first entry
    )
    return Release("feasibility", site.site, (funnel, alone, by_year))


def _site(part: Released) -> SiteFeasibility:
    alone = part.values["independent"]
    funnel = [
        FunnelStep(
            step["step"],
            step["persons"],
            (alone.get("all") if i == 0 else alone.get(str(i), {})).get("n"),
        )
        for i, step in enumerate(part.values["funnel"])
    ]
    years = part.values["by_year"]
    return SiteFeasibility(
        part.site,
        funnel,
        years["eligible"]["n"],
        {y: row["n"] for y, row in years.items() if y != "eligible"},
    )


def combine(parts: list[Released]) -> Feasibility:
    """Totals across sites of the released counts (persons belong to one site, so they add
    up; a suppressed count adds nothing), and sites ranked by released eligible persons."""
    require_released(parts)
    sites = [_site(p) for p in parts]
    if not sites:
        return Feasibility([], None, {}, [])
    names = [step.criterion for step in sites[0].funnel]
    funnel = [
        FunnelStep(
            name,
            _total([s.funnel[i].persons for s in sites]),
            _total([s.funnel[i].independent_persons for s in sites]),
        )
        for i, name in enumerate(names)
    ]
    years = list(dict.fromkeys(year for s in sites for year in s.by_year))  # calendar order
    by_year = {year: _total([s.by_year.get(year, 0) for s in sites]) for year in years}
    ranked = sorted(sites, key=lambda s: (-(s.eligible or 0), s.site))
    return Feasibility(funnel, _total([s.eligible for s in sites]), by_year, ranked)


def _total(counts: list[int | None]) -> int | None:
    """The sum of the released counts; None when every node suppressed its count."""
    released = [n for n in counts if n is not None]
    return sum(released) if released else None
