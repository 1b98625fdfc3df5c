"""Treatment utilization: who is treated with what, by year, and in which order.

Drugs are named by the concepts asked for (ingredients or classes), and an exposure counts for
each of them it descends from (``concept_ancestor``). Local step, for a cohort on one node:
per calendar year, the persons in the cohort that year and, per drug, the persons starting an
exposure to it that year while in the cohort; and the treatment pathways, each person's drugs
in the order first started (first, second, third line), counted per path. Combine step: sums
of what the release gate let out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import duckdb

from medlab.privacy.release import Cells, Release, Released, require_released


@dataclass(frozen=True)
class Utilization:
    """Aggregates of one node, or of several combined."""

    persons_by_year: dict[int, int]
    treated_by_year: dict[tuple[int, int], int]  # (year, drug concept) -> persons
    pathways: dict[tuple[int, ...], int]  # drugs in order of first start -> persons
    names: dict[int, str]  # drug concept -> concept name (vocabulary, not patient data)

    def share(self, year: int, drug: int) -> float:
        """The share of the year's cohort persons who started the drug that year."""
        persons = self.persons_by_year.get(year, 0)
        return self.treated_by_year.get((year, drug), 0) / persons if persons else 0.0


def local(
    con: duckdb.DuckDBPyConnection, cohort_id: int, drugs: list[int], max_lines: int = 3
) -> Utilization:
    """Utilization aggregates of cohort ``cohort_id`` for ``drugs`` on one node."""
    if not drugs:
        raise ValueError("name at least one drug concept")
    placeholders = ", ".join("?" for _ in drugs)
    years = con.execute(
        """SELECT y, count(DISTINCT subject_id) FROM (
               SELECT subject_id, unnest(range(year(cohort_start_date),
                                               year(cohort_end_date) + 1)) AS y
               FROM results.cohort WHERE cohort_definition_id = ?)
           GROUP BY y""",
        [cohort_id],
    ).fetchall()
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
    treated: dict[tuple[int, int], set[int]] = {}
    first_start: dict[int, dict[int, object]] = {}
    for person, drug, start in exposures:
        treated.setdefault((start.year, drug), set()).add(person)
        first_start.setdefault(person, {}).setdefault(drug, start)
    pathways: Counter[tuple[int, ...]] = Counter()
    for starts in first_start.values():
        ordered = sorted(starts, key=lambda d: (starts[d], d))
        pathways[tuple(ordered[:max_lines])] += 1
    return Utilization(
        {int(y): int(n) for y, n in years},
        {key: len(people) for key, people in treated.items()},
        dict(pathways),
        {d: str(names.get(d, d)) for d in drugs},
    )


def _path_key(path: tuple[int, ...]) -> str:
    return ">".join(str(d) for d in path)


def to_release(local_result: Utilization, site: str) -> Release:
    """Persons per year, treated persons per year and drug (whose complement, the untreated,
    must be safe too) and persons per pathway."""
    counts = {f"persons:{y}": {"n": n} for y, n in local_result.persons_by_year.items()}
    counts.update(
        {f"treated:{y}:{d}": {"n": n} for (y, d), n in local_result.treated_by_year.items()}
    )
    yearly = Cells(
        "by_year",
        counts,
        complements={f"treated:{y}:{d}": f"persons:{y}" for y, d in local_result.treated_by_year},
    )
    pathways = Cells("pathways", {_path_key(p): {"n": n} for p, n in local_result.pathways.items()})
    labels = {"names": {str(d): name for d, name in local_result.names.items()}}
    return Release("utilization", site, (yearly, pathways), labels)


def combine(parts: list[Released]) -> Utilization:
    """Sum the released counts of the nodes (a person belongs to one node); suppressed cells
    add nothing."""
    require_released(parts)
    years: Counter[int] = Counter()
    treated: Counter[tuple[int, int]] = Counter()
    pathways: Counter[tuple[int, ...]] = Counter()
    names: dict[int, str] = {}
    for part in parts:
        names.update({int(d): n for d, n in part.labels["names"].items()})
        for key, row in part.values["by_year"].items():
            if row["n"] is None:
                continue
            kind, *rest = key.split(":")
            if kind == "persons":
                years[int(rest[0])] += row["n"]
            else:
                treated[(int(rest[0]), int(rest[1]))] += row["n"]
        for key, row in part.values["pathways"].items():
            if row["n"] is not None:
                pathways[tuple(int(d) for d in key.split(">"))] += row["n"]
    return Utilization(
        dict(sorted(years.items())),
        dict(sorted(treated.items())),
        dict(pathways.most_common()),
        names,
    )
