"""Tiny hand-written patient tables for cohort spec tests, and a store built from them."""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store
from medlab.privacy.ingest import RAW

D = dt.date.fromisoformat

# A small vocabulary: 100 is a condition with descendant 101; 102 another condition;
# 200 a drug ingredient with clinical drug 201; 210 another drug; 300 a measurement;
# 400 a procedure; 500 an observation; 600 a device; 900 an ICD-10 code mapped to 100.
CONCEPTS = [
    (100, "Condition A", "Condition", "SNOMED", "Clinical Finding", "S"),
    (101, "Condition A subtype", "Condition", "SNOMED", "Clinical Finding", "S"),
    (102, "Condition B", "Condition", "SNOMED", "Clinical Finding", "S"),
    (200, "drug X", "Drug", "RxNorm", "Ingredient", "S"),
    (201, "drug X 10 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "S"),
    (210, "drug Y", "Drug", "RxNorm", "Ingredient", "S"),
    (300, "Lab test", "Measurement", "LOINC", "Lab Test", "S"),
    (400, "Procedure P", "Procedure", "SNOMED", "Procedure", "S"),
    (500, "Observation O", "Observation", "SNOMED", "Clinical Finding", "S"),
    (600, "Device D", "Device", "SNOMED", "Physical Object", "S"),
    (900, "ICD code for A", "Condition", "ICD10CM", "4-char billing code", ""),
    (8507, "MALE", "Gender", "Gender", "Gender", "S"),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "S"),
    (9201, "Inpatient Visit", "Visit", "Visit", "Visit", "S"),
    (9202, "Outpatient Visit", "Visit", "Visit", "Visit", "S"),
    (8876, "millimeter mercury column", "Unit", "UCUM", "Unit", "S"),
]
ANCESTORS = [(c[0], c[0], 0, 0) for c in CONCEPTS if c[5] == "S"] + [
    (100, 101, 1, 1),
    (200, 201, 1, 1),
]
RELATIONSHIPS = [(900, 100, "Maps to"), (100, 900, "Mapped from")]

_ID_COLUMNS = {
    "person": "person_id",
    "observation_period": "observation_period_id",
    "visit_occurrence": "visit_occurrence_id",
    "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id",
    "drug_era": "drug_era_id",
    "condition_era": "condition_era_id",
    "procedure_occurrence": "procedure_occurrence_id",
    "measurement": "measurement_id",
    "observation": "observation_id",
    "device_exposure": "device_exposure_id",
}
_REQUIRED_DEFAULTS = {
    "person": {"race_concept_id": 0, "ethnicity_concept_id": 0},
    "observation_period": {"period_type_concept_id": 32817},
    "visit_occurrence": {"visit_type_concept_id": 32817},
    "condition_occurrence": {"condition_type_concept_id": 32817},
    "drug_exposure": {"drug_type_concept_id": 32817},
    "procedure_occurrence": {"procedure_type_concept_id": 32817},
    "measurement": {"measurement_type_concept_id": 32817},
    "observation": {"observation_type_concept_id": 32817},
    "device_exposure": {"device_type_concept_id": 32817},
    "death": {},
    "drug_era": {},
    "condition_era": {},
}


@dataclass
class World:
    """Rows per CDM table, added with small helpers; ids are assigned in order."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, table: str, **values: Any) -> int:
        defaults = dict(_REQUIRED_DEFAULTS.get(table, {}))
        id_column = _ID_COLUMNS.get(table)
        if id_column and id_column not in values:
            values[id_column] = len(self.rows[table]) + 1
        row = {**defaults, **values}
        self.rows[table].append(row)
        return int(row[id_column]) if id_column else 0

    def person(
        self,
        pid: int,
        yob: int = 1970,
        gender: int = 8507,
        race: int = 0,
        start: str = "2000-01-01",
        end: str = "2020-12-31",
    ) -> int:
        """A person observed from ``start`` to ``end``."""
        self.add(
            "person",
            person_id=pid,
            year_of_birth=yob,
            gender_concept_id=gender,
            race_concept_id=race,
        )
        self.add(
            "observation_period",
            person_id=pid,
            observation_period_start_date=D(start),
            observation_period_end_date=D(end),
        )
        return pid

    def condition(
        self, pid: int, concept: int, start: str, end: str | None = None, visit: int | None = None
    ) -> int:
        return self.add(
            "condition_occurrence",
            person_id=pid,
            condition_concept_id=concept,
            condition_start_date=D(start),
            condition_end_date=D(end) if end else None,
            visit_occurrence_id=visit,
        )

    def drug(
        self,
        pid: int,
        concept: int,
        start: str,
        end: str | None = None,
        days_supply: int | None = None,
        visit: int | None = None,
    ) -> int:
        first = D(start)
        last = D(end) if end else first + dt.timedelta(days=(days_supply or 1) - 1)
        return self.add(
            "drug_exposure",
            person_id=pid,
            drug_concept_id=concept,
            drug_exposure_start_date=first,
            drug_exposure_end_date=last,
            days_supply=days_supply,
            visit_occurrence_id=visit,
        )

    def visit(self, pid: int, concept: int, start: str, end: str | None = None) -> int:
        return self.add(
            "visit_occurrence",
            person_id=pid,
            visit_concept_id=concept,
            visit_start_date=D(start),
            visit_end_date=D(end or start),
        )

    def measurement(
        self, pid: int, concept: int, date: str, value: float | None = None, unit: int | None = None
    ) -> int:
        return self.add(
            "measurement",
            person_id=pid,
            measurement_concept_id=concept,
            measurement_date=D(date),
            value_as_number=value,
            unit_concept_id=unit,
        )

    def write(self, directory: Path) -> None:
        """OMOP CSV files of the world and the vocabulary."""
        directory.mkdir(parents=True, exist_ok=True)
        tables = dict(self.rows)
        tables["concept"] = [
            {
                "concept_id": c[0],
                "concept_name": c[1],
                "domain_id": c[2],
                "vocabulary_id": c[3],
                "concept_class_id": c[4],
                "standard_concept": c[5] or None,
                "concept_code": str(c[0]),
                "valid_start_date": D("1970-01-01"),
                "valid_end_date": D("2099-12-31"),
            }
            for c in CONCEPTS
        ]
        tables["concept_ancestor"] = [
            {
                "ancestor_concept_id": a,
                "descendant_concept_id": d,
                "min_levels_of_separation": lo,
                "max_levels_of_separation": hi,
            }
            for a, d, lo, hi in ANCESTORS
        ]
        tables["concept_relationship"] = [
            {
                "concept_id_1": a,
                "concept_id_2": b,
                "relationship_id": r,
                "valid_start_date": D("1970-01-01"),
                "valid_end_date": D("2099-12-31"),
            }
            for a, b, r in RELATIONSHIPS
        ]
        for table, rows in tables.items():
            columns = sorted({k for row in rows for k in row})
            with (directory / f"{table}.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                for row in rows:
                    writer.writerow(["" if row.get(c) is None else row[c] for c in columns])

    def store(self, tmp_path: Path) -> Path:
        """A node store holding the world."""
        self.write(tmp_path / "csv")
        store = tmp_path / "spec.duckdb"
        init_store(store)
        load_omop_csv(store, tmp_path / "csv", ingest=RAW)  # the spec tests name persons
        return store
