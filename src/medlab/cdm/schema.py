"""The OMOP CDM v5.4 catalogue: tables, columns, keys and the concept domains they expect.

The catalogue is read from the published DDL (``ddl/omop_cdm_v5.4.sql``) so that names, types
and nullability come from one place. Foreign keys follow the CDM's naming conventions
(``person_id`` refers to ``person``, ``*_concept_id`` to ``concept``), as in OHDSI's
DataQualityDashboard field-level metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

CDM_VERSION = "5.4"
RESULTS_SCHEMA = "results"
RESULTS_TABLES = ("cohort", "cohort_definition")

_TABLE_RE = re.compile(
    r"-- part: (?P<part>\w+)\s+pk:(?P<pk>[^\n]*)\nCREATE TABLE (?P<name>\w+) \((?P<body>.*?)\);",
    re.S,
)
_COLUMN_RE = re.compile(
    r'^\s*"?(?P<name>\w+)"?\s+(?P<type>\w+)(?:\(\d+\))?\s+(?P<null>NOT NULL|NULL)'
)

# DuckDB reads a bare NUMERIC as DECIMAL(18,3), which would round lab values such as
# 0.0004 to zero; DOUBLE keeps what the source had.
_DUCKDB_TYPES = {
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "numeric": "DOUBLE",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "varchar": "VARCHAR",
    "text": "VARCHAR",
}

# The concept domain each standard concept field must hold (DQD "fkDomain" checks).
EXPECTED_DOMAINS: dict[tuple[str, str], str] = {
    ("person", "gender_concept_id"): "Gender",
    ("person", "race_concept_id"): "Race",
    ("person", "ethnicity_concept_id"): "Ethnicity",
    ("visit_occurrence", "visit_concept_id"): "Visit",
    ("visit_detail", "visit_detail_concept_id"): "Visit",
    ("condition_occurrence", "condition_concept_id"): "Condition",
    ("condition_era", "condition_concept_id"): "Condition",
    ("drug_exposure", "drug_concept_id"): "Drug",
    ("drug_era", "drug_concept_id"): "Drug",
    ("dose_era", "drug_concept_id"): "Drug",
    ("procedure_occurrence", "procedure_concept_id"): "Procedure",
    ("device_exposure", "device_concept_id"): "Device",
    ("measurement", "measurement_concept_id"): "Measurement",
    ("measurement", "unit_concept_id"): "Unit",
    ("observation", "unit_concept_id"): "Unit",
    ("specimen", "specimen_concept_id"): "Specimen",
    ("death", "cause_concept_id"): "Condition",
}

# Columns renamed between CDM v5.3 and v5.4, keyed by table (None: every table).
V53_RENAMES: dict[str | None, dict[str, str]] = {
    "visit_occurrence": {
        "admitting_source_concept_id": "admitted_from_concept_id",
        "admitting_source_value": "admitted_from_source_value",
        "discharge_to_concept_id": "discharged_to_concept_id",
        "discharge_to_source_value": "discharged_to_source_value",
    },
    "visit_detail": {
        "admitting_source_concept_id": "admitted_from_concept_id",
        "admitting_source_value": "admitted_from_source_value",
        "discharge_to_concept_id": "discharged_to_concept_id",
        "discharge_to_source_value": "discharged_to_source_value",
        "visit_detail_parent_id": "parent_visit_detail_id",
    },
    # A misspelling shipped in CDM v5.3 exports (fixed in EunomiaDatasets commit 9d1b974).
    "cost": {"reveue_code_source_value": "revenue_code_source_value"},
}


@dataclass(frozen=True)
class Column:
    """One CDM column: its official name, DDL type and whether it is required."""

    name: str
    ddl_type: str
    required: bool

    @property
    def duckdb_type(self) -> str:
        """The DuckDB type the column is stored as."""
        return _DUCKDB_TYPES[self.ddl_type]

    @property
    def is_concept(self) -> bool:
        """Whether the column refers to ``concept.concept_id``."""
        return self.name.endswith("_concept_id") or self.name in {
            "concept_id_1",
            "concept_id_2",
            "ancestor_concept_id",
            "descendant_concept_id",
        }


@dataclass(frozen=True)
class ForeignKey:
    """A reference from ``table.column`` to ``ref_table.ref_column``."""

    table: str
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class Table:
    """One CDM table with its columns, group (clinical, vocabulary, …) and primary key."""

    name: str
    part: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = field(default=())

    @property
    def schema(self) -> str:
        """The DuckDB schema that holds the table."""
        return RESULTS_SCHEMA if self.part == "results" else "main"

    @property
    def qualified(self) -> str:
        """``schema.table``, quoted for SQL."""
        return f'{self.schema}."{self.name}"'

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name}")

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in DDL order."""
        return tuple(c.name for c in self.columns)

    @property
    def has_person(self) -> bool:
        """Whether each row belongs to one person."""
        return "person_id" in self.column_names and self.name != "person"


def _parse_ddl(text: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for match in _TABLE_RE.finditer(text):
        columns = []
        for line in match["body"].splitlines():
            col = _COLUMN_RE.match(line)
            if col:
                columns.append(Column(col["name"], col["type"].lower(), col["null"] == "NOT NULL"))
        pk = tuple(p.strip() for p in match["pk"].split(",") if p.strip())
        tables[match["name"]] = Table(match["name"], match["part"], tuple(columns), pk)
    return tables


@cache
def tables() -> dict[str, Table]:
    """Every CDM v5.4 table medlab stores, by name, in DDL order."""
    text = resources.files("medlab.cdm").joinpath("ddl/omop_cdm_v5.4.sql").read_text()
    return _parse_ddl(text)


def table(name: str) -> Table:
    """The table called ``name`` (lower case)."""
    return tables()[name]


def cdm_tables() -> list[Table]:
    """The tables that make up a data snapshot (everything but the results schema)."""
    return [t for t in tables().values() if t.part != "results"]


_REFERENCE_COLUMNS = {
    "person_id": "person",
    "visit_occurrence_id": "visit_occurrence",
    "preceding_visit_occurrence_id": "visit_occurrence",
    "visit_detail_id": "visit_detail",
    "preceding_visit_detail_id": "visit_detail",
    "parent_visit_detail_id": "visit_detail",
    "provider_id": "provider",
    "care_site_id": "care_site",
    "location_id": "location",
    "note_id": "note",
    "payer_plan_period_id": "payer_plan_period",
}


@cache
def foreign_keys() -> tuple[ForeignKey, ...]:
    """References between CDM tables, by the CDM's column naming conventions."""
    keys: list[ForeignKey] = []
    for t in cdm_tables():
        for col in t.columns:
            ref = _REFERENCE_COLUMNS.get(col.name)
            if ref and col.name not in t.primary_key:
                ref_col = table(ref).primary_key[0]
                keys.append(ForeignKey(t.name, col.name, ref, ref_col))
    return tuple(keys)


@cache
def referenced_tables() -> frozenset[str]:
    """Tables whose rows others refer to by key, so their keys must be unique to load."""
    referenced = {fk.ref_table for fk in foreign_keys()}
    referenced |= {t.name for t in tables().values() if t.part in ("vocabulary", "results")}
    return frozenset(referenced)


def reference_present(expr: str, column: str) -> str:
    """SQL true when a foreign key value is set: not NULL, and not 0 except for persons.

    Many ETLs write 0 for "no provider" or "no visit"; that is not a broken reference. A
    person_id of 0 is one.
    """
    return f"{expr} IS NOT NULL" + ("" if column == "person_id" else f" AND {expr} <> 0")
