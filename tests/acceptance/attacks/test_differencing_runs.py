"""Differencing across runs: two studies whose cohorts differ by one person.

Incidence: a first run releases the rates of a cohort; a second run, whose target cohort is
the first plus the target (or the first less her), would give her exact follow-up and
outcome by subtraction (person-days, outcomes). Comparative: removing her from the comparator
moves the hazard ratio, the Kaplan-Meier values and equipoise. Both second runs are about a
cohort within one person of one released before, so everything in them is withheld, whether
she has the outcome (the secret) or not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.attacks import worlds as w


def _values(view: dict) -> list[object]:
    """Every number in the released payloads' values."""
    found: list[object] = []
    stack: list[object] = [p["values"] for p in view["payloads"]]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k not in ("time", "step"))
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            found.append(item)
    return found


def _incidence(target: dict) -> w.StudySpec:
    return w.study(
        "incidence",
        {1: target, 2: w.cohort(w.OUTCOME, qualified_limit="all")},
        [{"type": "incidence", "name": "i", "target": 1, "outcome": 2}],
    )


@pytest.mark.parametrize("second", ["plus her", "less her"])
def test_two_incidence_runs_one_person_apart(tmp_path: Path, second: str) -> None:
    seen = []
    for secret in (True, False):
        store = w.build(tmp_path / str(secret), secret)
        if second == "plus her":  # the first run leaves her out, the second adds her back
            first = w.cohort(w.CONDITION, exclude_marked=True)
            then = w.cohort(w.CONDITION)
        else:
            first = w.cohort(w.CONDITION)
            then = w.cohort(w.CONDITION, exclude_marked=True)
        one = w.run(_incidence(first), store, tmp_path / str(secret) / "one")
        two = w.run(_incidence(then), store, tmp_path / str(secret) / "two")
        overall = one["results"]["analyses"][0]["rates"][0]
        assert overall["grouping"] == "overall" and overall["persons"]  # the first is released
        seen.append(two)
    with_outcome, without = seen
    assert _values(with_outcome) == _values(without) == []  # nothing of the second run shown
    assert with_outcome == without


def _comparative(comparator: dict) -> w.StudySpec:
    return w.study(
        "comparative",
        {1: w.cohort(w.DRUG_200), 2: comparator, 3: w.cohort(w.OUTCOME, qualified_limit="all")},
        [
            {
                "type": "comparative",
                "name": "c",
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {"adjustments": ["none", "stratification"], "km_horizon_days": 360},
            }
        ],
    )


def test_a_comparator_less_one_person_shows_nothing(tmp_path: Path) -> None:
    seen = []
    for secret in (True, False):
        store = w.build(tmp_path / str(secret), secret)
        first = w.run(_comparative(w.cohort(w.DRUG_210)), store, tmp_path / str(secret) / "1")
        assert first["results"]["analyses"][0]["estimates"][0]["hr"] is not None  # released
        less = w.cohort(w.DRUG_210, exclude_marked=True)
        second = w.run(_comparative(less), store, tmp_path / str(secret) / "2")
        again = second["results"]["analyses"][0]
        assert _values(second) == []
        (payload,) = second["payloads"]  # the refusal names the rule, never the persons
        assert "within 9 persons of one released before" in payload["protection"]["audit"]
        assert all(e["hr"] is None for e in again["estimates"])
        site = again["per_site"][0]
        assert site["equipoise"] is None
        assert all(p["survival"] is None for rows in site["km"].values() for p in rows)
        seen.append(second)
    assert seen[0] == seen[1]
