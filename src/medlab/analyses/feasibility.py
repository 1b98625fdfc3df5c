"""Trial feasibility: how many patients pass each eligibility criterion, per site and in total.

Eligibility is a cohort definition whose inclusion rules are the criteria, in order. Local
step: generate the cohort on the node; return the funnel (persons left after each criterion),
each criterion's independent pass count, and eligible persons per index year. Combine step:
totals per criterion and year, and sites ranked by eligible persons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import CohortDefinition
from medlab.privacy.release import Cells, Constraint, Release, Released, Steps, require_released


@dataclass(frozen=True)
class FunnelStep:
    """Persons after a criterion (in order) and passing it on its own."""

    criterion: str
    persons: int | None  # None: suppressed by the release gate
    independent_persons: int | None


@dataclass(frozen=True)
class SiteFeasibility:
    """What leaves one node."""

    site: str
    funnel: list[FunnelStep]
    eligible: int | None
    by_year: dict[int, int | None]


@dataclass(frozen=True)
class Feasibility:
    """The combined view: funnel and years in total, and sites ranked by eligible persons."""

    funnel: list[FunnelStep]
    eligible: int | None
    by_year: dict[int, int | None]
    sites: list[SiteFeasibility]


def local(store: Path, site: str, eligibility: CohortDefinition, cohort_id: int) -> SiteFeasibility:
    """Generate the eligibility cohort on one node and count it."""
    result = generate(store, eligibility, cohort_id)
    with open_store(store, read_only=True) as con:
        years = con.execute(
            """SELECT year(first_start), count(*) FROM (
                   SELECT subject_id, min(cohort_start_date) AS first_start FROM results.cohort
                   WHERE cohort_definition_id = ? GROUP BY subject_id)
               GROUP BY 1 ORDER BY 1""",
            [cohort_id],
        ).fetchall()
    funnel = [FunnelStep(a.rule, a.persons, a.independent_persons) for a in result.attrition]
    return SiteFeasibility(site, funnel, result.persons, {int(y): int(n) for y, n in years})


def to_release(site: SiteFeasibility) -> Release:
    """The funnel as nested steps; each criterion alone against the entry population (its
    complement must be safe too); eligible persons per year, which add up to the eligible."""
    funnel = Steps(
        "funnel",
        tuple((step.criterion, {"persons": int(step.persons or 0)}) for step in site.funnel),
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
    )
    years = {"eligible": {"n": int(site.eligible or 0)}}
    years.update({str(y): {"n": int(n or 0)} for y, n in site.by_year.items()})
    by_year = Cells(
        "by_year",
        years,
        constraints=(Constraint("eligible", tuple(str(y) for y in site.by_year), ("n",)),)
        if site.by_year
        else (),
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
        {int(y): row["n"] for y, row in years.items() if y != "eligible"},
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
    years = sorted({year for s in sites for year in s.by_year})
    by_year = {year: _total([s.by_year.get(year, 0) for s in sites]) for year in years}
    ranked = sorted(sites, key=lambda s: (-(s.eligible or 0), s.site))
    return Feasibility(funnel, _total([s.eligible for s in sites]), by_year, ranked)


def _total(counts: list[int | None]) -> int | None:
    """The sum of the released counts; None when every node suppressed its count."""
    released = [n for n in counts if n is not None]
    return sum(released) if released else None
