"""Characterization of cohorts (in the spirit of OHDSI FeatureExtraction).

Local step: for one cohort on one node, the number of entries, and per covariate the count of
entries having it (binary covariates) or the sum and sum of squares of its value (continuous
ones). Combine step: sums across nodes, then proportions, means and standard deviations, which
equal those computed on the union of the nodes because only sums cross the boundary. For two
cohorts, the standardized mean difference per covariate.

Covariates: sex, age group and index year at cohort start; age and the Charlson comorbidity
index (continuous; see :mod:`medlab.analyses.charlson`); and, for each domain and window (days
relative to cohort start, both ends included), whether the entry has a record of each concept
in that window. The covariates are enumerated before any patient data is read: every sex,
every age group up to ``100+``, every year of the study's calendar (with ``before`` and
``after``), and every standard concept of the domain in the node's vocabulary (or the
concepts the settings name); a covariate nobody has is released as a zero, which the gate
withholds like any small count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from medlab.analyses import charlson
from medlab.analyses.scope import (
    SEX_LABELS,
    Calendar,
    Scope,
    age_group,
    age_groups,
    sex_label,
)
from medlab.errors import DefinitionError
from medlab.fields import ConceptId, Days
from medlab.privacy.release import (
    Cells,
    Constraint,
    Release,
    Released,
    Sums,
    require_released,
)

Domain = Literal[
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "drug_era",
    "condition_era",
]
_COLUMNS: dict[str, tuple[str, str]] = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
    "observation": ("observation_concept_id", "observation_date"),
    "drug_era": ("drug_concept_id", "drug_era_start_date"),
    "condition_era": ("condition_concept_id", "condition_era_start_date"),
}


_CHARLSON_ENTRIES = "(SELECT entry_id AS row, person_id, index_date FROM temp.medlab_entries)"

DEFAULT_DOMAINS: tuple[Domain, ...] = (
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
)


class Window(BaseModel):
    """Days relative to cohort start, both ends included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: Days
    end: Days

    @property
    def label(self) -> str:
        """``-365..-1``."""
        return f"{self.start}..{self.end}"


# Which vocabulary domain (and concept class) each covariate domain's concepts come from.
_VOCABULARY: dict[str, tuple[str, str | None]] = {
    "condition_occurrence": ("Condition", None),
    "condition_era": ("Condition", None),
    "drug_exposure": ("Drug", None),
    "drug_era": ("Drug", "Ingredient"),  # OMOP builds drug eras on ingredients
    "procedure_occurrence": ("Procedure", None),
    "measurement": ("Measurement", None),
    "observation": ("Observation", None),
}
MAX_COVARIATES = 50_000
_DEMOGRAPHIC = ("gender:", "age_group:", "index_year:")


class CharacterizationSettings(BaseModel):
    """Which covariates to build: per domain and window, every standard concept of the
    domain in the node's vocabulary, or only ``concepts`` when given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[Domain] = Field(default_factory=lambda: list(DEFAULT_DOMAINS))
    windows: Annotated[list[Window], Field(max_length=10)] = Field(
        default_factory=lambda: [Window(start=-365, end=-1), Window(start=-30, end=-1)]
    )
    age_group_years: Annotated[int, Field(ge=1, le=50)] = 5
    charlson: bool = True
    concepts: Annotated[list[ConceptId], Field(max_length=MAX_COVARIATES)] | None = None


@dataclass(frozen=True)
class CovariateSum:
    """One covariate's node-local sums (``total`` is a count for binary covariates) and the
    persons behind it (node-internal)."""

    covariate_id: str
    name: str
    kind: Literal["binary", "continuous"]
    total: int
    total_squares: int
    largest: tuple[int, ...] = ()  # the two largest values (continuous), for dominance
    persons: frozenset[int] = frozenset()


@dataclass(frozen=True)
class LocalCharacterization:
    """What the local step computed: the entry count and covariate sums, every covariate
    the settings and the vocabulary enumerate present (zero when nobody has it)."""

    entries: int
    covariates: list[CovariateSum]
    persons: frozenset[int] = frozenset()
    age_group_years: int = 5


@dataclass(frozen=True)
class Covariate:
    """A combined covariate: mean (a proportion for binary ones) and standard deviation."""

    covariate_id: str
    name: str
    kind: str
    count: int | None  # None (and mean, sd None): every node's release gate suppressed it
    mean: float | None
    sd: float | None
    suppressed_sites: int = 0


def enumerate_concepts(
    con: duckdb.DuckDBPyConnection, settings: CharacterizationSettings
) -> dict[str, list[tuple[int, str]]]:
    """Per domain, the concepts whose covariates the release lists (from the vocabulary, not
    from patient data): standard concepts of the domain, or ``settings.concepts``."""
    out: dict[str, list[tuple[int, str]]] = {}
    total = 0
    for domain in settings.domains:
        vocabulary_domain, concept_class = _VOCABULARY[domain]
        sql = (
            "SELECT concept_id, concept_name FROM concept WHERE domain_id = ? "
            "AND standard_concept = 'S' AND concept_id <> 0"
        )
        params: list[object] = [vocabulary_domain]
        if concept_class:
            sql += " AND concept_class_id = ?"
            params.append(concept_class)
        if settings.concepts is not None:
            sql += " AND list_contains(?, concept_id)"
            params.append(list(settings.concepts))
        rows = con.execute(sql + " ORDER BY concept_id", params).fetchall()
        out[domain] = [(int(c), str(n)) for c, n in rows]
        total += len(rows) * len(settings.windows)
    if total > MAX_COVARIATES:
        raise DefinitionError(
            f"characterization: {total:,} concept covariates from the vocabulary; a release "
            f"lists at most {MAX_COVARIATES:,}",
            hint="name the concepts to characterize in the analysis settings ('concepts')",
        )
    return out


def _demographics(
    con: duckdb.DuckDBPyConnection, settings: CharacterizationSettings, calendar: Calendar
) -> list[CovariateSum]:
    width = settings.age_group_years
    rows = con.execute(
        "SELECT person_id, age, gender_concept_id, year(index_date) FROM temp.medlab_entries"
    ).fetchall()
    names = dict(
        con.execute(
            "SELECT concept_id, concept_name FROM concept WHERE concept_id IN (8507, 8532)"
        ).fetchall()
    )
    found: dict[str, list[int]] = {}
    for person, age, gender, year in rows:
        for key in (
            f"gender:{sex_label(gender)}",
            f"age_group:{age_group(int(age), width)}",
            f"index_year:{calendar.label(int(year))}",
        ):
            found.setdefault(key, []).append(int(person))
    out = []
    sexes = {"male": names.get(8507, "MALE"), "female": names.get(8532, "FEMALE")}
    labels = [(f"gender:{s}", f"gender = {sexes.get(s, 'other or unknown')}") for s in SEX_LABELS]
    labels += [(f"age_group:{g}", f"age group {g}") for g in age_groups(width)]
    labels += [(f"index_year:{y}", f"index year {y}") for y in calendar.labels]
    for key, name in labels:
        entries = found.get(key, [])  # one person id per entry
        n = len(entries)
        out.append(CovariateSum(key, name, "binary", n, n, (), frozenset(entries)))
    return out


def local(
    con: duckdb.DuckDBPyConnection,
    cohort_id: int,
    settings: CharacterizationSettings | None = None,
    calendar: Calendar | None = None,
) -> LocalCharacterization:
    """Covariate sums of one cohort's entries on one node, for every covariate the settings
    and the vocabulary enumerate."""
    settings = settings or CharacterizationSettings()
    calendar = calendar or Calendar()
    concepts = enumerate_concepts(con, settings)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE medlab_entries AS
           SELECT ROW_NUMBER() OVER (ORDER BY c.subject_id, c.cohort_start_date) AS entry_id,
                  c.subject_id AS person_id, c.cohort_start_date AS index_date,
                  year(c.cohort_start_date) - p.year_of_birth AS age, p.gender_concept_id
           FROM results.cohort c JOIN person p ON p.person_id = c.subject_id
           WHERE c.cohort_definition_id = ?""",
        [cohort_id],
    )
    try:
        entries, persons = con.execute(
            "SELECT count(*), list(DISTINCT person_id) FROM temp.medlab_entries"
        ).fetchall()[0]
        everyone = frozenset(int(p) for p in persons or [])
        covariates: list[CovariateSum] = []
        age_sum, age_squares, age_top = con.execute(
            """SELECT coalesce(sum(age), 0), coalesce(sum(age * age), 0), max(age, 2)
               FROM temp.medlab_entries"""
        ).fetchall()[0]
        covariates.append(
            CovariateSum(
                "age",
                "age in years",
                "continuous",
                int(age_sum),
                int(age_squares),
                tuple(int(v) for v in age_top or ()),
                everyone,
            )
        )
        if settings.charlson:
            score_sum, score_squares, score_top = con.execute(
                f"""SELECT coalesce(sum(score), 0), coalesce(sum(score * score), 0),
                           max(score, 2)
                    FROM ({charlson.scores_sql(_CHARLSON_ENTRIES)})"""
            ).fetchall()[0]
            covariates.append(
                CovariateSum(
                    "charlson_index",
                    "Charlson comorbidity index (Romano adaptation)",
                    "continuous",
                    int(score_sum),
                    int(score_squares),
                    tuple(int(v) for v in score_top or ()),
                    everyone,
                )
            )
        covariates += _demographics(con, settings, calendar)
        for domain in settings.domains:
            concept, start = _COLUMNS[domain]
            for window in settings.windows:
                rows = con.execute(
                    f"""SELECT d.{concept}, count(DISTINCT e.entry_id), list(DISTINCT e.person_id)
                        FROM temp.medlab_entries e
                        JOIN {domain} d ON d.person_id = e.person_id
                         AND d.{start} BETWEEN e.index_date + CAST(? AS INTEGER)
                                           AND e.index_date + CAST(? AS INTEGER)
                        WHERE d.{concept} <> 0
                        GROUP BY d.{concept}""",
                    [window.start, window.end],
                ).fetchall()
                found = {int(c): (int(n), frozenset(int(p) for p in ps)) for c, n, ps in rows}
                for concept_id, name in concepts[domain]:
                    n, who = found.get(concept_id, (0, frozenset()))
                    covariates.append(
                        CovariateSum(
                            f"{domain}:{window.label}:{concept_id}",
                            f"{domain} {window.label}: {name}",
                            "binary",
                            n,
                            n,
                            (),
                            who,
                        )
                    )
    finally:
        con.execute("DROP TABLE IF EXISTS temp.medlab_entries")
    covariates.sort(key=lambda c: c.covariate_id)
    return LocalCharacterization(int(entries), covariates, everyone, settings.age_group_years)


def to_release(local: LocalCharacterization, site: str, cohort_id: int, scope: Scope) -> Release:
    """The entry count and binary covariates as one table (sex, age group and index year add up
    to the entries; each covariate's complement must be safe too), and one sum per continuous
    covariate."""
    binary = [c for c in local.covariates if c.kind == "binary"]
    counts = {"entries": {"n": local.entries}}
    counts.update({c.covariate_id: {"n": c.total} for c in binary})
    margins = tuple(
        Constraint("entries", parts, ("n",))
        for prefix in _DEMOGRAPHIC
        if (parts := tuple(c.covariate_id for c in binary if c.covariate_id.startswith(prefix)))
    )
    cohort = scope.cohort(cohort_id, local.persons)
    populations = {"entries": cohort}
    populations.update(
        {
            c.covariate_id: scope.derived(
                "characterization",
                (cohort_id,),
                local.age_group_years,
                c.covariate_id,
                persons=c.persons,
            )
            for c in binary
        }
    )
    # For differential privacy: with one entry per person, a person is in the entries row,
    # one row of each demographic and at most every concept row; ages are at most 150 and
    # Charlson scores at most 33 (every category's weight).
    one_each = scope.entries_per_person.get(cohort_id) == 1
    top = {"age": 150.0, "charlson_index": float(sum(c.weight for c in charlson.CATEGORIES))}
    sums = tuple(
        Sums(
            f"sum:{c.covariate_id}",
            local.entries,
            {"sum": float(c.total), "sum_squares": float(c.total_squares)},
            largest=tuple(float(v) for v in c.largest),
            magnitude=float(c.total),  # ages and Charlson scores are not negative
            population=cohort,
            bounds=(
                {"sum": top[c.covariate_id], "sum_squares": top[c.covariate_id] ** 2}
                if one_each
                else {}
            ),
            value_range=(0.0, top[c.covariate_id]),
        )
        for c in local.covariates
        if c.kind == "continuous"
    )
    concept_rows = sum(1 for c in binary if not c.covariate_id.startswith(_DEMOGRAPHIC))
    cells = Cells(
        "covariates",
        counts,
        constraints=margins,
        complements={c.covariate_id: "entries" for c in binary},
        populations=populations,
        sensitivity={"n": 4.0 + concept_rows} if one_each else {},
    )
    labels = {
        "cohort": cohort_id,
        "names": {c.covariate_id: c.name for c in local.covariates},
        "continuous": [c.covariate_id for c in local.covariates if c.kind == "continuous"],
    }
    return Release("characterization", site, (cells, *sums), labels)


def combine(parts: list[Released]) -> tuple[int, list[Covariate]]:
    """Entries and covariates pooled from the released sums of the nodes. A covariate a node
    suppressed counts only the nodes that released it (``suppressed_sites``)."""
    require_released(parts)
    entries = sum(p.values["covariates"]["entries"]["n"] or 0 for p in parts)
    names: dict[str, str] = {}
    binary: dict[str, list[int]] = {}
    continuous: dict[str, list[float]] = {}
    for part in parts:
        names.update(part.labels["names"])
        for key, row in part.values["covariates"].items():
            if key == "entries":
                continue
            cell = binary.setdefault(key, [0, 0])
            if row["n"] is None:
                cell[1] += 1
            else:
                cell[0] += row["n"]
        for key in part.labels["continuous"]:
            released = part.values[f"sum:{key}"]
            cell_c = continuous.setdefault(key, [0, 0.0, 0.0, 0])
            if released["n"] is None:
                cell_c[3] += 1
            else:
                # The node released the count, mean and SD; their sums follow from them.
                n, mean, sd = released["n"], released["mean"], released["sd"]
                cell_c[0] += n
                cell_c[1] += n * mean
                cell_c[2] += (n - 1) * sd * sd + n * mean * mean
    result = []
    for key, (count, suppressed) in binary.items():
        if suppressed == len(parts):
            result.append(Covariate(key, names[key], "binary", None, None, None, suppressed))
            continue
        mean = count / entries if entries else float("nan")
        sd = math.sqrt(mean * (1 - mean)) if entries else float("nan")
        result.append(Covariate(key, names[key], "binary", count, mean, sd, suppressed))
    for key, (n, total, squares, missing) in continuous.items():
        if missing == len(parts):
            result.append(Covariate(key, names[key], "continuous", None, None, None, int(missing)))
            continue
        size = int(n)
        mean = total / size if size else float("nan")
        variance = (squares - size * mean * mean) / (size - 1) if size > 1 else 0.0
        sd = math.sqrt(max(variance, 0.0))
        result.append(Covariate(key, names[key], "continuous", size, mean, sd, int(missing)))
    result.sort(key=lambda c: c.covariate_id)
    return entries, result


def standardized_differences(
    target: list[Covariate], comparator: list[Covariate]
) -> dict[str, float]:
    """(mean_t - mean_c) / sqrt((sd_t^2 + sd_c^2) / 2) per covariate; absent means 0 (no
    entry has it); a covariate the release gate suppressed in either cohort has none."""
    t = {c.covariate_id: c for c in target}
    c = {c.covariate_id: c for c in comparator}
    out = {}
    for key in sorted(set(t) | set(c)):
        mt, st = (t[key].mean, t[key].sd) if key in t else (0.0, 0.0)
        mc, sc = (c[key].mean, c[key].sd) if key in c else (0.0, 0.0)
        if mt is None or mc is None or st is None or sc is None:
            continue
        pooled = math.sqrt((st * st + sc * sc) / 2)
        out[key] = (mt - mc) / pooled if pooled > 0 else 0.0
    return out
