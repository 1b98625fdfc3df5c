"""DP queries on a node: statistics, budget bookkeeping against OpenDP's composition."""

from __future__ import annotations

from pathlib import Path

import opendp.prelude as dp
import pytest
from tests.spec.world import World

from medlab.cohorts.model import parse_definition
from medlab.errors import PolicyError
from medlab.privacy import budget as budgets
from medlab.privacy import dp as mech
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.privacy.query import AUDIT_SHARE, DPQuery, answer

LAPLACE = ReleasePolicy(differential_privacy=DifferentialPrivacy(enabled=True))
GAUSSIAN = ReleasePolicy(
    differential_privacy=DifferentialPrivacy(enabled=True, mechanism="gaussian")
)
EVERYONE = parse_definition({"primary": {"criteria": [{"domain": "observation_period"}]}})


@pytest.fixture
def store(tmp_path: Path) -> Path:
    w = World()
    for pid in range(1, 201):
        w.person(pid, yob=1940 + pid % 50, gender=8507 if pid % 3 else 8532)
    path = w.store(tmp_path)
    budgets.grant(path, "p", epsilon=2.0, rho=0.5)
    return path


def _q(**fields: object) -> DPQuery:
    return DPQuery(project="p", cohort=EVERYONE, **fields)  # type: ignore[arg-type]


def test_budget_spent_equals_opendp_composition_of_the_answers(store: Path) -> None:
    answers = [
        answer(store, _q(statistic="count", epsilon=0.2), LAPLACE),
        answer(store, _q(statistic="histogram", field="sex", epsilon=0.3), LAPLACE),
        answer(store, _q(statistic="mean", field="age", bounds=(0, 120), epsilon=0.5), LAPLACE),
    ]
    # Each answer's measurements, as OpenDP states their loss: a quarter of each query's
    # epsilon pays for the noisy differencing test (a count), the rest for the answer ...
    share = AUDIT_SHARE
    measurements = [
        (mech.count_measurement("laplace", 0.2 * share)[0], 0.2 * share),
        (mech.count_measurement("laplace", 0.2 * (1 - share))[0], 0.2 * (1 - share)),
        (mech.count_measurement("laplace", 0.3 * share)[0], 0.3 * share),
        (mech.vector_measurement("laplace", 0.3 * (1 - share))[0], 0.3 * (1 - share)),
        (mech.count_measurement("laplace", 0.5 * share)[0], 0.5 * share),
        (mech.sum_measurement("laplace", 0.25 * (1 - share), (0.0, 120.0))[0], 0.25 * (1 - share)),
        (mech.count_measurement("laplace", 0.25 * (1 - share))[0], 0.25 * (1 - share)),
    ]
    assert all(m.map(1) <= e * (1 + 1e-6) for m, e in measurements)
    # At epsilon 1 the differencing test's share (0.25) gives Laplace scale 4, as the README
    # says: a population one person from an earlier one is refused about 95% of the time.
    assert mech.count_measurement("laplace", 0.25)[1] == pytest.approx(4.0, rel=1e-3)
    # ... composed by OpenDP (basic composition needs one input domain: count stand-ins with
    # the same losses).
    stand_ins = [mech.count_measurement("laplace", e)[0] for _, e in measurements]
    composed = dp.c.make_composition(stand_ins).map(1)
    spent = budgets.status(store, "p").epsilon_spent
    assert spent == pytest.approx(composed, rel=1e-6) == pytest.approx(1.0)
    assert answers[-1].budget.epsilon_remaining == pytest.approx(1.0)
    histogram = answers[1].release.values
    assert set(histogram) == {"male", "female", "other"}
    # 200 persons: 133 male, 67 female; Laplace(1/0.225) noise stays well inside 40.
    assert abs(histogram["male"] - 133) < 40 and abs(histogram["female"] - 67) < 40


def test_gaussian_answers_spend_rho(store: Path) -> None:
    result = answer(store, _q(statistic="count", rho=0.125), GAUSSIAN)
    assert result.release.mechanism == "gaussian" and result.release.rho == 0.125
    # The answer has three quarters of the rho: sigma = 1 / sqrt(2 * 0.75 * rho).
    assert result.release.scale == pytest.approx(1 / (2 * 0.75 * 0.125) ** 0.5, rel=1e-3)
    assert budgets.status(store, "p").rho_spent == pytest.approx(0.125)


def test_contingency_tables_and_binned_histograms(store: Path) -> None:
    table = answer(
        store,
        _q(statistic="histogram", field="age", by="sex", bounds=(0, 100), bin_width=25),
        LAPLACE,
    ).release.values
    assert len(table) == 4 * 3 and "50-75|male" in table


def test_dp_is_off_unless_the_policy_turns_it_on(store: Path) -> None:
    with pytest.raises(PolicyError, match="differential privacy is off"):
        answer(store, _q(statistic="count"), ReleasePolicy())
    assert budgets.status(store, "p").epsilon_spent == 0
