"""ATLAS/Circe import, definition round trips and errors, and SQL for every dialect."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from medlab.cdm.store import open_store
from medlab.cohorts.circe import from_circe
from medlab.cohorts.compiler import compile_cohort
from medlab.cohorts.domains import CDM_TABLES
from medlab.cohorts.engine import generate
from medlab.cohorts.model import CohortDefinition, load_definition, parse_definition
from medlab.cohorts.sqltree import DIALECTS, render
from medlab.errors import DefinitionError

from .definitions import DEFINITIONS

COHORTS = Path(__file__).resolve().parents[3] / "shared/data/eunomia-cohorts"
CIRCE_FILES = sorted(COHORTS.rglob("*.json"))


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_sql_renders_and_parses_back(name: str, dialect: str) -> None:
    compiled = compile_cohort(parse_definition(DEFINITIONS[name]), 7)
    for query in (compiled.cohort_rows, compiled.attrition):
        text = render(exp.insert(compiled.with_steps(query, "cdm"), "results.cohort"), dialect)
        tree = sqlglot.parse_one(text, read=dialect)
        cdm_tables = [t for t in tree.find_all(exp.Table) if t.name in CDM_TABLES]
        assert cdm_tables and all(t.db == "cdm" for t in cdm_tables)


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_json_and_yaml_round_trip(name: str, tmp_path: Path) -> None:
    definition = parse_definition(DEFINITIONS[name])
    assert parse_definition(json.loads(definition.to_json())) == definition
    (tmp_path / "d.yaml").write_text(definition.to_yaml())
    assert load_definition(tmp_path / "d.yaml").model_copy(update={"name": ""}) == definition


def test_validation_errors_name_the_json_path() -> None:
    bad = copy.deepcopy(DEFINITIONS["no_prior_condition"])
    bad["inclusion_rules"][0]["expression"]["criteria"][0]["start_window"]["start"]["days"] = "x"
    with pytest.raises(
        DefinitionError,
        match=r"\$\.inclusion_rules\[0\]\.expression\.criteria"
        r"\[0\]\.start_window\.start\.days",
    ):
        parse_definition(bad)
    missing = copy.deepcopy(DEFINITIONS["condition_with_descendants"])
    missing["primary"]["criteria"][0]["codeset_id"] = 42
    with pytest.raises(DefinitionError, match=r"codeset_id 42 is not a defined concept set"):
        parse_definition(missing)
    wrong = copy.deepcopy(DEFINITIONS["condition_with_descendants"])
    wrong["primary"]["criteria"][0]["days_supply"] = {"op": "gt", "value": 1}
    with pytest.raises(DefinitionError, match="'days_supply' does not apply"):
        parse_definition(wrong)


@pytest.fixture(scope="module")
def circe_defs() -> dict[str, CohortDefinition]:
    if not CIRCE_FILES:
        pytest.skip(f"no Circe definitions under {COHORTS}")
    return {f"{p.parent.name}/{p.name}": load_definition(p) for p in CIRCE_FILES}


def test_every_eunomia_circe_definition_imports(circe_defs: dict[str, CohortDefinition]) -> None:
    assert len(circe_defs) == 7
    age_male = circe_defs["CohortGenerator/celecoxibAge40Male.json"]
    assert [r.name for r in age_male.inclusion_rules] == ["Age > 40", "Gender = MALE"]
    assert circe_defs["Strategus/1.json"].end_strategy.type == "drug_era"
    assert str(circe_defs["CohortGenerator/celecoxibCensored.json"].censor_window.start) == (
        "2000-01-01"
    )


def test_eunomia_cohorts_generate(
    circe_defs: dict[str, CohortDefinition], eunomia_store: Path, writable_copy
) -> None:
    store = writable_copy(eunomia_store)
    counts = {}
    for cohort_id, (name, definition) in enumerate(sorted(circe_defs.items()), start=1):
        result = generate(store, definition, cohort_id)
        counts[name] = (result.persons, result.entries)
    assert counts == {
        "CohortGenerator/celecoxib.json": (1800, 1800),
        "CohortGenerator/celecoxibAge40.json": (569, 569),
        "CohortGenerator/celecoxibAge40Male.json": (266, 266),
        "CohortGenerator/celecoxibCensored.json": (1750, 1750),
        "Strategus/1.json": (1800, 1800),
        "Strategus/2.json": (830, 830),
        "Strategus/3.json": (479, 479),
    }
    # Cross-check two of them with plain SQL written independently of the compiler.
    with open_store(store, read_only=True) as con:
        (bleeders,) = con.execute(
            """SELECT COUNT(DISTINCT co.person_id) FROM condition_occurrence co
               JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id
                AND ca.ancestor_concept_id = 192671
               JOIN observation_period op ON op.person_id = co.person_id
                AND co.condition_start_date BETWEEN op.observation_period_start_date
                                                AND op.observation_period_end_date"""
        ).fetchall()[0]
        (celecoxib,) = con.execute(
            """SELECT COUNT(DISTINCT de.person_id) FROM drug_era de
               JOIN observation_period op ON op.person_id = de.person_id
                AND de.drug_era_start_date BETWEEN op.observation_period_start_date
                                               AND op.observation_period_end_date
               WHERE de.drug_concept_id = 1118084"""
        ).fetchall()[0]
    assert counts["Strategus/3.json"][0] == bleeders
    assert counts["Strategus/1.json"][0] == celecoxib


def test_unsupported_circe_features_are_named_with_their_path() -> None:
    base = json.loads(CIRCE_FILES[0].read_text()) if CIRCE_FILES else None
    if base is None:
        pytest.skip("no Circe definitions")
    specialty = copy.deepcopy(base)
    specialty["PrimaryCriteria"]["CriteriaList"][0]["DrugEra"]["ProviderSpecialty"] = [
        {"CONCEPT_ID": 38004446}
    ]
    with pytest.raises(
        DefinitionError,
        match=r"\$\.PrimaryCriteria\.CriteriaList\[0\]\.DrugEra"
        r"\.ProviderSpecialty: Circe feature 'ProviderSpecialty'",
    ):
        from_circe(specialty)
    specimen = copy.deepcopy(base)
    specimen["PrimaryCriteria"]["CriteriaList"][0] = {"Specimen": {"CodesetId": 0}}
    with pytest.raises(DefinitionError, match="criterion type 'Specimen' is not supported"):
        from_circe(specimen)
    top = copy.deepcopy(base)
    top["DateAdjustment"] = {"StartWith": "START_DATE"}
    with pytest.raises(DefinitionError, match=r"\$\.DateAdjustment"):
        from_circe(top)
    empty = copy.deepcopy(base)
    empty["PrimaryCriteria"]["CriteriaList"][0]["DrugEra"]["ProviderSpecialty"] = []
    assert from_circe(empty) == from_circe(base)  # ATLAS's empty defaults mean nothing


def test_concept_ids_enter_as_typed_literals() -> None:
    compiled = compile_cohort(parse_definition(DEFINITIONS["gender_attribute"]), 1)
    text = render(compiled.with_steps(compiled.cohort_rows), "duckdb")
    assert "IN (8532)" in text
    assert compiled.codeset_items[0][:2] == (0, 100)


def test_a_failed_generation_leaves_the_cohort_as_it_was(
    eunomia_store: Path, writable_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.cohorts import engine

    store = writable_copy(eunomia_store)
    every_episode = parse_definition(
        {
            "concept_sets": [
                {"id": 0, "items": [{"concept_id": 4112343, "include_descendants": True}]}
            ],
            "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
            "qualified_limit": "all",
            "end_strategy": {"type": "date_offset", "offset": 0},
        }
    )
    first = generate(store, every_episode, 5)
    one_per_person = every_episode.model_copy(update={"era_pad_days": 99999})
    assert first.entries > first.persons  # so a replacement would show

    def broken(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(engine, "_store_attrition", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(store, one_per_person, 5)
    with open_store(store, read_only=True) as con:
        (n,) = con.execute(
            "SELECT count(*) FROM results.cohort WHERE cohort_definition_id = 5"
        ).fetchall()[0]
    assert n == first.entries
