"""Differentially private node queries against a researcher who is trying.

The secret throughout: whether the target person (id 99, the only one with drug 210) has
observation 500. Each attack runs in a world where the target has it and in a world where the
target does not; the attack fails when what the attacker sees does not depend on the secret,
or does not let the secret be computed. The queries ask for epsilon 10 so that the noisy
differencing test (a quarter of it) refuses near populations essentially always.
"""

from __future__ import annotations

import concurrent.futures
import statistics
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError

from medlab.cdm.store import store_lock
from medlab.cohorts.model import parse_definition
from medlab.errors import BudgetError, PolicyError
from medlab.privacy import budget as budgets
from medlab.privacy import gate
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.privacy.query import DPQuery, answer
from medlab.privacy.release import Release, Sums
from tests.spec.world import D, World

POLICY = ReleasePolicy(differential_privacy=DifferentialPrivacy(enabled=True))
EPSILON = 10.0
TARGET = 99
SETS = [
    {"id": 0, "items": [{"concept_id": 100}]},
    {"id": 1, "items": [{"concept_id": 102}]},
    {"id": 2, "items": [{"concept_id": 210}]},
    {"id": 3, "items": [{"concept_id": 500}]},
]
HAS_SECRET = {
    "criteria": [{"criterion": {"domain": "observation", "codeset_id": 3}, "start_window": {}}]
}


def _world(tmp_path: Path, secret: bool) -> Path:
    w = World()
    for pid in range(1, 41):  # cohort A: condition 100; half of them have observation 500
        w.person(pid, yob=1950 + pid % 30)
        w.condition(pid, 100, "2010-01-01")
        if pid <= 20:
            _give_attribute(w, pid)
    for pid in range(41, 91):  # padding: condition 102
        w.person(pid, yob=1960)
        w.condition(pid, 102, "2010-01-01")
    w.person(TARGET, yob=1955)
    w.drug(TARGET, 210, "2010-06-01")
    if secret:
        _give_attribute(w, TARGET)
    return w.store(tmp_path)


def _give_attribute(w: World, pid: int) -> None:
    """Observation 500 (the attribute the attacker is after) for ``pid``."""
    w.add(
        "observation", person_id=pid, observation_concept_id=500, observation_date=D("2009-01-01")
    )


def _cohort(*criteria: dict[str, Any], rule: dict[str, Any] | None = None) -> dict[str, Any]:
    definition: dict[str, Any] = {"concept_sets": SETS, "primary": {"criteria": list(criteria)}}
    if rule:
        definition["inclusion_rules"] = [{"name": "has the attribute", "expression": rule}]
    return definition


def _ask(store: Path, cohort: dict[str, Any], **extra: Any) -> str | float:
    """What the attacker sees: the noisy count, or the refusal."""
    query = DPQuery(
        project="attack",
        cohort=parse_definition(cohort),
        statistic=extra.pop("statistic", "count"),
        epsilon=extra.pop("epsilon", EPSILON),
        **extra,
    )
    try:
        result = answer(store, query, POLICY)
    except PolicyError as exc:
        return f"refused: {exc.message}"
    return next(iter(result.release.values.values()))


@pytest.fixture(params=[True, False], ids=["target-has-it", "target-has-not"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bool]:
    store = _world(tmp_path, request.param)
    budgets.grant(store, "attack", epsilon=1000.0)
    return store, request.param


CONDITION_100 = {"domain": "condition_occurrence", "codeset_id": 0}
CONDITION_102 = {"domain": "condition_occurrence", "codeset_id": 1}
DRUG_210 = {"domain": "drug_exposure", "codeset_id": 2}


def test_differencing_two_overlapping_cohorts(world: tuple[Path, bool]) -> None:
    store, _ = world
    first = _ask(store, _cohort(CONDITION_100, rule=HAS_SECRET))  # A with the attribute
    second = _ask(store, _cohort(CONDITION_100, DRUG_210, rule=HAS_SECRET))  # ... plus target?
    assert isinstance(first, float)
    # Refused whether the populations differ by the target or are identical, so the refusal
    # says nothing either.
    assert isinstance(second, str) and second.startswith("refused")


def test_a_tracker_padding_a_small_set(world: tuple[Path, bool]) -> None:
    store, _ = world
    # Asked directly, a small set gets a noisy answer (no data-dependent refusal to learn
    # from): DP itself protects it.
    small = _cohort({**DRUG_210, "correlated": HAS_SECRET})
    assert isinstance(_ask(store, small), float)
    padding = _ask(store, _cohort(CONDITION_102))
    padded = _ask(store, _cohort(CONDITION_102, {**DRUG_210, "correlated": HAS_SECRET}))
    assert isinstance(padding, float)
    assert isinstance(padded, str) and "refused" in padded  # with or without the target


def test_averaging_a_thousand_repetitions(tmp_path: Path) -> None:
    store = _world(tmp_path, secret=True)
    budgets.grant(store, "attack", epsilon=100.0)
    cohort = _cohort(CONDITION_100, rule=HAS_SECRET)
    with store_lock(store):  # one process asking: the store's database stays open
        answers = [_ask(store, cohort) for _ in range(1000)]
    assert len(set(answers)) == 1  # the cached noisy answer, not fresh noise
    assert statistics.fmean(answers) == answers[0]  # averaging gains nothing
    assert budgets.status(store, "attack").epsilon_spent == pytest.approx(EPSILON)  # once


def test_a_one_hot_weighted_mean(tmp_path: Path) -> None:
    # DataSHIELD's attack: weight the target by a huge factor so that a "mean" is its value.
    ages = [40.0 + i % 20 for i in range(60)]
    target_age = 71.0
    weighted = [*ages, 1e6 * target_age]
    release = Release(
        "characterization",
        "node",
        (
            Sums(
                "sum:weighted_age",
                len(weighted),
                {"sum": sum(weighted)},
                largest=tuple(sorted(weighted, reverse=True)[:2]),
                magnitude=sum(abs(v) for v in weighted),
            ),
        ),
    )
    node = gate.NodeSide()
    released = gate.apply(ReleasePolicy(), release, node)
    assert released.values["sum:weighted_age"]["mean"] is None
    assert "dominance" in node.journal[0].rule
    # Through a DP query the attacker cannot weight anyone: values are clamped to the bounds
    # the query states, and the noise grows with them, so wide bounds drown the answer.
    store = _world(tmp_path, secret=True)
    budgets.grant(store, "attack", epsilon=10.0)
    wide = DPQuery(
        project="attack",
        cohort=parse_definition(_cohort(CONDITION_100)),
        statistic="mean",
        field="age",
        bounds=(0.0, 1e6),
    )
    low, high = answer(store, wide, POLICY).release.intervals["mean"]  # epsilon 1
    assert high - low > 1000  # wider than any human age range


def test_overspending_with_a_hundred_concurrent_requests(tmp_path: Path) -> None:
    store = _world(tmp_path, secret=True)
    budgets.grant(store, "race", epsilon=1.0)

    def request(i: int) -> bool:
        try:
            budgets.charge(store, "race", epsilon=0.1, query_key=f"q{i}", purpose="race")
        except BudgetError:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        granted = list(pool.map(request, range(100)))
    assert sum(granted) == 10
    status = budgets.status(store, "race")
    assert status.epsilon_spent == pytest.approx(1.0) and status.epsilon_remaining < 1e-9
    with duckdb.connect(str(store), read_only=True) as con:
        (rows,) = con.execute(
            "SELECT count(*) FROM medlab.privacy_spend WHERE project = 'race'"
        ).fetchone()  # type: ignore[misc]
    assert rows == 10


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), "lots"])
def test_bad_epsilon_is_refused_and_spends_nothing(tmp_path: Path, bad: Any) -> None:
    store = _world(tmp_path, secret=True)
    budgets.grant(store, "p", epsilon=1.0)
    with pytest.raises(BudgetError):
        budgets.charge(store, "p", epsilon=bad, query_key="k", purpose="bad")
    cohort = parse_definition(_cohort(CONDITION_100))
    with pytest.raises(ValidationError, match="epsilon"):  # refused before the node sees it
        DPQuery(project="p", cohort=cohort, statistic="count", epsilon=bad)
    assert budgets.status(store, "p").epsilon_spent == 0


def test_a_refused_query_changes_nothing(tmp_path: Path) -> None:
    store = _world(tmp_path, secret=True)
    budgets.grant(store, "p", epsilon=0.3)
    query = DPQuery(project="p", cohort=parse_definition(_cohort(CONDITION_102)), statistic="count")
    with pytest.raises(BudgetError, match=r"remaining epsilon 0\.3"):
        answer(store, query, POLICY)  # needs 1.0: refused before the data is read
    with duckdb.connect(str(store), read_only=True) as con:
        tables = {
            name: con.execute(f"SELECT count(*) FROM medlab.{name}").fetchone()[0]  # type: ignore[index]
            for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'medlab'"
            ).fetchall()
            if name.startswith("privacy_")
        }
    # The budget table holds the grant; nothing was spent, cached or audited.
    assert all(n == 0 for name, n in tables.items() if name != "privacy_budget"), tables
    assert budgets.status(store, "p").epsilon_spent == 0


METACHARACTERS = "x'); DROP TABLE person; -- \" \\ ` ; /* */ %s {0} $1 ?"


def test_sql_metacharacters_in_every_string_field(tmp_path: Path) -> None:
    from medlab.cdm.store import open_store
    from medlab.studies.run import run_study
    from medlab.studies.spec import StudySpec

    store = _world(tmp_path, secret=True)
    with open_store(store, read_only=True) as con:
        (persons_before,) = con.execute("SELECT count(*) FROM person").fetchone()  # type: ignore[misc]
    sets = [{**s, "name": f"{METACHARACTERS} set {s['id']}"} for s in SETS]
    cohort = {
        "name": METACHARACTERS,
        "description": METACHARACTERS,
        "concept_sets": sets,
        "primary": {"criteria": [CONDITION_100]},
        "inclusion_rules": [{"name": METACHARACTERS, "expression": HAS_SECRET}],
    }
    spec = StudySpec.model_validate(
        {
            "name": METACHARACTERS,
            "description": METACHARACTERS,
            "cohorts": [
                {"id": 1, "name": METACHARACTERS, "definition": cohort},
                {"id": 2, "name": METACHARACTERS + "2", "definition": _cohort(CONDITION_102)},
            ],
            "analyses": [
                {"type": "characterization", "name": "characteristics", "cohorts": [1, 2]},
                {"type": "feasibility", "name": "funnel", "cohort": 1},
            ],
        }
    )
    # Analysis names name result files, so they are identifiers, checked before anything runs.
    with pytest.raises(ValidationError, match=r"analyses\.0\.characterization\.name"):
        StudySpec.model_validate(
            {
                **spec.model_dump(mode="json"),
                "analyses": [{"type": "characterization", "name": "../x'; --", "cohorts": [1]}],
            }
        )
    results = run_study(spec, [store], tmp_path / "out")
    assert results["study"] == METACHARACTERS
    funnel = next(a for a in results["analyses"] if a["type"] == "feasibility")["funnel"]
    assert funnel[-1]["criterion"] == METACHARACTERS
    with open_store(store, read_only=True) as con:
        (persons_after,) = con.execute("SELECT count(*) FROM person").fetchone()  # type: ignore[misc]
        (name,) = con.execute(
            "SELECT cohort_definition_name FROM results.cohort_definition "
            "WHERE cohort_definition_id = 1"
        ).fetchone()  # type: ignore[misc]
    assert persons_after == persons_before and name == METACHARACTERS
    budgets.grant(store, METACHARACTERS, epsilon=5.0)
    query = DPQuery(
        project=METACHARACTERS[:200], cohort=parse_definition(cohort), statistic="count"
    )
    budgets.grant(store, METACHARACTERS[:200], epsilon=5.0)
    try:
        assert answer(store, query, POLICY).budget.project == METACHARACTERS[:200]
    except PolicyError as exc:  # the noisy differencing test may refuse: as safely
        assert "refused" in exc.message
