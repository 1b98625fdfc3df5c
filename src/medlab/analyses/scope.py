"""What fixes the shape and the populations of an analysis's release at one node.

A :class:`Scope` carries, for one study at one node, the things a local step may use to
enumerate its release and to name its populations, and nothing read from patient data: the
data snapshot's fingerprint, the digest of each cohort's definition, and the calendar the
study's yearly rows span. Population keys built from it are the same wherever the same
definition meets the same data (:func:`medlab.privacy.release.population_key`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medlab.privacy.release import Population, population_key


class Calendar(BaseModel):
    """The calendar years a study's yearly rows enumerate; earlier and later years are
    counted in one row each (``before`` and ``after``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_year: Annotated[int, Field(ge=1800, le=2200)] = 1950
    last_year: Annotated[int, Field(ge=1800, le=2200)] = 2030

    @model_validator(mode="after")
    def _ordered(self) -> Calendar:
        if self.first_year > self.last_year:
            raise ValueError("first_year must not be after last_year")
        return self

    @property
    def labels(self) -> list[str]:
        """Every yearly row, in order: ``before``, each year, ``after``."""
        years = [str(y) for y in range(self.first_year, self.last_year + 1)]
        return ["before", *years, "after"]

    def label(self, year: int) -> str:
        """The row a calendar year falls in."""
        if year < self.first_year:
            return "before"
        if year > self.last_year:
            return "after"
        return str(year)


SEXES = {8507: "male", 8532: "female"}
SEX_LABELS = ("male", "female", "other")
TOP_AGE = 100  # ages from here up share one group


def sex_label(gender_concept_id: int | None) -> str:
    """male, female or other (any other or missing gender concept)."""
    return SEXES.get(gender_concept_id or 0, "other")


def age_groups(width: int) -> list[str]:
    """Every age group: ``0-4`` … and the open top group ``100+``."""
    groups = [f"{low}-{min(low + width, TOP_AGE) - 1}" for low in range(0, TOP_AGE, width)]
    return [*groups, f"{TOP_AGE}+"]


def age_group(age: int, width: int) -> str:
    """The group an age falls in (ages below 0, which only bad data give, fall in the first)."""
    if age >= TOP_AGE:
        return f"{TOP_AGE}+"
    low = (max(age, 0) // width) * width
    high = min(low + width - 1, TOP_AGE - 1)
    return f"{low}-{high}"


@dataclass(frozen=True)
class Scope:
    """The snapshot, the cohorts' definition digests and the calendar of one study at one
    node."""

    snapshot: str
    cohorts: dict[int, str]
    calendar: Calendar = field(default_factory=Calendar)
    # Per cohort, the most entries one person can have by the definition (None: no bound).
    entries_per_person: dict[int, int | None] = field(default_factory=dict)

    def cohort(self, cohort_id: int, persons: frozenset[int]) -> Population:
        """A cohort's own persons, keyed by its definition on this snapshot: the same
        population whichever study or analysis names it, and whatever id it has there."""
        digest = self.cohorts[cohort_id]
        return Population(
            population_key(self.snapshot, "cohort", digest),
            persons,
            "cohort",
            (digest,),
            self.snapshot,
        )

    def derived(
        self, kind: str, roots: tuple[int, ...], *parts: Any, persons: frozenset[int]
    ) -> Population:
        """A population an analysis of ``kind`` derives from the cohorts ``roots``; ``parts``
        (settings, stratum, arm) say how."""
        family = tuple(sorted({self.cohorts[c] for c in roots}))
        key = population_key(self.snapshot, kind, family, *parts)
        return Population(key, persons, kind, family, self.snapshot)
