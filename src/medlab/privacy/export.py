"""Record-level export: off unless the steward's policy allows it, and k-anonymous when on.

The only record-level output medlab has is a person table with generalized quasi-identifiers:
the person's pseudonym, a five-year age band, sex and the three-digit ZIP area. Before any
row is written, the k-anonymity check groups persons by (age band, sex, ZIP area) and refuses
the export when any group holds fewer than k persons (k is the policy's minimum cell count),
saying how many groups and persons are too small, never which.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import duckdb

from medlab.cdm.store import open_store
from medlab.errors import PolicyError
from medlab.privacy.policy import ReleasePolicy

QUASI_IDENTIFIERS = ("age_band", "sex", "zip3")

_ROWS = """
    WITH as_of AS (SELECT coalesce(max(year(observation_period_end_date)), year(current_date))
                   AS y FROM observation_period)
    SELECT p.person_id,
           CAST(((as_of.y - p.year_of_birth) // 5) * 5 AS VARCHAR) || '-'
             || CAST(((as_of.y - p.year_of_birth) // 5) * 5 + 4 AS VARCHAR) AS age_band,
           CASE p.gender_concept_id WHEN 8507 THEN 'male' WHEN 8532 THEN 'female'
                ELSE 'other' END AS sex,
           coalesce(left(l.zip, 3), 'unknown') AS zip3
    FROM person p CROSS JOIN as_of LEFT JOIN location l ON l.location_id = p.location_id
    ORDER BY p.person_id"""


@dataclass(frozen=True)
class KAnonymity:
    """The outcome of the check: groups and persons below k."""

    k: int
    groups: int
    small_groups: int
    persons_in_small_groups: int

    @property
    def passed(self) -> bool:
        """Whether every group holds at least k persons."""
        return self.small_groups == 0


def check(con: duckdb.DuckDBPyConnection, k: int) -> KAnonymity:
    """Group the exportable rows by their quasi-identifiers and count groups below k."""
    groups, small, persons = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE n < ?), coalesce(sum(n) FILTER (WHERE n < ?), 0)
            FROM (SELECT count(*) AS n FROM ({_ROWS}) GROUP BY {", ".join(QUASI_IDENTIFIERS)})""",
        [k, k],
    ).fetchall()[0]
    return KAnonymity(k, int(groups), int(small), int(persons))


def export_persons(store: Path, out: Path, policy: ReleasePolicy) -> KAnonymity:
    """Write the generalized person table to ``out`` (CSV) if the policy and k-anonymity
    allow it; otherwise raise :class:`PolicyError` and write nothing."""
    if not policy.record_level_export:
        raise PolicyError(
            "record-level export is off in this node's release policy",
            hint="the steward enables it with record_level_export: true",
        )
    with open_store(store, read_only=True) as con:
        result = check(con, policy.min_cell_count)
        if not result.passed:
            raise PolicyError(
                f"export refused: {result.small_groups} of {result.groups} groups of "
                f"(age band, sex, ZIP area) hold fewer than {result.k} persons "
                f"({result.persons_in_small_groups} persons); nothing was written"
            )
        rows = con.execute(_ROWS).fetchall()
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["person_id", *QUASI_IDENTIFIERS])
        writer.writerows(rows)
    return result
