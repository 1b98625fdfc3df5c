"""Per-covariate balance: the attacker names the covariate only the target person could hold.

The comparative study's researcher lists ``condition_any_time_prior:555`` among the balance
covariates; in one world the target person has that diagnosis before her index date, in the
other nobody has. The SMD would tell the worlds apart (one holder against none); it is
withheld in both, and the rest of the balance before adjustment is the same in both.
"""

from __future__ import annotations

from pathlib import Path

from medlab.analyses.balance import DEFAULT
from tests.acceptance.attacks import worlds as w

SECRET_CONDITION = 555


def _spec() -> w.StudySpec:
    return w.study(
        "balance",
        {
            1: w.cohort(w.DRUG_200),
            2: w.cohort(w.DRUG_210),
            3: w.cohort(w.OUTCOME, qualified_limit="all"),
        },
        [
            {
                "type": "comparative",
                "name": "c",
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {
                    "adjustments": ["none", "stratification"],
                    "km_horizon_days": 360,
                    "balance_covariates": [
                        *DEFAULT,
                        f"condition_any_time_prior:{SECRET_CONDITION}",
                    ],
                },
            }
        ],
    )


def test_a_covariate_only_she_could_hold_shows_nothing_in_either_world(tmp_path: Path) -> None:
    seen = []
    for secret in (True, False):
        store = w.build(tmp_path / str(secret), secret, prior_condition=SECRET_CONDITION)
        view = w.run(_spec(), store, tmp_path / str(secret) / "out")
        (site,) = view["results"]["analyses"][0]["per_site"]
        rows = {r["covariate"]: r for r in site["covariate_balance"]}
        seen.append(rows)
        (payload,) = view["payloads"]
        assert payload["values"]["covariate_balance"].keys() == rows.keys()
    with_it, without = seen
    mine = f"condition_any_time_prior:{SECRET_CONDITION}"
    assert with_it[mine] == without[mine]
    assert with_it[mine]["smd_before"] is None
    assert set(with_it[mine]["smd_after"].values()) == {None}
    assert with_it["gender:8532"]["smd_before"] is not None  # the others are released
    assert {c: r["smd_before"] for c, r in with_it.items()} == {
        c: r["smd_before"] for c, r in without.items()
    }
