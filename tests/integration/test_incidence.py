"""Incidence rates: hand-checked person-time, the planted rate, and exact pooling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.helpers import SCOPE, released, split_store
from tests.spec.world import World

from medlab.analyses import incidence
from medlab.analyses.incidence import IncidenceSettings
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition

WHOLE_OBSERVATION = {"primary": {"criteria": [{"domain": "observation_period"}]}}


def _every(concept: int, **extra: object) -> dict[str, object]:
    return {
        "concept_sets": [{"id": 0, "items": [{"concept_id": concept}]}],
        "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
        "qualified_limit": "all",
        "end_strategy": {"type": "date_offset", "field": "start", "offset": 0},
        **extra,
    }


def _overall(store: Path, settings: IncidenceSettings) -> incidence.StratumCount:
    with open_store(store, read_only=True) as con:
        counts = incidence.local(con, 1, 2, settings)
    return next(c for c in counts if c.grouping == "overall")


def test_person_time_first_occurrence_and_clean_window(tmp_path: Path) -> None:
    w = World()
    w.person(1)  # observed 2000-01-01 .. 2020-12-31: 7,671 days
    for day in ("2005-01-01", "2005-01-20", "2010-01-01"):
        w.condition(1, 100, day)
    store = w.store(tmp_path)
    generate(store, parse_definition(WHOLE_OBSERVATION), 1)
    generate(store, parse_definition(_every(100)), 2)
    first = _overall(store, IncidenceSettings())
    assert (first.person_days, first.outcomes) == (1828, 1)  # stops at 2005-01-01
    recurrent = _overall(store, IncidenceSettings(first_occurrence_only=False, clean_window=30))
    # 2005-01-20 falls in the clean window of 2005-01-01; 2 x 30 days are not at risk.
    assert (recurrent.person_days, recurrent.outcomes) == (7671 - 60, 2)
    every = _overall(store, IncidenceSettings(first_occurrence_only=False))
    assert (every.person_days, every.outcomes) == (7671, 3)


def test_year_strata_split_time_at_risk_across_calendar_years(tmp_path: Path) -> None:
    w = World()
    w.person(1, start="2004-07-01", end="2006-03-31")
    for day in ("2005-01-01", "2005-01-20", "2006-02-01"):
        w.condition(1, 100, day)
    store = w.store(tmp_path)
    generate(store, parse_definition(WHOLE_OBSERVATION), 1)
    generate(store, parse_definition(_every(100)), 2)
    settings = IncidenceSettings(first_occurrence_only=False, clean_window=30)
    with open_store(store, read_only=True) as con:
        counts = incidence.local(con, 1, 2, settings)
    years = [c for c in counts if c.grouping == "year"]
    by_year = {c.year: (c.person_days, c.outcomes) for c in years if c.persons}
    # 2004-07-01..12-31: 184 days. 2005: 365 less the clean window 01-02..01-31 (30 days).
    # 2006-01-01..03-31: 90 days less 02-02..03-03 (30 days); outcomes 2005-01-01, 2006-02-01.
    assert by_year == {"2004": (184, 0), "2005": (335, 1), "2006": (60, 1)}
    overall = next(c for c in counts if c.grouping == "overall")
    assert overall.person_days == 184 + 335 + 60 and overall.outcomes == 2
    assert all(c.persons == 1 and c.entries == 1 for c in years if c.person_days)
    # Every calendar row is listed, with or without anyone in it: before, 1950..2030, after.
    assert [c.year for c in years] == ["before", *map(str, range(1950, 2031)), "after"]


def test_washout_and_offsets(tmp_path: Path) -> None:
    w = World()
    w.person(1)
    w.condition(1, 102, "2010-06-01")
    w.condition(1, 100, "2010-05-22")  # 10 days before time at risk
    store = w.store(tmp_path)
    target = _every(102, end_strategy={"type": "date_offset", "field": "start", "offset": 365})
    generate(store, parse_definition(target), 1)
    generate(store, parse_definition(_every(100)), 2)
    assert _overall(store, IncidenceSettings()).persons == 0  # prior outcome
    strict = IncidenceSettings(first_occurrence_only=False, washout_days=30)
    assert _overall(store, strict).persons == 0
    loose = _overall(store, IncidenceSettings(first_occurrence_only=False, washout_days=5))
    assert (loose.person_days, loose.outcomes) == (366, 0)
    shifted = _overall(
        store,
        IncidenceSettings(
            first_occurrence_only=False,
            tar_start_offset=1,
            tar_end_anchor="start",
            tar_end_offset=30,
        ),
    )
    assert shifted.person_days == 30


@pytest.fixture(scope="module")
def synth_incidence(synth_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("incidence") / "hospital_b.duckdb"
    shutil.copy(synth_study / "hospital_b.duckdb", store)
    generate(store, parse_definition(WHOLE_OBSERVATION), 1)
    generate(store, parse_definition(_every(440448)), 2)  # appendicitis
    return store


def test_planted_incidence_is_recovered(synth_study: Path, synth_incidence: Path) -> None:
    truth = json.loads((synth_study / "truth.json").read_text())
    planted = next(e for e in truth["effects"] if e["id"] == "appendicitis_incidence")
    with open_store(synth_incidence, read_only=True) as con:
        counts = incidence.local(con, 1, 2)
        release = incidence.to_release(counts, "b", SCOPE, 1, 2, IncidenceSettings())
        rates = incidence.combine([released(release)])
    overall = next(r for r in rates if r.grouping == "overall")
    assert overall.ci_low <= planted["rate_per_1000_person_years"] <= overall.ci_high
    assert overall.outcomes > 30
    # Strata partition the whole: their outcomes and person-time add up to the total.
    by_sex = [r for r in rates if r.grouping == "sex"]
    assert sum(r.outcomes for r in by_sex) == overall.outcomes
    assert sum(r.person_years for r in by_sex) == pytest.approx(overall.person_years)


def test_node_sums_equal_the_union(synth_incidence: Path, tmp_path: Path) -> None:
    settings = IncidenceSettings(first_occurrence_only=False, clean_window=14)
    with open_store(synth_incidence, read_only=True) as con:
        counts = incidence.local(con, 1, 2, settings)
        whole = incidence.combine(
            [released(incidence.to_release(counts, "all", SCOPE, 1, 2, settings))]
        )
    parts = []
    for copy in split_store(synth_incidence, 3, tmp_path):
        with open_store(copy, read_only=True) as con:
            counts = incidence.local(con, 1, 2, settings)
        assert any(c.persons for c in counts)
        parts.append(released(incidence.to_release(counts, copy.stem, SCOPE, 1, 2, settings)))
    assert incidence.combine(parts) == whole
