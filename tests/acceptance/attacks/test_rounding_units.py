"""Deterministic rounding with known units: adding known persons one by one to a secret set.

Midpoint-6 is a function of the count: releasing P, P + u1, P + u1 + u2, … (each u a person the
attacker knows is in the data) shows where the rounded value steps, which pins |P| mod 6, and
with the rounded |P| the exact count. Each of those populations is within one person of the one
before, so the differencing audit withholds all but the first, in both worlds. The secret:
whether the target is in P (P: persons with observation 500; the units: drug 200 users the
attacker knows by their pid).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import ReleasePolicy
from tests.acceptance.attacks import worlds as w

OBSERVED = {"domain": "observation", "codeset_id": 5}


def _unit(pid: int) -> dict:
    """A criterion only person ``pid`` meets: her own drug 200 start date."""
    import datetime as dt

    start = dt.date(2011, 1, 1) + dt.timedelta(days=pid % 90)
    return {
        "domain": "drug_exposure",
        "codeset_id": 1,
        "start_date": {"op": "eq", "value": start.isoformat()},
    }


def _releases(store: Path, out: Path) -> list[int | None]:
    """The attacker's run: P plus 0, 1, …, 5 known units, one study each; the entries count."""
    sets = [*w.SETS, w.concept_set(5, 500)]
    shown = []
    # Units: drug 200 users (odd pids) without observation 500, each alone on her start date.
    units = [pid for pid in (1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23)][:5]
    for i in range(6):
        criteria = [OBSERVED, *(_unit(pid) for pid in units[:i])]
        definition = {"concept_sets": sets, "primary": {"criteria": criteria, "limit": "first"}}
        spec = w.study(
            f"P plus {i}", {1: definition}, [{"type": "feasibility", "name": "f", "cohort": 1}]
        )
        view = w.run(spec, store, out / f"run{i}")
        shown.append(view["results"]["analyses"][0]["eligible"])
    return shown


@pytest.mark.parametrize("protection", ["rounding", "cell_key"])
def test_known_units_do_not_pin_the_count(tmp_path: Path, protection: str) -> None:
    views = []
    for secret in (True, False):
        store = w.build(tmp_path / str(secret), secret)
        set_policy(store, ReleasePolicy(count_protection=protection))  # type: ignore[arg-type]
        views.append(_releases(store, tmp_path / str(secret)))
    with_target, without = views
    # The first release shows P (rounded or perturbed); every later one is withheld.
    assert with_target[0] is not None and without[0] is not None
    assert with_target[1:] == without[1:] == [None] * 5
