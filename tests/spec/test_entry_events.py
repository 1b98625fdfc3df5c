"""Entry events: concept sets, domains, attributes, limits and the observation window."""

from .definitions import DEFINITIONS
from .world import World

END = "2020-12-31"


def test_condition_with_descendants(run) -> None:
    w = World()
    w.condition(w.person(1), 101, "2010-01-05")  # a descendant of 100
    w.condition(w.person(2), 102, "2010-01-05")  # another condition
    w.condition(w.person(3), 100, "2011-03-01")
    w.condition(w.person(4), 100, "1999-01-01")  # before observation starts
    rows, result = run(w, DEFINITIONS["condition_with_descendants"])
    assert rows == [(1, "2010-01-05", END), (3, "2011-03-01", END)]
    assert (result.persons, result.entries) == (2, 2)


def test_excluded_concepts_leave_the_set(run) -> None:
    w = World()
    w.condition(w.person(1), 101, "2010-01-05")
    w.condition(w.person(3), 100, "2011-03-01")
    rows, _ = run(w, DEFINITIONS["excluded_concepts"])
    assert rows == [(3, "2011-03-01", END)]


def test_mapped_source_codes_join_the_set(run) -> None:
    w = World()
    w.condition(w.person(1), 900, "2010-01-05")  # the ICD-10 code that maps to 100
    w.condition(w.person(2), 101, "2010-01-05")  # descendants not asked for
    rows, _ = run(w, DEFINITIONS["mapped_codes"])
    assert rows == [(1, "2010-01-05", END)]


def test_first_occurrence(run) -> None:
    w = World()
    p = w.person(1)
    w.drug(p, 201, "2012-01-01")
    w.drug(p, 201, "2010-01-01")
    rows, _ = run(w, DEFINITIONS["first_occurrence"])
    assert rows == [(1, "2010-01-01", "2010-01-01")]


def test_primary_limits(run) -> None:
    def world() -> World:
        w = World()
        p = w.person(1)
        for start in ("2011-01-01", "2010-01-01", "2012-01-01"):
            w.drug(p, 201, start)
        return w

    assert run(world(), DEFINITIONS["limit_first"])[0] == [(1, "2010-01-01", "2010-01-01")]
    assert run(world(), DEFINITIONS["limit_last"])[0] == [(1, "2012-01-01", "2012-01-01")]
    assert [r[1] for r in run(world(), DEFINITIONS["limit_all"])[0]] == [
        "2010-01-01",
        "2011-01-01",
        "2012-01-01",
    ]


def test_prior_and_post_observation(run) -> None:
    w = World()
    w.condition(w.person(1), 100, "2000-06-01")  # 152 days observed before
    w.condition(w.person(2), 100, "2001-06-01")
    w.condition(w.person(3), 100, "2000-12-31")  # exactly 365 days observed before
    rows, _ = run(w, DEFINITIONS["prior_observation"])
    assert [r[0] for r in rows] == [2, 3]
    w = World()
    w.condition(w.person(1), 100, "2020-06-01")  # 213 days observed after
    w.condition(w.person(2), 100, "2019-06-01")
    rows, _ = run(w, DEFINITIONS["post_observation"])
    assert [r[0] for r in rows] == [2]


def test_age_gender_and_visit_attributes(run) -> None:
    w = World()
    w.condition(w.person(1, yob=1970), 100, "2010-06-01")  # 40 in 2010
    w.condition(w.person(2, yob=1970), 100, "2011-06-01")  # 41
    assert [r[0] for r in run(w, DEFINITIONS["age_attribute"])[0]] == [2]
    w = World()
    w.condition(w.person(1, gender=8507), 100, "2010-06-01")
    w.condition(w.person(2, gender=8532), 100, "2010-06-01")
    assert [r[0] for r in run(w, DEFINITIONS["gender_attribute"])[0]] == [2]
    w = World()
    for pid, visit in ((1, 9201), (2, 9202), (3, None)):
        v = w.visit(w.person(pid), visit, "2010-06-01") if visit else None
        w.condition(pid, 100, "2010-06-01", visit=v)
    assert [r[0] for r in run(w, DEFINITIONS["visit_type_attribute"])[0]] == [1]


def test_days_supply_value_and_date_attributes(run) -> None:
    w = World()
    w.drug(w.person(1), 201, "2010-01-01", days_supply=90)
    w.drug(w.person(2), 201, "2010-01-01", days_supply=30)
    assert [r[0] for r in run(w, DEFINITIONS["days_supply_attribute"])[0]] == [1]
    w = World()
    w.measurement(w.person(1), 300, "2010-01-01", 150, 8876)
    w.measurement(w.person(2), 300, "2010-01-01", 120, 8876)
    w.measurement(w.person(3), 300, "2010-01-01", 150, None)
    assert [r[0] for r in run(w, DEFINITIONS["measurement_value"])[0]] == [1]
    w = World()
    w.condition(w.person(1), 100, "2011-06-01")
    w.condition(w.person(2), 100, "2013-01-01")
    assert [r[0] for r in run(w, DEFINITIONS["start_date_range"])[0]] == [2]


def test_duration_of_an_era(run) -> None:
    w = World()
    w.add(
        "drug_era",
        person_id=w.person(1),
        drug_concept_id=200,
        drug_era_start_date=w_date("2010-01-01"),
        drug_era_end_date=w_date("2010-04-01"),
    )
    w.add(
        "drug_era",
        person_id=w.person(2),
        drug_concept_id=200,
        drug_era_start_date=w_date("2010-01-01"),
        drug_era_end_date=w_date("2010-01-31"),
    )
    rows, _ = run(w, DEFINITIONS["era_length"])
    assert rows == [(1, "2010-01-01", END)]


def test_procedure_observation_device_and_death_entries(run) -> None:
    w = World()
    w.add(
        "procedure_occurrence",
        person_id=w.person(1),
        procedure_concept_id=400,
        procedure_date=w_date("2010-01-01"),
    )
    w.add(
        "observation",
        person_id=w.person(2),
        observation_concept_id=500,
        observation_date=w_date("2011-01-01"),
    )
    w.add(
        "device_exposure",
        person_id=w.person(3),
        device_concept_id=600,
        device_exposure_start_date=w_date("2012-01-01"),
    )
    w.add("death", person_id=w.person(4), death_date=w_date("2015-06-01"))
    w.add(
        "procedure_occurrence",
        person_id=w.person(5),
        procedure_concept_id=999,
        procedure_date=w_date("2010-01-01"),
    )
    rows, _ = run(w, DEFINITIONS["other_domains"])
    assert rows == [
        (1, "2010-01-01", "2010-01-01"),
        (2, "2011-01-01", "2011-01-01"),
        (3, "2012-01-01", "2012-01-01"),
        (4, "2015-06-01", "2015-06-01"),
    ]


def w_date(text: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.date.fromisoformat(text)


def test_source_concepts_values_refills_durations_and_era_counts(run) -> None:
    w = World()
    w.add(
        "condition_occurrence",
        person_id=w.person(1),
        condition_concept_id=100,
        condition_source_concept_id=900,
        condition_start_date=w_date("2010-01-01"),
    )
    w.add(
        "condition_occurrence",
        person_id=w.person(2),
        condition_concept_id=100,
        condition_source_concept_id=0,
        condition_start_date=w_date("2010-01-01"),
    )
    assert [r[0] for r in run(w, DEFINITIONS["source_concept"])[0]] == [1]
    w = World()
    w.add(
        "measurement",
        person_id=w.person(1),
        measurement_concept_id=300,
        value_as_concept_id=9999,
        measurement_date=w_date("2010-01-01"),
    )
    w.add(
        "measurement",
        person_id=w.person(2),
        measurement_concept_id=300,
        value_as_concept_id=1,
        measurement_date=w_date("2010-01-01"),
    )
    assert [r[0] for r in run(w, DEFINITIONS["value_as_concept"])[0]] == [1]
    w = World()
    for pid, refills, quantity in ((1, 2, 30), (2, 0, 30), (3, 2, 180)):
        w.add(
            "drug_exposure",
            person_id=w.person(pid),
            drug_concept_id=201,
            drug_exposure_start_date=w_date("2010-01-01"),
            drug_exposure_end_date=w_date("2010-01-30"),
            refills=refills,
            quantity=quantity,
        )
    assert [r[0] for r in run(w, DEFINITIONS["refills_and_quantity"])[0]] == [1]
    w = World()
    w.visit(w.person(1), 9201, "2010-01-01", "2010-01-05")
    w.visit(w.person(2), 9201, "2010-01-01", "2010-01-02")
    w.visit(w.person(3), 9202, "2010-01-01", "2010-01-05")
    assert [r[0] for r in run(w, DEFINITIONS["visit_duration"])[0]] == [1]
    w = World()
    for pid, count in ((1, 3), (2, 1)):
        w.add(
            "drug_era",
            person_id=w.person(pid),
            drug_concept_id=200,
            drug_exposure_count=count,
            drug_era_start_date=w_date("2010-01-01"),
            drug_era_end_date=w_date("2010-02-01"),
        )
    assert [r[0] for r in run(w, DEFINITIONS["era_occurrences"])[0]] == [1]


def test_type_concepts_excluded(run) -> None:
    w = World()
    w.add(
        "condition_occurrence",
        person_id=w.person(1),
        condition_concept_id=100,
        condition_type_concept_id=32020,
        condition_start_date=w_date("2010-01-01"),
    )
    w.add(
        "condition_occurrence",
        person_id=w.person(2),
        condition_concept_id=100,
        condition_type_concept_id=32817,
        condition_start_date=w_date("2010-01-01"),
    )
    assert [r[0] for r in run(w, DEFINITIONS["type_concepts_excluded"])[0]] == [2]


def test_observation_period_and_condition_era_entries(run) -> None:
    w = World()
    w.person(1, start="2000-01-01", end="2012-01-01")
    w.person(2, start="2005-01-01", end="2012-01-01")  # under ten years
    assert run(w, DEFINITIONS["observation_period_entry"])[0] == [(1, "2000-01-01", "2000-12-31")]
    w = World()
    for pid, yob in ((1, 1970), (2, 1960)):
        w.add(
            "condition_era",
            person_id=w.person(pid, yob=yob),
            condition_concept_id=101,
            condition_era_start_date=w_date("2010-01-01"),
            condition_era_end_date=w_date("2010-03-01"),
        )
    assert [r[0] for r in run(w, DEFINITIONS["condition_era_entry"])[0]] == [1]


def test_measurement_operator_and_range_status_route_and_age_at_era_end(run) -> None:
    w = World()
    for pid, operator, high in ((1, 4172704, 120), (2, 4171756, 120), (3, 4172704, 160)):
        w.add(
            "measurement",
            person_id=w.person(pid),
            measurement_concept_id=300,
            operator_concept_id=operator,
            range_high=high,
            measurement_date=w_date("2010-01-01"),
        )
    assert [r[0] for r in run(w, DEFINITIONS["measurement_details"])[0]] == [1]
    w = World()
    w.add(
        "condition_occurrence",
        person_id=w.person(1),
        condition_concept_id=100,
        condition_status_concept_id=32902,
        condition_start_date=w_date("2010-01-01"),
    )
    w.add(
        "condition_occurrence",
        person_id=w.person(2),
        condition_concept_id=100,
        condition_status_concept_id=32908,
        condition_start_date=w_date("2010-01-01"),
    )
    w.add(
        "drug_exposure",
        person_id=w.person(3),
        drug_concept_id=201,
        route_concept_id=4132161,
        drug_exposure_start_date=w_date("2011-01-01"),
        drug_exposure_end_date=w_date("2011-01-01"),
    )
    assert [r[0] for r in run(w, DEFINITIONS["status_and_route"])[0]] == [1, 3]
    w = World()
    for pid, end in ((1, "2011-02-01"), (2, "2010-12-01")):
        w.add(
            "condition_era",
            person_id=w.person(pid, yob=1970),
            condition_concept_id=100,
            condition_era_start_date=w_date("2010-06-01"),
            condition_era_end_date=w_date(end),
        )
    assert [r[0] for r in run(w, DEFINITIONS["era_age_at_end"])[0]] == [1]


def test_observation_period_not_required_keeps_entries_outside_observation(run) -> None:
    # Eunomia's createCohorts: every drug era, in an observation period or not, ending by
    # the end strategy alone (here 30 days after the start, past the period's end).
    w = World()
    w.drug(w.person(1, end="2010-01-10"), 201, "2010-01-01")  # runs past the period end
    w.drug(w.person(2, start="2011-01-01"), 201, "2010-06-01")  # before observation
    definition = {
        "concept_sets": [{"id": 0, "items": [{"concept_id": 201}]}],
        "primary": {"criteria": [{"domain": "drug_exposure", "codeset_id": 0}]},
        "end_strategy": {"type": "date_offset", "field": "start", "offset": 30},
    }
    required, _ = run(w, definition)
    assert required == [(1, "2010-01-01", "2010-01-10")]
    free, _ = run(w, {**definition, "observation_period": "not_required"})
    assert free == [(1, "2010-01-01", "2010-01-31"), (2, "2010-06-01", "2010-07-01")]


def test_observation_period_not_required_refuses_observation_based_settings() -> None:
    import pytest

    from medlab.cohorts.model import parse_definition
    from medlab.errors import DefinitionError

    base = {
        "concept_sets": [{"id": 0, "items": [{"concept_id": 201}]}],
        "primary": {"criteria": [{"domain": "drug_exposure", "codeset_id": 0}], "prior_days": 30},
        "end_strategy": {"type": "date_offset", "field": "start", "offset": 30},
        "observation_period": "not_required",
    }
    with pytest.raises(DefinitionError, match="prior_days"):
        parse_definition(base)
    with pytest.raises(DefinitionError, match="end strategy"):
        parse_definition(
            {
                **base,
                "primary": {**base["primary"], "prior_days": 0},
                "end_strategy": {"type": "observation_period_end"},
            }
        )
