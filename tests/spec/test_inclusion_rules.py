"""Inclusion rules: occurrence counts in temporal windows, groups, demographics, limits."""

from .definitions import DEFINITIONS
from .world import World

END = "2020-12-31"
INDEX = "2010-01-01"


def _drug_users(*pids: int, **person: object) -> World:
    w = World()
    for pid in pids:
        w.person(pid, **person)  # type: ignore[arg-type]
        w.drug(pid, 201, INDEX)
    return w


def test_no_prior_condition_and_attrition(run) -> None:
    w = _drug_users(1, 2, 3, 4)
    w.condition(1, 102, "2009-01-01")  # before index: excluded
    w.condition(2, 102, INDEX)  # same day: outside a window ending the day before
    w.condition(4, 102, "2011-01-01")  # after index
    rows, result = run(w, DEFINITIONS["no_prior_condition"])
    assert [r[0] for r in rows] == [2, 3, 4]
    assert [(a.rule, a.persons, a.entries) for a in result.attrition] == [
        ("qualifying events", 4, 4),
        ("no prior B", 3, 3),
    ]


def test_occurrence_counts(run) -> None:
    w = _drug_users(1, 2, 3)
    w.condition(1, 100, "2009-03-01")
    w.condition(1, 100, "2009-12-01")
    w.condition(2, 100, "2008-06-01")  # outside the year before
    w.condition(2, 100, "2009-12-01")
    w.condition(3, 100, "2009-12-01")
    w.condition(3, 101, "2009-12-01")  # two rows on one day count twice
    assert [r[0] for r in run(w, DEFINITIONS["two_in_a_year"])[0]] == [1, 3]
    w = _drug_users(1, 2, 3)
    w.condition(1, 100, "2009-01-01")
    w.condition(2, 100, "2008-01-01")
    w.condition(2, 100, "2009-01-01")
    assert [r[0] for r in run(w, DEFINITIONS["at_most_one"])[0]] == [1, 3]
    w = _drug_users(1, 2)
    w.condition(1, 100, "2009-01-01")
    w.condition(1, 101, "2009-01-01")
    w.condition(2, 100, "2009-01-01")
    w.condition(2, 100, "2009-02-01")
    assert [r[0] for r in run(w, DEFINITIONS["distinct_days"])[0]] == [2]


def test_restrict_to_same_visit(run) -> None:
    w = World()
    v1 = w.visit(w.person(1), 9201, INDEX, "2010-01-05")
    w.drug(1, 201, INDEX, visit=v1)
    w.condition(1, 100, "2010-01-02", visit=v1)
    v2 = w.visit(w.person(2), 9201, INDEX)
    v3 = w.visit(2, 9202, INDEX)
    w.drug(2, 201, INDEX, visit=v2)
    w.condition(2, 100, INDEX, visit=v3)
    assert [r[0] for r in run(w, DEFINITIONS["same_visit"])[0]] == [1]


def test_window_relative_to_index_end(run) -> None:
    w = World()
    for pid, when in ((1, "2010-02-15"), (2, "2010-03-15"), (3, "2010-01-10")):
        w.drug(w.person(pid), 201, INDEX, days_supply=30)  # exposure ends 2010-01-30
        w.condition(pid, 100, when)
    rows, _ = run(w, DEFINITIONS["after_index_end"])
    assert rows == [(1, INDEX, INDEX)]


def test_groups(run) -> None:
    w = World()
    for pid, gender, concept in ((1, 8507, 100), (2, 8532, 102), (3, 8507, 102), (4, 8532, None)):
        w.drug(w.person(pid, gender=gender), 201, INDEX)
        if concept:
            w.condition(pid, concept, "2009-01-01")
    assert [r[0] for r in run(w, DEFINITIONS["nested_groups"])[0]] == [1, 2]
    w = World()
    for pid, yob, concepts in (
        (1, 1970, (100, 102)),
        (2, 1955, (100,)),
        (3, 1970, (100,)),
        (4, 1955, ()),
    ):
        w.drug(w.person(pid, yob=yob), 201, INDEX)
        for concept in concepts:
            w.condition(pid, concept, "2009-01-01")
    assert [r[0] for r in run(w, DEFINITIONS["at_least_two_of_three"])[0]] == [1, 2]
    w = _drug_users(1, 2)
    w.condition(2, 100, "2009-01-01")
    assert [r[0] for r in run(w, DEFINITIONS["at_most_zero_of"])[0]] == [1]


def test_attrition_counts_rules_in_order_and_alone(run) -> None:
    w = World()
    for pid, gender, yob in ((1, 8507, 1950), (2, 8507, 1970), (3, 8532, 1950), (4, 8532, 1970)):
        w.drug(w.person(pid, gender=gender, yob=yob), 201, INDEX)
    rows, result = run(w, DEFINITIONS["two_rules_attrition"])
    assert [r[0] for r in rows] == [1]
    table = [(a.rule, a.persons, a.entries, a.independent_persons) for a in result.attrition]
    assert table == [
        ("qualifying events", 4, 4, 4),
        ("male", 2, 2, 2),
        ("born before 1960", 1, 1, 2),
    ]


def test_qualified_and_expression_limits(run) -> None:
    def world() -> World:
        w = World()
        w.drug(w.person(1), 201, "2009-01-01")
        w.drug(1, 201, "2011-01-01")
        w.condition(1, 100, "2010-01-01")
        return w

    rows, _ = run(world(), DEFINITIONS["expression_limit_after_rules"])
    assert rows == [(1, "2011-01-01", "2011-01-01")]
    rows, _ = run(world(), DEFINITIONS["qualified_limit_before_rules"])
    assert rows == []


def test_additional_criteria_and_correlated_entry_criteria(run) -> None:
    w = _drug_users(1, 2)
    w.condition(1, 102, "2009-01-01")
    assert run(w, DEFINITIONS["additional_criteria"])[0] == [(1, INDEX, INDEX)]
    w = World()
    w.drug(w.person(1), 201, "2008-01-01")
    w.condition(1, 102, "2009-01-01")
    w.drug(1, 201, INDEX)
    assert run(w, DEFINITIONS["correlated_on_entry"])[0] == [(1, INDEX, INDEX)]


def test_ignore_observation_period(run) -> None:
    w = World()
    w.person(1, start="2005-01-01")
    w.drug(1, 201, INDEX)
    w.condition(1, 100, "2003-01-01")  # before observation
    w.person(2, start="2005-01-01")
    w.drug(2, 201, INDEX)
    assert [r[0] for r in run(w, DEFINITIONS["ignore_observation_period"])[0]] == [1]
    assert [r[0] for r in run(w, DEFINITIONS["at_most_zero_of"])[0]] == [1, 2]


def test_end_window_on_the_event_end(run) -> None:
    w = _drug_users(1, 2)
    w.condition(1, 100, "2009-12-01", "2010-02-01")  # still ongoing at index
    w.condition(2, 100, "2009-12-01", "2009-12-20")  # over before index
    assert [r[0] for r in run(w, DEFINITIONS["event_end_window"])[0]] == [1]
