"""How each CDM domain becomes events: its table, concept, dates, visit and type columns.

End dates follow Circe: a missing end is the start plus one day (drug exposures first try
days supply), so every event covers at least its start day.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainSpec:
    """The columns of one domain table that cohort criteria use (alias ``d``)."""

    table: str
    id_column: str
    concept: str | None
    start: str
    end_sql: str
    visit: str | None
    type_column: str | None


def _end(end: str, start: str) -> str:
    return f"COALESCE(d.{end}, DATEADD_DAYS(d.{start}, 1))"


DOMAINS: dict[str, DomainSpec] = {
    "condition_occurrence": DomainSpec(
        "condition_occurrence",
        "condition_occurrence_id",
        "condition_concept_id",
        "condition_start_date",
        _end("condition_end_date", "condition_start_date"),
        "visit_occurrence_id",
        "condition_type_concept_id",
    ),
    "drug_exposure": DomainSpec(
        "drug_exposure",
        "drug_exposure_id",
        "drug_concept_id",
        "drug_exposure_start_date",
        "COALESCE(d.drug_exposure_end_date, DATEADD_DAYS(d.drug_exposure_start_date, "
        "d.days_supply), DATEADD_DAYS(d.drug_exposure_start_date, 1))",
        "visit_occurrence_id",
        "drug_type_concept_id",
    ),
    "drug_era": DomainSpec(
        "drug_era",
        "drug_era_id",
        "drug_concept_id",
        "drug_era_start_date",
        "d.drug_era_end_date",
        None,
        None,
    ),
    "condition_era": DomainSpec(
        "condition_era",
        "condition_era_id",
        "condition_concept_id",
        "condition_era_start_date",
        "d.condition_era_end_date",
        None,
        None,
    ),
    "procedure_occurrence": DomainSpec(
        "procedure_occurrence",
        "procedure_occurrence_id",
        "procedure_concept_id",
        "procedure_date",
        _end("procedure_end_date", "procedure_date"),
        "visit_occurrence_id",
        "procedure_type_concept_id",
    ),
    "measurement": DomainSpec(
        "measurement",
        "measurement_id",
        "measurement_concept_id",
        "measurement_date",
        "DATEADD_DAYS(d.measurement_date, 1)",
        "visit_occurrence_id",
        "measurement_type_concept_id",
    ),
    "observation": DomainSpec(
        "observation",
        "observation_id",
        "observation_concept_id",
        "observation_date",
        "DATEADD_DAYS(d.observation_date, 1)",
        "visit_occurrence_id",
        "observation_type_concept_id",
    ),
    "visit_occurrence": DomainSpec(
        "visit_occurrence",
        "visit_occurrence_id",
        "visit_concept_id",
        "visit_start_date",
        "d.visit_end_date",
        "visit_occurrence_id",
        "visit_type_concept_id",
    ),
    "device_exposure": DomainSpec(
        "device_exposure",
        "device_exposure_id",
        "device_concept_id",
        "device_exposure_start_date",
        _end("device_exposure_end_date", "device_exposure_start_date"),
        "visit_occurrence_id",
        "device_type_concept_id",
    ),
    "death": DomainSpec(
        "death",
        "person_id",
        "cause_concept_id",
        "death_date",
        "DATEADD_DAYS(d.death_date, 1)",
        None,
        "death_type_concept_id",
    ),
    "observation_period": DomainSpec(
        "observation_period",
        "observation_period_id",
        None,
        "observation_period_start_date",
        "d.observation_period_end_date",
        None,
        "period_type_concept_id",
    ),
}

CDM_TABLES = frozenset(
    {spec.table for spec in DOMAINS.values()}
    | {"person", "concept", "concept_ancestor", "concept_relationship"}
)
