"""Treatment utilization: who is treated with what, by year, and in which order.

Drugs are named by the concepts asked for (ingredients or classes), and an exposure counts for
each of them it descends from (``concept_ancestor``). Local step, for a cohort on one node:
per calendar year, the persons in the cohort that year and, per drug, the persons starting an
exposure to it that year while in the cohort; and the treatment pathways, each person's drugs
in the order first started (first, second, third line), counted per path. Combine step: sums
of what the release gate let out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import duckdb

from medlab.analyses.scope import Calendar, Scope
from medlab.privacy.release import Cells, Population, Release, Released, require_released


@dataclass(frozen=True)
class Utilization:
    """Aggregates of one node, or of several combined. Years are the rows of the study's
    calendar (a year, ``before`` or ``after``); pathways are every order of up to
    ``max_lines`` distinct drugs."""

    persons_by_year: dict[str, int | None]
    treated_by_year: dict[tuple[str, int], int | None]  # (year, drug concept) -> persons
    pathways: dict[tuple[int, ...], int | None]  # drugs in order of first start -> persons
    names: dict[int, str]  # drug concept -> concept name (vocabulary, not patient data)
    members: dict[str, frozenset[int]] = field(default_factory=dict)  # node-internal

    def share(self, year: str, drug: int) -> float | None:
        """The share of the year's cohort persons who started the drug that year."""
        persons = self.persons_by_year.get(year)
        treated = self.treated_by_year.get((year, drug))
        if not persons or treated is None:
            return None
        return treated / persons


MAX_PATHWAYS = 20_000


def all_pathways(drugs: list[int], max_lines: int) -> list[tuple[int, ...]]:
    """Every pathway a release lists: each order of 1 to ``max_lines`` distinct drugs."""
    paths: list[tuple[int, ...]] = []
    for length in range(1, max_lines + 1):
        paths += list(itertools.permutations(drugs, length))
    return paths


def pathway_count(drugs: int, max_lines: int) -> int:
    """How many pathways :func:`all_pathways` lists, without listing them."""
    total, term = 0, 1
    for length in range(min(max_lines, drugs)):
        term *= drugs - length
        total += term
    return total


def local(
    con: duckdb.DuckDBPyConnection,
    cohort_id: int,
    drugs: list[int],
    max_lines: int = 3,
    calendar: Calendar | None = None,
) -> Utilization:
    """Utilization aggregates of cohort ``cohort_id`` for ``drugs`` on one node, with every
    calendar row, drug and pathway present."""
    if not drugs:
        raise ValueError("name at least one drug concept")
    calendar = calendar or Calendar()
    placeholders = ", ".join("?" for _ in drugs)
    years: dict[str, set[int]] = {label: set() for label in calendar.labels}
    for person, year in con.execute(
        """SELECT DISTINCT subject_id, unnest(range(year(cohort_start_date),
                                                    year(cohort_end_date) + 1))
           FROM results.cohort WHERE cohort_definition_id = ?""",
        [cohort_id],
    ).fetchall():
        years[calendar.label(int(year))].add(int(person))
    exposures = con.execute(
        f"""SELECT c.subject_id, a.ancestor_concept_id, d.drug_exposure_start_date
            FROM results.cohort c
            JOIN drug_exposure d ON d.person_id = c.subject_id
             AND d.drug_exposure_start_date BETWEEN c.cohort_start_date AND c.cohort_end_date
            JOIN concept_ancestor a ON a.descendant_concept_id = d.drug_concept_id
             AND a.ancestor_concept_id IN ({placeholders})
            WHERE c.cohort_definition_id = ?
            ORDER BY c.subject_id, d.drug_exposure_start_date, a.ancestor_concept_id""",
        [*drugs, cohort_id],
    ).fetchall()
    names = dict(
        con.execute(
            f"SELECT concept_id, concept_name FROM concept WHERE concept_id IN ({placeholders})",
            drugs,
        ).fetchall()
    )
    treated: dict[tuple[str, int], set[int]] = {
        (label, drug): set() for label in calendar.labels for drug in drugs
    }
    first_start: dict[int, dict[int, object]] = {}
    for person, drug, start in exposures:
        treated[(calendar.label(start.year), drug)].add(person)
        first_start.setdefault(person, {}).setdefault(drug, start)
    paths: dict[tuple[int, ...], set[int]] = {p: set() for p in all_pathways(drugs, max_lines)}
    for person, starts in first_start.items():
        ordered = sorted(starts, key=lambda d: (starts[d], d))
        paths[tuple(ordered[:max_lines])].add(person)
    members = {f"persons:{y}": frozenset(p) for y, p in years.items()}
    members.update({f"treated:{y}:{d}": frozenset(p) for (y, d), p in treated.items()})
    members.update({_path_key(path): frozenset(p) for path, p in paths.items()})
    return Utilization(
        {y: len(p) for y, p in years.items()},
        {key: len(p) for key, p in treated.items()},
        {path: len(p) for path, p in paths.items()},
        {d: str(names.get(d, d)) for d in drugs},
        members,
    )


def _path_key(path: tuple[int, ...]) -> str:
    return ">".join(str(d) for d in path)


def to_release(local_result: Utilization, site: str, scope: Scope, analysis: Any) -> Release:
    """Persons per year, treated persons per year and drug (whose complement, the untreated,
    must be safe too) and persons per pathway. ``analysis`` is the study's
    :class:`~medlab.studies.spec.UtilizationAnalysis`."""

    def population(row: str) -> Population:
        return scope.derived(
            "utilization",
            (analysis.cohort,),
            list(analysis.drugs),
            analysis.max_lines,
            row,
            persons=local_result.members.get(row, frozenset()),
        )

    counts = {f"persons:{y}": {"n": int(n or 0)} for y, n in local_result.persons_by_year.items()}
    counts.update(
        {
            f"treated:{y}:{d}": {"n": int(n or 0)}
            for (y, d), n in local_result.treated_by_year.items()
        }
    )
    # A person is in every calendar row her cohort time crosses, for each drug she starts.
    rows = len(scope.calendar.labels)
    yearly = Cells(
        "by_year",
        counts,
        complements={f"treated:{y}:{d}": f"persons:{y}" for y, d in local_result.treated_by_year},
        populations={row: population(row) for row in counts},
        sensitivity={"n": float(rows * (1 + len(analysis.drugs)))},
    )
    path_counts = {_path_key(p): {"n": int(n or 0)} for p, n in local_result.pathways.items()}
    pathways = Cells(
        "pathways",
        path_counts,
        populations={row: population(row) for row in path_counts},
        sensitivity={"n": 1.0},  # a person follows one pathway
    )
    labels = {"names": {str(d): name for d, name in local_result.names.items()}}
    return Release("utilization", site, (yearly, pathways), labels)


def combine(parts: list[Released]) -> Utilization:
    """Sum the released counts of the nodes (a person belongs to one node); a count every
    node withheld stays unknown (None)."""
    require_released(parts)
    years: dict[str, list[int]] = {}
    treated: dict[tuple[str, int], list[int]] = {}
    pathways: dict[tuple[int, ...], list[int]] = {}
    names: dict[int, str] = {}

    def add(table: dict[Any, list[int]], key: Any, n: int | None) -> None:
        cell = table.setdefault(key, [])
        if n is not None:
            cell.append(n)

    for part in parts:
        names.update({int(d): n for d, n in part.labels["names"].items()})
        for key, row in part.values["by_year"].items():
            kind, *rest = key.split(":")
            if kind == "persons":
                add(years, rest[0], row["n"])
            else:
                add(treated, (rest[0], int(rest[1])), row["n"])
        for key, row in part.values["pathways"].items():
            add(pathways, tuple(int(d) for d in key.split(">")), row["n"])

    def total(values: list[int]) -> int | None:
        return sum(values) if values else None

    ordered = sorted(pathways.items(), key=lambda kv: -(total(kv[1]) or 0))
    return Utilization(
        {y: total(v) for y, v in years.items()},
        {k: total(v) for k, v in treated.items()},
        {p: total(v) for p, v in ordered},
        names,
    )
