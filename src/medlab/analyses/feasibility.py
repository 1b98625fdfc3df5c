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


@dataclass(frozen=True)
class FunnelStep:
    """Persons after a criterion (in order) and passing it on its own."""

    criterion: str
    persons: int
    independent_persons: int


@dataclass(frozen=True)
class SiteFeasibility:
    """What leaves one node."""

    site: str
    funnel: list[FunnelStep]
    eligible: int
    by_year: dict[int, int]


@dataclass(frozen=True)
class Feasibility:
    """The combined view: funnel and years in total, and sites ranked by eligible persons."""

    funnel: list[FunnelStep]
    eligible: int
    by_year: dict[int, int]
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


def combine(sites: list[SiteFeasibility]) -> Feasibility:
    """Totals across sites (persons belong to one site, so they add up)."""
    if not sites:
        return Feasibility([], 0, {}, [])
    names = [step.criterion for step in sites[0].funnel]
    funnel = [
        FunnelStep(
            name,
            sum(s.funnel[i].persons for s in sites),
            sum(s.funnel[i].independent_persons for s in sites),
        )
        for i, name in enumerate(names)
    ]
    by_year: dict[int, int] = {}
    for s in sites:
        for year, n in s.by_year.items():
            by_year[year] = by_year.get(year, 0) + n
    ranked = sorted(sites, key=lambda s: (-s.eligible, s.site))
    return Feasibility(
        funnel, sum(s.eligible for s in sites), dict(sorted(by_year.items())), ranked
    )
