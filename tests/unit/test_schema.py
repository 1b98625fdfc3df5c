"""The CDM v5.4 catalogue read from the published DDL."""

from medlab.cdm import schema

REQUIRED_TABLES = {
    "person",
    "observation_period",
    "visit_occurrence",
    "visit_detail",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
    "death",
    "note",
    "specimen",
    "location",
    "care_site",
    "provider",
    "payer_plan_period",
    "cost",
    "drug_era",
    "dose_era",
    "condition_era",
    "cdm_source",
    "metadata",
    "concept",
    "vocabulary",
    "domain",
    "concept_class",
    "concept_relationship",
    "relationship",
    "concept_synonym",
    "concept_ancestor",
    "drug_strength",
    "cohort",
    "cohort_definition",
}


def test_every_table_the_issue_names_is_there() -> None:
    assert set(schema.tables()) >= REQUIRED_TABLES


def test_official_v54_columns_and_nullability() -> None:
    visit = schema.table("visit_occurrence")
    assert "admitted_from_concept_id" in visit.column_names
    assert "admitting_source_concept_id" not in visit.column_names
    assert visit.column("visit_start_date").required
    assert not visit.column("visit_start_datetime").required
    assert visit.column("visit_start_date").duckdb_type == "DATE"
    # CDM v5.4 column counts (OHDSI CommonDataModel inst/ddl/5.4).
    assert len(schema.table("person").columns) == 18
    assert len(schema.table("measurement").columns) == 23
    assert len(schema.table("drug_exposure").columns) == 23
    assert schema.table("measurement").column("value_as_number").duckdb_type == "DOUBLE"
    assert schema.table("measurement").column("measurement_event_id").duckdb_type == "BIGINT"


def test_results_tables_live_in_the_results_schema() -> None:
    assert schema.table("cohort").qualified == 'results."cohort"'
    assert all(t.part != "results" for t in schema.cdm_tables())


def test_keys_and_references() -> None:
    assert schema.table("person").primary_key == ("person_id",)
    assert schema.table("death").primary_key == ()
    fks = {(f.table, f.column): f.ref_table for f in schema.foreign_keys()}
    assert fks[("observation_period", "person_id")] == "person"
    assert fks[("drug_exposure", "visit_occurrence_id")] == "visit_occurrence"
    assert fks[("visit_occurrence", "preceding_visit_occurrence_id")] == "visit_occurrence"
    assert ("person", "person_id") not in fks
    assert "person" in schema.referenced_tables()
    assert "drug_exposure" not in schema.referenced_tables()


def test_v53_renames_cover_the_visit_tables() -> None:
    renames = schema.V53_RENAMES["visit_occurrence"]
    assert renames["admitting_source_concept_id"] == "admitted_from_concept_id"
    assert renames["discharge_to_concept_id"] == "discharged_to_concept_id"
    assert schema.V53_RENAMES["visit_detail"]["visit_detail_parent_id"] == "parent_visit_detail_id"
