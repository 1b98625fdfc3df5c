"""CohortMethod's study-population rules, one spec test per rule.

Each test builds a small world where the rule changes someone's membership, runs medlab's
``exposures`` + ``outcome_population`` and the literal reference in ``cohortmethod.py``, and
checks both against each other and against the hand-worked expectation.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from medlab.analyses.population import (
    PopulationSettings,
    exposures,
    outcome_days,
    outcome_population,
)
from medlab.cdm.store import open_store

from . import cohortmethod as cm
from .world import World

D = dt.date.fromisoformat
TARGET, COMPARATOR, OUTCOME = 1, 2, 3


class Case:
    """Persons with observation periods, cohort rows and outcome starts."""

    def __init__(self) -> None:
        self.world = World()
        self.periods: dict[int, list[tuple[dt.date, dt.date]]] = {}
        self.rows: list[tuple[int, int, str, str]] = []  # cohort, person, start, end
        self.outcomes: dict[int, list[dt.date]] = {}

    def person(self, pid: int, start: str = "2010-01-01", end: str = "2015-12-31") -> int:
        self.world.person(pid, start=start, end=end)
        self.periods.setdefault(pid, []).append((D(start), D(end)))
        return pid

    def period(self, pid: int, start: str, end: str) -> None:
        self.world.add(
            "observation_period",
            person_id=pid,
            observation_period_start_date=D(start),
            observation_period_end_date=D(end),
        )
        self.periods[pid].append((D(start), D(end)))

    def target(self, pid: int, start: str, end: str) -> None:
        self.rows.append((TARGET, pid, start, end))

    def comparator(self, pid: int, start: str, end: str) -> None:
        self.rows.append((COMPARATOR, pid, start, end))

    def outcome(self, pid: int, start: str) -> None:
        self.rows.append((OUTCOME, pid, start, start))
        self.outcomes.setdefault(pid, []).append(D(start))

    def run(self, tmp_path: Path, **settings: Any) -> tuple[list[dict[str, Any]], list[tuple]]:
        store = self.world.store(tmp_path)
        with open_store(store) as con:
            con.executemany(
                "INSERT INTO results.cohort VALUES (?, ?, ?, ?)",
                [(c, p, D(s), D(e)) for c, p, s, e in self.rows],
            )
        s = PopulationSettings(**settings)
        with open_store(store, read_only=True) as con:
            fetched = exposures(con, TARGET, COMPARATOR, s)
            frame, steps = outcome_population(fetched, outcome_days(con, fetched.frame, OUTCOME), s)
        ours = [
            {
                "person": int(r.person_id),
                "treatment": int(r.treatment),
                "start": r.start_date.date(),
                "risk_start": int(r.risk_start),
                "risk_end": int(r.risk_end),
                "outcome_count": int(r.outcome_count),
                "survival_time": int(r.days),
            }
            for r in frame.itertuples()
        ]
        attrition = [(a.step, a.target_persons, a.comparator_persons) for a in steps]
        # The reference, on the same rows.
        raw = [
            {"person": p, "treatment": 1 if c == TARGET else 0, "start": D(s), "end": D(e)}
            for c, p, s, e in self.rows
            if c in (TARGET, COMPARATOR)
        ]
        spec = s.model_dump()
        rows, fetched_attrition = cm.fetch(raw, self.periods, spec)
        events = cm.outcomes(rows, self.outcomes)
        reference, reference_attrition = cm.study_population(rows, events, spec, fetched_attrition)
        expected = [
            {
                k: r[k]
                for k in (
                    "person",
                    "treatment",
                    "start",
                    "risk_start",
                    "risk_end",
                    "outcome_count",
                    "survival_time",
                )
            }
            for r in reference
        ]
        assert ours == expected
        assert attrition == reference_attrition
        return ours, attrition


def persons(rows: list[dict[str, Any]], arm: int | None = None) -> list[int]:
    return sorted({r["person"] for r in rows if arm is None or r["treatment"] == arm})


def test_remove_all_duplicate_subjects_counts_every_exposure_row(tmp_path: Path) -> None:
    # CreateCohorts.sql: COUNT(DISTINCT drug_concept_id) over the raw table. Person 2's
    # comparator row lies outside any observation period yet still makes her a duplicate.
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-02-01")
    c.person(2)
    c.target(2, "2011-01-01", "2011-02-01")
    c.comparator(2, "2018-01-01", "2018-02-01")  # after her observation ends
    c.person(3)
    c.comparator(3, "2011-03-01", "2011-04-01")
    rows, attrition = c.run(tmp_path, remove_duplicate_subjects="remove all")
    assert persons(rows) == [1, 3]
    assert attrition[1][0] == "Removed subs in both cohorts"


def test_keep_first_keeps_the_earlier_cohort_and_drops_ties(tmp_path: Path) -> None:
    c = Case()
    c.person(1)
    c.comparator(1, "2011-01-01", "2011-02-01")
    c.target(1, "2011-06-01", "2011-07-01")  # later: dropped
    c.person(2)
    c.target(2, "2011-01-01", "2011-02-01")
    c.comparator(2, "2011-01-01", "2011-03-01")  # same first day in both: removed
    rows, attrition = c.run(tmp_path, remove_duplicate_subjects="keep first")
    assert [(r["person"], r["treatment"]) for r in rows] == [(1, 0)]
    assert attrition[1][0] == "First cohort only"


def test_first_exposure_only_takes_the_earliest_start_and_the_earliest_end(tmp_path: Path) -> None:
    # MIN(cohort_start_date), MIN(cohort_end_date): the second era ends earlier than the
    # first, so the entry ends then (not at the first era's end).
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-12-31")
    c.target(1, "2011-02-01", "2011-03-01")
    rows, attrition = c.run(tmp_path, first_exposure_only=True, risk_window_end=0)
    assert len(rows) == 1 and rows[0]["risk_end"] == (D("2011-03-01") - D("2011-01-01")).days
    assert attrition[1][0] == "First exp. only"


def test_common_period_limits_come_from_every_exposure_row(tmp_path: Path) -> None:
    # The earliest comparator row lies outside observation. CohortMethod takes the period's
    # start from it anyway, so target 1 (before the first *observed* comparator) stays.
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-02-01")
    c.person(2, start="2012-01-01")
    c.comparator(2, "2010-06-01", "2010-07-01")  # before her observation: fetched out
    c.comparator(2, "2013-01-01", "2013-02-01")
    c.person(3)
    c.target(3, "2014-01-01", "2014-02-01")  # after the last comparator start: out
    rows, attrition = c.run(tmp_path, restrict_to_common_period=True)
    assert persons(rows, 1) == [1] and persons(rows, 0) == [2]
    # Without another fetch filter the combined label is not written (as CohortMethod).
    assert [a[0] for a in attrition][:1] == ["Original cohorts"]


def test_entries_outside_any_observation_period_are_not_fetched(tmp_path: Path) -> None:
    c = Case()
    c.person(1, start="2010-01-01", end="2010-12-31")
    c.period(1, "2012-01-01", "2012-12-31")
    c.target(1, "2011-06-01", "2011-07-01")  # between her two periods
    c.target(1, "2012-03-01", "2012-04-01")
    rows, _ = c.run(tmp_path)
    assert [r["start"] for r in rows] == [D("2012-03-01")]


def test_washout_counts_days_since_the_observation_period_start(tmp_path: Path) -> None:
    c = Case()
    c.person(1, start="2010-01-01")
    c.target(1, "2010-07-02", "2010-08-01")  # 182 days after the period start
    c.person(2, start="2010-01-01")
    c.target(2, "2010-07-03", "2010-08-01")  # 183 days
    rows, attrition = c.run(tmp_path, washout_period=183)
    assert persons(rows) == [2]
    assert attrition[1][0] == "183 days of obs. prior"


def test_prior_outcome_lookback_covers_minus_29_to_minus_1_for_30_days(tmp_path: Path) -> None:
    # daysToEvent > -priorOutcomeLookback & daysToEvent < riskWindowStart.
    c = Case()
    for pid, day in ((1, "2011-01-02"), (2, "2011-01-03"), (3, "2011-01-31")):
        c.person(pid)
        c.target(pid, "2011-02-01", "2011-03-01")
        c.outcome(pid, day)
    # Person 1's outcome is 30 days before: outside the window. Person 2's is 29 days before.
    rows, attrition = c.run(tmp_path, prior_outcome_lookback=30)
    assert persons(rows) == [1]
    assert attrition[1][0] == "No prior outcome"


def test_prior_outcome_with_a_risk_window_anchored_on_cohort_end(tmp_path: Path) -> None:
    # With startAnchor "cohort end" an outcome during the exposure is before the risk window.
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-03-01")
    c.outcome(1, "2011-02-01")
    c.person(2)
    c.target(2, "2011-01-01", "2011-03-01")
    rows, _ = c.run(tmp_path, start_anchor="cohort end", risk_window_start=1, risk_window_end=30)
    assert persons(rows) == [2]


def test_risk_window_is_clipped_to_observation_and_to_max_days(tmp_path: Path) -> None:
    c = Case()
    c.person(1, end="2011-01-20")
    c.target(1, "2011-01-01", "2011-01-05")
    c.person(2)
    c.target(2, "2011-01-01", "2011-06-01")
    rows, _ = c.run(tmp_path, risk_window_end=30, max_days_at_risk=60)
    by = {r["person"]: r for r in rows}
    assert by[1]["risk_end"] == 19  # the observation period's end
    assert by[2]["risk_end"] == 60  # start + max_days_at_risk


def test_censoring_at_a_new_risk_window_works_across_arms(tmp_path: Path) -> None:
    # Person 1 starts the comparator while still at risk on the target: the target window
    # ends the day before the comparator window starts.
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-02-01")
    c.comparator(1, "2011-02-15", "2011-03-01")
    rows, attrition = c.run(tmp_path, risk_window_end=30, censor_at_new_risk_window=True)
    target = next(r for r in rows if r["treatment"] == 1)
    assert target["risk_end"] == (D("2011-02-14") - D("2011-01-01")).days
    assert "Censoring at start of new time-at-risk" in [a[0] for a in attrition]


def test_censoring_drops_windows_that_end_before_they_start(tmp_path: Path) -> None:
    # Two entries on consecutive days with risk from day 1: the first window is cut to end
    # before it starts and is dropped.
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-01-10")
    c.target(1, "2011-01-02", "2011-01-10")
    rows, _ = c.run(
        tmp_path, risk_window_start=1, risk_window_end=0, censor_at_new_risk_window=True
    )
    assert [r["start"] for r in rows] == [D("2011-01-02")]


def test_min_days_at_risk_is_risk_end_minus_risk_start(tmp_path: Path) -> None:
    # riskEnd - riskStart >= minDaysAtRisk: a one-day window (end == start) is dropped at 1.
    c = Case()
    c.person(1)
    c.target(1, "2011-01-01", "2011-01-01")
    c.person(2)
    c.target(2, "2011-01-01", "2011-01-02")
    rows, attrition = c.run(tmp_path, min_days_at_risk=1)
    assert persons(rows) == [2]
    assert attrition[-1][0] == "Have at least 1 days at risk"


def test_outcomes_outside_the_observation_period_do_not_count(tmp_path: Path) -> None:
    # GetOutcomes.sql keeps outcomes within the entry's period only (days_to_obs_end).
    c = Case()
    c.person(1, end="2011-01-20")
    c.target(1, "2011-01-01", "2011-01-10")
    c.outcome(1, "2011-01-25")  # after her observation ends
    c.person(2)
    c.target(2, "2011-01-01", "2011-01-10")
    c.outcome(2, "2011-01-15")
    rows, _ = c.run(tmp_path, risk_window_end=30)
    by = {r["person"]: r for r in rows}
    assert by[1]["outcome_count"] == 0 and by[2]["outcome_count"] == 1
    assert by[2]["survival_time"] == 15


def test_attrition_labels_and_order_are_cohortmethods(tmp_path: Path) -> None:
    c = Case()
    for pid in range(1, 5):
        c.person(pid)
        c.target(pid, "2011-01-01", "2011-02-01")
        c.person(pid + 10)
        c.comparator(pid + 10, "2011-01-01", "2011-02-01")
    _, attrition = c.run(
        tmp_path,
        first_exposure_only=True,
        remove_duplicate_subjects="remove all",
        restrict_to_common_period=True,
        washout_period=30,
        censor_at_new_risk_window=True,
    )
    assert [a[0] for a in attrition] == [
        "Original cohorts",
        "First exp. only & removed subs in both cohorts & restrict to common period & "
        "30 days of obs. prior",
        "No prior outcome",
        "Censoring at start of new time-at-risk",
        "Have at least 1 days at risk",
    ]


def test_remove_subjects_in_both_cohorts_still_reads_as_remove_all() -> None:
    assert (
        PopulationSettings(remove_subjects_in_both_cohorts=True).remove_duplicate_subjects
        == "remove all"
    )
    with pytest.raises(ValueError, match="disagree"):
        PopulationSettings(
            remove_subjects_in_both_cohorts=True, remove_duplicate_subjects="keep first"
        )
