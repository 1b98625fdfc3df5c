"""The data quality checks, each a violation predicate over one SQL source.

Check kinds and default thresholds follow OHDSI's DataQualityDashboard (Blacketer et al.,
JAMIA 2021): conformance (does the data follow the CDM's rules), completeness (is what should
be there present) and plausibility (is it believable). A check's threshold is the percentage
of its denominator allowed to violate it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from medlab.cdm import schema
from medlab.cdm.dq import reference as ref


@dataclass(frozen=True)
class Check:
    """One data quality check: rows of ``source`` for which ``violated`` holds are violations."""

    kind: str
    category: str
    table: str
    field: str | None
    description: str
    threshold: float
    source: str
    violated: str
    counted: str = "TRUE"

    @property
    def name(self) -> str:
        """A unique, readable name: ``kind:table.field`` or ``kind:table``."""
        where = self.table if self.field is None else f"{self.table}.{self.field}"
        return f"{self.kind}:{where}"


def _t(name: str) -> str:
    return schema.table(name).qualified


_BIRTH = (
    "coalesce(CAST(p.birth_datetime AS DATE), CASE WHEN p.year_of_birth BETWEEN 1 AND 9999 "
    "THEN make_date(p.year_of_birth, 1, 1) END)"
)


def _conformance() -> Iterator[Check]:
    for table in schema.cdm_tables():
        if table.primary_key:
            keys = ", ".join(f'"{k}"' for k in table.primary_key)
            yield Check(
                "is_primary_key",
                "conformance",
                table.name,
                ", ".join(table.primary_key),
                "primary key values are unique",
                0.0,
                f"(SELECT count(*) OVER (PARTITION BY {keys}) AS n FROM {table.qualified})",
                "n > 1",
            )
        for col in table.columns:
            if col.required:
                yield Check(
                    "is_required",
                    "conformance",
                    table.name,
                    col.name,
                    "a required field has a value",
                    0.0,
                    table.qualified,
                    f'"{col.name}" IS NULL',
                )
    for fk in schema.foreign_keys():
        yield Check(
            "is_foreign_key",
            "conformance",
            fk.table,
            fk.column,
            f"the value refers to an existing {fk.ref_table}",
            0.0,
            f"""{_t(fk.table)} s LEFT JOIN (SELECT DISTINCT "{fk.ref_column}" AS k
                FROM {_t(fk.ref_table)}) r ON s."{fk.column}" = r.k""",
            "r.k IS NULL",
            schema.reference_present(f's."{fk.column}"', fk.column),
        )
    for table in schema.cdm_tables():
        if table.part == "vocabulary":
            continue
        for col in table.columns:
            if not col.is_concept:
                continue
            yield Check(
                "concept_exists",
                "conformance",
                table.name,
                col.name,
                "a non-zero concept id exists in CONCEPT",
                0.0,
                f"""{table.qualified} s LEFT JOIN (SELECT concept_id FROM {_t("concept")}) c
                    ON s."{col.name}" = c.concept_id""",
                "c.concept_id IS NULL",
                f's."{col.name}" IS NOT NULL AND s."{col.name}" <> 0',
            )
    for (tname, field), domain in ref_domains():
        join = f"""{_t(tname)} s JOIN {_t("concept")} c ON s."{field}" = c.concept_id"""
        yield Check(
            "fk_domain",
            "conformance",
            tname,
            field,
            f"the concept belongs to the {domain} domain",
            0.0,
            join,
            f"c.domain_id <> '{domain}'",
            f's."{field}" <> 0',
        )
        if field != "unit_concept_id":
            yield Check(
                "is_standard_valid_concept",
                "conformance",
                tname,
                field,
                "the concept is a valid standard concept",
                0.0,
                join,
                "coalesce(c.standard_concept, '') <> 'S' OR c.invalid_reason IS NOT NULL",
                f's."{field}" <> 0',
            )
    yield Check(
        "cdm_source_row",
        "conformance",
        "cdm_source",
        None,
        "CDM_SOURCE describes the source in exactly one row",
        0.0,
        f"(SELECT count(*) AS n FROM {_t('cdm_source')})",
        "n <> 1",
    )
    for tname, (start, _) in ref.EVENT_DATES.items():
        dt_col = start.replace("_date", "_datetime")
        if dt_col in schema.table(tname).column_names:
            yield Check(
                "datetime_matches_date",
                "conformance",
                tname,
                dt_col,
                f"{dt_col} falls on {start}",
                0.0,
                _t(tname),
                f'CAST("{dt_col}" AS DATE) <> "{start}"',
                f'"{dt_col}" IS NOT NULL',
            )


def ref_domains() -> list[tuple[tuple[str, str], str]]:
    """The (table, field) → domain expectations, in a stable order."""
    return sorted(schema.EXPECTED_DOMAINS.items())


def _completeness() -> Iterator[Check]:
    for tname, threshold in ref.PERSON_COMPLETENESS_THRESHOLDS.items():
        yield Check(
            "measure_person_completeness",
            "completeness",
            tname,
            None,
            f"persons with at least one {tname} record",
            threshold,
            f"{_t('person')} p",
            f"NOT EXISTS (SELECT 1 FROM {_t(tname)} t WHERE t.person_id = p.person_id)",
        )
    for (tname, field), _domain in ref_domains():
        yield Check(
            "standard_concept_record_completeness",
            "completeness",
            tname,
            field,
            "records mapped to a standard concept (not 0)",
            5.0,
            _t(tname),
            f'"{field}" = 0',
            f'"{field}" IS NOT NULL',
        )
    for tname in (
        "condition_occurrence",
        "drug_exposure",
        "procedure_occurrence",
        "measurement",
        "observation",
    ):
        field = schema.table(tname).column_names[2]
        source_value = field.replace("_concept_id", "_source_value")
        yield Check(
            "source_value_completeness",
            "completeness",
            tname,
            source_value,
            "unmapped records keep their source value",
            10.0,
            _t(tname),
            f'"{source_value}" IS NULL',
            f'"{field}" = 0',
        )


def _plausibility() -> Iterator[Check]:
    person = f"JOIN {_t('person')} p ON s.person_id = p.person_id"
    death = f"JOIN (SELECT person_id, min(death_date) AS d FROM {_t('death')} GROUP BY ALL) x"
    for tname, (start, end) in ref.EVENT_DATES.items():
        src = f"{_t(tname)} s"
        yield Check(
            "plausible_after_birth",
            "plausibility",
            tname,
            start,
            "the event happens on or after birth",
            1.0,
            f"{src} {person}",
            f's."{start}" < {_BIRTH}',
        )
        if tname != "death":
            yield Check(
                "plausible_before_death",
                "plausibility",
                tname,
                start,
                "the event happens no later than 60 days after death",
                1.0,
                f"{src} {death} ON s.person_id = x.person_id",
                f's."{start}" > x.d + INTERVAL 60 DAY',
            )
        if end is not None:
            threshold = 0.0 if tname == "observation_period" else 1.0
            yield Check(
                "plausible_start_before_end",
                "plausibility",
                tname,
                end,
                f"{start} is on or before {end}",
                threshold,
                _t(tname),
                f'"{start}" > "{end}"',
                f'"{end}" IS NOT NULL',
            )
        yield Check(
            "plausible_not_in_future",
            "plausibility",
            tname,
            start,
            "the date is not in the future",
            0.0,
            _t(tname),
            f'"{start}" > current_date',
        )
    periods = _t("observation_period")
    for tname in ref.CLINICAL_EVENTS:
        start = ref.EVENT_DATES[tname][0]
        yield Check(
            "within_observation_period",
            "plausibility",
            tname,
            start,
            "the event falls inside one of the person's observation periods",
            5.0,
            f"{_t(tname)} s",
            f"""NOT EXISTS (SELECT 1 FROM {periods} o WHERE o.person_id = s.person_id AND
                s."{start}" BETWEEN o.observation_period_start_date
                AND o.observation_period_end_date)""",
        )
        if (
            "visit_occurrence_id" in schema.table(tname).column_names
            and tname != "visit_occurrence"
        ):
            yield Check(
                "within_visit_dates",
                "plausibility",
                tname,
                start,
                "the event falls within its visit's dates (±7 days)",
                1.0,
                f"{_t(tname)} s JOIN {_t('visit_occurrence')} v "
                "ON s.visit_occurrence_id = v.visit_occurrence_id",
                f"""s."{start}" < v.visit_start_date - INTERVAL 7 DAY
                    OR s."{start}" > v.visit_end_date + INTERVAL 7 DAY""",
            )
    yield Check(
        "plausible_year_of_birth",
        "plausibility",
        "person",
        "year_of_birth",
        "born in 1850 or later and not in the future",
        1.0,
        _t("person"),
        "year_of_birth < 1850 OR year_of_birth > year(current_date)",
    )
    yield Check(
        "plausible_age",
        "plausibility",
        "observation_period",
        "observation_period_end_date",
        "aged 0 to 120 years while observed",
        1.0,
        f"{periods} s {person}",
        f"date_diff('year', {_BIRTH}, s.observation_period_end_date) > 120",
    )
    yield Check(
        "observation_period_overlap",
        "plausibility",
        "observation_period",
        None,
        "a person's observation periods do not overlap",
        0.0,
        f"""(SELECT observation_period_start_date AS s, max(observation_period_end_date) OVER
            (PARTITION BY person_id ORDER BY observation_period_start_date,
             observation_period_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev
            FROM {periods})""",
        "s <= prev",
    )
    yield Check(
        "one_death_per_person",
        "plausibility",
        "death",
        "person_id",
        "a person dies at most once",
        0.0,
        f"(SELECT count(*) OVER (PARTITION BY person_id) AS n FROM {_t('death')})",
        "n > 1",
    )
    for (tname, field), (low, high) in ref.PLAUSIBLE_FIELD_RANGES.items():
        bounds = []
        if low is not None:
            bounds.append(f'"{field}" < {low}')
        if high is not None:
            bounds.append(f'"{field}" > {high}')
        shown = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        yield Check(
            "plausible_value_range",
            "plausibility",
            tname,
            field,
            f"the value lies in {shown}",
            1.0,
            _t(tname),
            " OR ".join(bounds),
            f'"{field}" IS NOT NULL',
        )
    ranges = " UNION ALL ".join(
        f"SELECT {c} AS c, {u} AS u, {lo} AS lo, {hi} AS hi"
        for (c, u), (lo, hi) in ref.PLAUSIBLE_MEASUREMENTS.items()
    )
    yield Check(
        "plausible_measurement_value",
        "plausibility",
        "measurement",
        "value_as_number",
        "a measurement's value is plausible for its concept and unit",
        1.0,
        f"""{_t("measurement")} s JOIN ({ranges}) r
            ON s.measurement_concept_id = r.c AND s.unit_concept_id = r.u""",
        "s.value_as_number < r.lo OR s.value_as_number > r.hi",
        "s.value_as_number IS NOT NULL",
    )
    for sex, other, concepts in (
        ("male", 8532, ref.MALE_ONLY_CONCEPTS),
        ("female", 8507, ref.FEMALE_ONLY_CONCEPTS),
    ):
        ids = ", ".join(str(c) for c in concepts)
        for tname in ("condition_occurrence", "procedure_occurrence"):
            field = schema.table(tname).column_names[2]
            yield Check(
                f"plausible_gender_{sex}_only",
                "plausibility",
                tname,
                field,
                f"{sex}-specific concepts are recorded for {sex} persons",
                0.0,
                f"{_t(tname)} s {person}",
                f"p.gender_concept_id = {other}",
                f's."{field}" IN ({ids})',
            )


def all_checks() -> list[Check]:
    """Every check, conformance first."""
    return [*_conformance(), *_completeness(), *_plausibility()]
