"""How each CDM domain becomes events: its table, concept, dates, visit and type columns.

End dates follow Circe: a missing end is the start plus one day (drug exposures first try
days supply), so every event covers at least its start day.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlglot import exp


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
    source_concept: str | None = None
    count_column: str | None = None


def _end(end: str, start: str) -> str:
    return f"COALESCE(d.{end}, DATEADD_DAYS(d.{start}, 1))"


DOMAINS: dict[str, DomainSpec] = {
    "condition_occurrence": DomainSpec(
        table="condition_occurrence",
        id_column="condition_occurrence_id",
        concept="condition_concept_id",
        start="condition_start_date",
        end_sql=_end("condition_end_date", "condition_start_date"),
        visit="visit_occurrence_id",
        type_column="condition_type_concept_id",
        source_concept="condition_source_concept_id",
    ),
    "drug_exposure": DomainSpec(
        table="drug_exposure",
        id_column="drug_exposure_id",
        concept="drug_concept_id",
        start="drug_exposure_start_date",
        end_sql="COALESCE(d.drug_exposure_end_date, DATEADD_DAYS(d.drug_exposure_start_date, "
        "d.days_supply), DATEADD_DAYS(d.drug_exposure_start_date, 1))",
        visit="visit_occurrence_id",
        type_column="drug_type_concept_id",
        source_concept="drug_source_concept_id",
    ),
    "drug_era": DomainSpec(
        table="drug_era",
        id_column="drug_era_id",
        concept="drug_concept_id",
        start="drug_era_start_date",
        end_sql="d.drug_era_end_date",
        visit=None,
        type_column=None,
        count_column="drug_exposure_count",
    ),
    "condition_era": DomainSpec(
        table="condition_era",
        id_column="condition_era_id",
        concept="condition_concept_id",
        start="condition_era_start_date",
        end_sql="d.condition_era_end_date",
        visit=None,
        type_column=None,
        count_column="condition_occurrence_count",
    ),
    "procedure_occurrence": DomainSpec(
        table="procedure_occurrence",
        id_column="procedure_occurrence_id",
        concept="procedure_concept_id",
        start="procedure_date",
        end_sql=_end("procedure_end_date", "procedure_date"),
        visit="visit_occurrence_id",
        type_column="procedure_type_concept_id",
        source_concept="procedure_source_concept_id",
    ),
    "measurement": DomainSpec(
        table="measurement",
        id_column="measurement_id",
        concept="measurement_concept_id",
        start="measurement_date",
        end_sql="DATEADD_DAYS(d.measurement_date, 1)",
        visit="visit_occurrence_id",
        type_column="measurement_type_concept_id",
        source_concept="measurement_source_concept_id",
    ),
    "observation": DomainSpec(
        table="observation",
        id_column="observation_id",
        concept="observation_concept_id",
        start="observation_date",
        end_sql="DATEADD_DAYS(d.observation_date, 1)",
        visit="visit_occurrence_id",
        type_column="observation_type_concept_id",
        source_concept="observation_source_concept_id",
    ),
    "visit_occurrence": DomainSpec(
        table="visit_occurrence",
        id_column="visit_occurrence_id",
        concept="visit_concept_id",
        start="visit_start_date",
        end_sql="d.visit_end_date",
        visit="visit_occurrence_id",
        type_column="visit_type_concept_id",
        source_concept="visit_source_concept_id",
    ),
    "device_exposure": DomainSpec(
        table="device_exposure",
        id_column="device_exposure_id",
        concept="device_concept_id",
        start="device_exposure_start_date",
        end_sql=_end("device_exposure_end_date", "device_exposure_start_date"),
        visit="visit_occurrence_id",
        type_column="device_type_concept_id",
        source_concept="device_source_concept_id",
    ),
    "death": DomainSpec(
        table="death",
        id_column="person_id",
        concept="cause_concept_id",
        start="death_date",
        end_sql="DATEADD_DAYS(d.death_date, 1)",
        visit=None,
        type_column="death_type_concept_id",
        source_concept="cause_source_concept_id",
    ),
    "observation_period": DomainSpec(
        table="observation_period",
        id_column="observation_period_id",
        concept=None,
        start="observation_period_start_date",
        end_sql="d.observation_period_end_date",
        visit=None,
        type_column="period_type_concept_id",
    ),
}

CDM_TABLES = frozenset(
    {spec.table for spec in DOMAINS.values()}
    | {"person", "concept", "concept_ancestor", "concept_relationship"}
)

# Concept-set rows: (codeset_id, concept_id, include_descendants, include_mapped, is_excluded).
CODESET_ITEM_COLUMNS = (
    ("codeset_id", "INTEGER"),
    ("concept_id", "INTEGER"),
    ("include_descendants", "BOOLEAN"),
    ("include_mapped", "BOOLEAN"),
    ("is_excluded", "BOOLEAN"),
)


def qualify(tree: exp.Expression, schema: str) -> exp.Expression:
    """Prefix CDM table names with ``schema`` (sites keep the CDM in a named schema)."""

    def prefix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and not node.db and node.name in CDM_TABLES:
            return exp.table_(node.name, db=schema, alias=node.alias or None)
        return node

    return cast(exp.Expression, tree.transform(prefix))
