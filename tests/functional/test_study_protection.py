"""Study runs under the cell-key method and under differential privacy, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.acceptance.attacks import worlds as w

from medlab.privacy import budget as budgets
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.studies.run import run_study

SPEC = w.study(
    "protected",
    {1: w.cohort(w.CONDITION), 2: w.cohort(w.DRUG_200)},
    [
        {"type": "feasibility", "name": "f", "cohort": 1},
        {"type": "characterization", "name": "ch", "cohorts": [2]},
        {"type": "utilization", "name": "u", "cohort": 1, "drugs": [200, 210]},
    ],
)


def _run(store: Path, out: Path, spec: w.StudySpec = SPEC) -> dict:
    return run_study(spec, [store], out, hub_dir=out.parent / "hub")


def _counts(results: dict) -> list[int]:
    feasibility = results["analyses"][0]
    return [s["persons"] for s in feasibility["funnel"] if s["persons"] is not None] + [
        v for v in feasibility["by_year"].values() if v is not None
    ]


def test_cell_key_counts_are_perturbed_by_persons_and_reproduced(tmp_path: Path) -> None:
    store = w.build(tmp_path, True)
    set_policy(store, ReleasePolicy(count_protection="cell_key"))
    first = _run(store, tmp_path / "one")
    again = _run(store, tmp_path / "two")
    assert first["analyses"] == again["analyses"]  # the same persons, the same perturbation
    counts = _counts(first)
    assert counts and all(n >= 10 for n in counts)
    assert abs(counts[0] - 161) <= 3  # 160 persons and the target, perturbed by at most 3
    (release, *_) = first["disclosure"]["releases"]
    assert release["protection"]["funnel"]["mechanism"] == "cell key"


def test_dp_study_releases_spend_the_project_budget_once(tmp_path: Path) -> None:
    store = w.build(tmp_path, True)
    policy = ReleasePolicy(
        count_protection="differential_privacy",
        differential_privacy=DifferentialPrivacy(enabled=True, epsilon_per_release=0.5),
    )
    set_policy(store, policy)
    budgets.grant(store, "trial", epsilon=2.0)
    spec = SPEC.model_copy(update={"project": "trial"})
    first = _run(store, tmp_path / "one", spec)
    assert budgets.status(store, "trial").epsilon_spent == pytest.approx(1.5)  # 3 releases
    noisy = first["analyses"][0]["funnel"][0]["persons"]
    assert noisy is not None and abs(noisy - 161) < 60
    protection = first["disclosure"]["releases"][0]["protection"]["funnel"]
    assert protection["mechanism"] == "laplace" and protection["interval"] > 0
    # Re-running the same study on the same data returns the same noisy values, for free.
    again = _run(store, tmp_path / "two", spec)
    assert again["analyses"] == first["analyses"]
    assert budgets.status(store, "trial").epsilon_spent == pytest.approx(1.5)
    # Characterization counts entries; one entry per person bounds what one person adds
    # (the cohorts here keep the first entry), so it is released with noise too.
    covariates = first["analyses"][1]["cohorts"][0]["covariates"]
    assert any(c["count"] is not None for c in covariates)
    # Two new releases with 0.5 left: the first spends it, the second is refused before any
    # data is read, saying only what the budget says.
    more = w.study(
        "more",
        {1: w.cohort(w.CONDITION)},
        [
            {"type": "utilization", "name": "u2", "cohort": 1, "drugs": [200], "max_lines": 1},
            {"type": "utilization", "name": "u3", "cohort": 1, "drugs": [210], "max_lines": 1},
        ],
    ).model_copy(update={"project": "trial"})
    refused = _run(store, tmp_path / "three", more)
    assert "refused" not in refused["analyses"][0]
    assert refused["analyses"][1]["refused"].endswith("remaining epsilon 0, rho 0")
    assert budgets.status(store, "trial").epsilon_spent == pytest.approx(2.0)


def test_the_default_prior_outcome_lookback_with_entries_before_1951(tmp_path: Path) -> None:
    """CohortMethod's 99999-day lookback reaches before the earliest date pandas holds when
    an entry is before 1951; it is compared in days, so the study runs."""
    from tests.spec.world import World

    world = World()
    for pid in range(1, 60):
        world.person(pid, yob=1900, start="1930-01-01", end="1960-12-31")
        world.drug(pid, 200 if pid % 2 else 210, "1940-03-01", days_supply=30)
        if pid % 5 == 0:
            world.condition(pid, 102, "1940-06-01")
    store = world.store(tmp_path)
    spec = w.study(
        "old",
        {1: w.cohort(w.DRUG_200), 2: w.cohort(w.DRUG_210), 3: w.cohort(w.OUTCOME)},
        [{"type": "comparative", "name": "c", "target": 1, "comparator": 2, "outcome": 3}],
    )
    results = _run(store, tmp_path / "out", spec)
    attrition = results["analyses"][0]["per_site"][0]["attrition"]
    assert attrition[0]["step"] == "Original cohorts"
