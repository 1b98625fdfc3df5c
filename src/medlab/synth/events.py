"""Turn a simulated population chunk into OMOP CDM rows (as column arrays).

Each builder returns ``{column: array}`` for one CDM table; dates are days since 1970-01-01.
Visits come first, because conditions, measurements and procedures are recorded at them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from medlab.synth import profiles as P
from medlab.synth.population import NEVER, Population

Columns = dict[str, np.ndarray]


@dataclass
class IdSequence:
    """Running primary keys per table, carried across chunks of one site."""

    next_id: dict[str, int] = field(default_factory=dict)

    def take(self, table: str, n: int) -> np.ndarray:
        """``n`` fresh ids for ``table``."""
        start = self.next_id.get(table, 1)
        self.next_id[table] = start + n
        return np.arange(start, start + n, dtype=np.int64)


@dataclass
class Visits:
    """All visits of a chunk, with why each was made (for attaching records)."""

    person: np.ndarray
    start: np.ndarray
    end: np.ndarray
    concept: np.ndarray
    ids: np.ndarray
    routine: np.ndarray  # bool: a routine visit (not made for one planted event)
    event_ids: list[np.ndarray]  # visit ids of each planted event group, in event order


def _cat(parts: list[np.ndarray], dtype: type = np.int64) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _choose(rng: np.random.Generator, n: int, options: list[tuple[str, float]]) -> np.ndarray:
    """For each of ``n`` draws, the index of the chosen option, or -1 for none of them."""
    cuts = np.cumsum([share for _, share in options])
    u = rng.random(n)
    pick = np.searchsorted(cuts, u, side="right")
    return np.where(pick < len(options), pick, -1)


class ChunkBuilder:
    """Builds every CDM table for one chunk of one site."""

    def __init__(
        self,
        rng: np.random.Generator,
        pop: Population,
        person_ids: np.ndarray,
        site: P.SiteProfile,
        ids: IdSequence,
        codes: dict[int, str],
        care_sites: np.ndarray,
        providers: np.ndarray,
    ) -> None:
        self.rng = rng
        self.pop = pop
        self.person_ids = person_ids
        self.site = site
        self.ids = ids
        self.codes = codes
        self.care_sites = care_sites
        self.providers = providers
        self.tables: dict[str, list[Columns]] = {}
        # Planted clinical events that get a visit of their own: (person, day, kind, concept).
        self.events: list[tuple[np.ndarray, np.ndarray, str, int]] = []

    def source_values(self, concepts: np.ndarray) -> np.ndarray:
        """The source code recorded for each concept (its vocabulary code), per row."""
        unique, inverse = np.unique(concepts, return_inverse=True)
        codes = np.array([self.codes.get(int(c), str(c)) for c in unique], dtype=object)
        return codes[inverse]

    def add(self, table: str, columns: Columns) -> None:
        """Queue rows for ``table``."""
        self.tables.setdefault(table, []).append(columns)

    # -- persons ------------------------------------------------------------------------
    def persons(self, location_id: int) -> None:
        """PERSON, OBSERVATION_PERIOD and DEATH rows."""
        pop, n = self.pop, self.pop.n
        birth = pop.birth_day.astype("datetime64[D]")
        years = birth.astype("datetime64[Y]")
        months = birth.astype("datetime64[M]")
        self.add(
            "person",
            {
                "person_id": self.person_ids,
                "gender_concept_id": np.where(pop.female, P.GENDER_FEMALE, P.GENDER_MALE),
                "year_of_birth": years.astype(np.int64) + 1970,
                "month_of_birth": months.astype(np.int64) % 12 + 1,
                "day_of_birth": (birth - months).astype(np.int64) + 1,
                "birth_datetime": pop.birth_day,
                "race_concept_id": pop.race,
                "ethnicity_concept_id": np.where(pop.hispanic, P.HISPANIC, P.NOT_HISPANIC),
                "location_id": np.full(n, location_id),
                "care_site_id": self.care_sites[0] + np.zeros(n, dtype=np.int64),
                "gender_source_value": np.where(pop.female, "F", "M"),
            },
        )
        self.add(
            "observation_period",
            {
                "observation_period_id": self.ids.take("observation_period", n),
                "person_id": self.person_ids,
                "observation_period_start_date": pop.obs_start,
                "observation_period_end_date": pop.obs_end,
                "period_type_concept_id": np.full(n, P.TYPE_EHR),
            },
        )
        died = np.flatnonzero(pop.death_day != NEVER)
        self.add(
            "death",
            {
                "person_id": self.person_ids[died],
                "death_date": pop.death_day[died],
                "death_type_concept_id": np.full(len(died), P.TYPE_DEATH_CERTIFICATE),
            },
        )

    # -- planted events -----------------------------------------------------------------
    def collect_events(self) -> None:
        """Diagnoses, study starts and outcomes, each to be recorded at its own visit."""
        pop = self.pop
        for k, cond in enumerate(P.CONDITIONS):
            who = np.flatnonzero(pop.dx_day[:, k] != NEVER)
            self.events.append((who, pop.dx_day[who, k], "dx", cond.concept_id))
        for arm in pop.studies:
            self.events.append((arm.person, arm.index_day, "index", 0))
            hit = arm.outcome_day != NEVER
            self.events.append(
                (arm.person[hit], arm.outcome_day[hit], "outcome", arm.effect.outcome_concept_id)
            )
            for control, days in zip(arm.effect.negative_controls, arm.control_days, strict=True):
                hit = days != NEVER
                self.events.append((arm.person[hit], days[hit], "outcome", control.concept_id))
        for concept, day in pop.background.items():
            hit = np.flatnonzero(day != NEVER)
            self.events.append((hit, day[hit], "outcome", concept))
        hit = np.flatnonzero(pop.appendicitis_day != NEVER)
        self.events.append((hit, pop.appendicitis_day[hit], "appendicitis", P.APPENDICITIS))

    def visits(self) -> Visits:
        """Routine visits (Poisson over observed time) plus one visit per planted event."""
        pop, rng = self.pop, self.rng
        chronic = (pop.dx_day != NEVER).sum(axis=1)
        years = (pop.obs_end - pop.obs_start + 1) / P.DAYS_PER_YEAR
        counts = rng.poisson(self.site.visits_per_year * years * np.exp(0.12 * chronic))
        person = np.repeat(np.arange(pop.n), counts)
        span = (pop.obs_end - pop.obs_start + 1)[person]
        start = pop.obs_start[person] + np.floor(rng.random(len(person)) * span).astype(np.int64)
        kind = rng.choice(3, len(person), p=[0.86, 0.10, 0.04])
        concept = np.array([P.VISIT_OUTPATIENT, P.VISIT_ER, P.VISIT_INPATIENT])[kind]
        routine = np.ones(len(person), dtype=bool)
        persons, starts, concepts, routines = [person], [start], [concept], [routine]
        for who, day, what, _concept in self.events:
            if what in ("dx", "index"):
                visit = np.full(len(who), P.VISIT_OUTPATIENT)
            elif what == "appendicitis":
                visit = np.full(len(who), P.VISIT_INPATIENT)
            else:
                visit = np.where(rng.random(len(who)) < 0.6, P.VISIT_INPATIENT, P.VISIT_ER)
            persons.append(who)
            starts.append(day)
            concepts.append(visit)
            routines.append(np.zeros(len(who), dtype=bool))
        person, start = _cat(persons), _cat(starts)
        concept, routine = _cat(concepts), _cat(routines, bool)
        stay = np.where(concept == P.VISIT_INPATIENT, 1 + rng.poisson(3.0, len(person)), 0)
        end = np.minimum(start + stay, pop.obs_end[person])
        ids = self.ids.take("visit_occurrence", len(person))
        self.add(
            "visit_occurrence",
            {
                "visit_occurrence_id": ids,
                "person_id": self.person_ids[person],
                "visit_concept_id": concept,
                "visit_start_date": start,
                "visit_start_datetime": start,
                "visit_end_date": end,
                "visit_end_datetime": end,
                "visit_type_concept_id": np.full(len(person), P.TYPE_EHR),
                "care_site_id": np.where(
                    concept == P.VISIT_OUTPATIENT, self.care_sites[1], self.care_sites[0]
                ),
                "provider_id": self.providers[rng.integers(0, len(self.providers), len(person))],
                # 9201 inpatient, 9202 outpatient, 9203 emergency room.
                "visit_source_value": np.array(["IP", "OP", "ER"])[concept - P.VISIT_INPATIENT],
            },
        )
        sizes = np.cumsum([len(routines[0])] + [len(e[0]) for e in self.events])
        event_ids = [ids[a:b] for a, b in itertools.pairwise(sizes)]
        return Visits(person, start, end, concept, ids, routine, event_ids)

    # -- conditions ---------------------------------------------------------------------
    def _condition_rows(
        self,
        who: np.ndarray,
        day: np.ndarray,
        concept: np.ndarray,
        visit: np.ndarray,
        end: np.ndarray | None = None,
    ) -> None:
        n = len(who)
        source_value = self.source_values(concept)
        source_concept = concept.copy()
        for standard, (icd_code, icd_concept) in P.ICD10_SOURCE.items():
            # Most records of these conditions arrive coded in ICD-10-CM and mapped.
            coded = (concept == standard) & (self.rng.random(n) < 0.7)
            source_value[coded] = icd_code
            source_concept[coded] = icd_concept
        columns: Columns = {
            "condition_occurrence_id": self.ids.take("condition_occurrence", n),
            "person_id": self.person_ids[who],
            "condition_concept_id": concept,
            "condition_start_date": day,
            "condition_start_datetime": day,
            "condition_type_concept_id": np.full(n, P.TYPE_EHR),
            "visit_occurrence_id": visit,
            "condition_source_value": source_value,
            "condition_source_concept_id": source_concept,
        }
        if end is not None:
            columns["condition_end_date"] = end
        self.add("condition_occurrence", columns)

    def conditions(self, visits: Visits) -> np.ndarray:
        """Diagnoses, repeat records of chronic conditions, acute illnesses and outcomes.

        Returns, per routine visit, the acute condition recorded there (0 for none).
        """
        rng, pop = self.rng, self.pop
        for (who, day, what, concept), vids in zip(self.events, visits.event_ids):
            if what in ("dx", "outcome", "appendicitis"):
                self._condition_rows(who, day, np.full(len(who), concept), vids)
        routine = np.flatnonzero(visits.routine)
        r_person, r_day = visits.person[routine], visits.start[routine]
        for k, cond in enumerate(P.CONDITIONS):
            dx = pop.dx_day[r_person, k]
            keep = (dx != NEVER) & (dx < r_day) & (rng.random(len(routine)) < 0.35)
            self._condition_rows(
                r_person[keep],
                r_day[keep],
                np.full(keep.sum(), cond.concept_id),
                visits.ids[routine][keep],
            )
        options = [(str(c), share * 0.3) for c, _, share in P.ACUTE_CONDITIONS]
        pick = _choose(rng, len(routine), options)
        ill = pick >= 0
        concepts = np.array([c for c, _, _ in P.ACUTE_CONDITIONS])[pick[ill]]
        self._condition_rows(
            r_person[ill],
            r_day[ill],
            concepts,
            visits.ids[routine][ill],
            end=r_day[ill] + rng.integers(5, 15, ill.sum()),
        )
        acute = np.zeros(len(routine), dtype=np.int64)
        acute[ill] = concepts
        return acute
