"""Cohort exit: end strategies, censoring events, era collapse, censor window."""

from .definitions import DEFINITIONS
from .world import World

INDEX = "2010-01-01"


def test_end_of_observation_and_date_offsets(run) -> None:
    w = World()
    w.drug(w.person(1), 201, INDEX, days_supply=30)
    w.drug(w.person(2, end="2010-01-10"), 201, INDEX, days_supply=30)
    assert run(w, DEFINITIONS["end_of_observation"])[0] == [
        (1, INDEX, "2020-12-31"),
        (2, INDEX, "2010-01-10"),
    ]
    assert run(w, DEFINITIONS["offset_from_start"])[0] == [
        (1, INDEX, "2010-01-31"),
        (2, INDEX, "2010-01-10"),
    ]  # capped at observation end
    assert run(w, DEFINITIONS["offset_from_end"])[0] == [
        (1, INDEX, "2010-02-06"),
        (2, INDEX, "2010-01-10"),
    ]


def test_drug_era_end(run) -> None:
    w = World()
    p = w.person(1)
    w.drug(p, 201, INDEX, days_supply=30)  # to 2010-01-30
    w.drug(p, 201, "2010-02-15", days_supply=30)  # 16-day gap: same era, to 2010-03-16
    w.drug(p, 201, "2010-06-01", days_supply=30)  # 77-day gap: a new era
    assert run(w, DEFINITIONS["drug_era_end"])[0] == [(1, INDEX, "2010-03-23")]
    w = World()
    p = w.person(1)
    w.drug(p, 201, INDEX, days_supply=30)
    w.drug(p, 201, "2010-01-11", days_supply=30)
    # days supply overridden to 10: 2010-01-01..01-11, then 01-11..01-21, joined.
    assert run(w, DEFINITIONS["drug_era_override"])[0] == [(1, INDEX, "2010-01-21")]


def test_censoring_event_ends_the_entry(run) -> None:
    w = World()
    w.drug(w.person(1), 201, INDEX)
    w.condition(1, 102, "2012-05-05")
    w.drug(w.person(2), 201, INDEX)
    w.condition(2, 102, "2009-05-05")  # before the entry: no effect
    assert run(w, DEFINITIONS["censoring_event"])[0] == [
        (1, INDEX, "2012-05-05"),
        (2, INDEX, "2020-12-31"),
    ]


def test_era_collapse_with_padding(run) -> None:
    w = World()
    p = w.person(1)
    w.drug(p, 201, INDEX, days_supply=30)  # to 2010-01-30
    w.drug(p, 201, "2010-02-10", days_supply=10)  # 11 days later: within the 15-day pad
    w.drug(p, 201, "2010-04-01")
    assert run(w, DEFINITIONS["era_collapse"])[0] == [
        (1, INDEX, "2010-02-19"),
        (1, "2010-04-01", "2010-04-01"),
    ]


def test_censor_window_clips_and_drops(run) -> None:
    w = World()
    p = w.person(1)
    w.drug(p, 201, INDEX, days_supply=30)
    w.drug(p, 201, "2010-06-20", days_supply=30)
    w.drug(p, 201, "2010-08-01")
    assert run(w, DEFINITIONS["censor_window"])[0] == [
        (1, "2010-01-15", "2010-01-30"),
        (1, "2010-06-20", "2010-06-30"),
    ]
