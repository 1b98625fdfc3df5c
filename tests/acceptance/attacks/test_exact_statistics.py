"""Exact statistics beside rounded counts: a mean must not give the count away.

The attack: a count is rounded (1317), but when the mean of a whole-number value (age, the
Charlson score) is exact, only one count in the rounding band makes ``n * mean`` whole, so the
exact count (and with it one person's membership) is recovered; a sum and a sum of squares
shown exactly bound the count from below (``n >= sum^2 / sum of squares``), which pins it for
nearly constant values. Now a value leaves as the rounded count, its mean and its SD, each
rounded until every count in the band admits whole numbers with that mean and SD. The secret:
whether the target is in the cohort.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.precision import _consistent, mean_and_sd_steps
from tests.acceptance.attacks import worlds as w

OBSERVED = {"domain": "observation", "codeset_id": 5}


def _spec() -> w.StudySpec:
    definition = w.cohort(OBSERVED)
    definition["concept_sets"] = [*w.SETS, w.concept_set(5, 500)]
    return w.study(
        "with observation 500",
        {1: definition},
        [{"type": "characterization", "name": "ch", "cohorts": [1]}],
    )


def _consistent_counts(store: Path, released: dict, covariate: str, top: int) -> set[int]:
    """Every count in the band for which whole numbers in 0..top exist with the released
    mean and SD, within the steps the gate rounded them to (white box: the steps come from
    the true values, which is more than an attacker knows)."""
    from medlab.cdm.store import open_store

    sql = {
        "age": "year(c.cohort_start_date) - p.year_of_birth",
        "charlson_index": "0",  # the world's vocabulary holds no Charlson concept
    }[covariate]
    with open_store(store, read_only=True) as con:
        values = [
            int(v)
            for (v,) in con.execute(
                f"""SELECT {sql} FROM results.cohort c JOIN person p ON p.person_id = c.subject_id
                    WHERE cohort_definition_id = 1"""
            ).fetchall()
        ]
    band = ReleasePolicy().count_band(released["n"])
    steps = mean_and_sd_steps(
        len(values),
        float(sum(values)),
        float(sum(v * v for v in values)),
        band,
        3,
        (0.0, float(top)),
    )
    assert steps is not None and steps[:2] == (released["mean"], released["sd"])
    mean, sd, mean_step, sd_step = steps
    return {
        n
        for n in range(band[0], band[1] + 1)
        if _consistent(
            n,
            (mean - mean_step / 2, mean + mean_step / 2),
            (max(sd - sd_step / 2, 0.0), sd + sd_step / 2),
            (0.0, float(top)),
        )
    }


def _exact_mean_counts(n_shown: int, mean: float) -> set[int]:
    """The old attack, on an exact mean: the counts that make ``n * mean`` whole."""
    low, high = ReleasePolicy().count_band(n_shown)
    return {n for n in range(low, high + 1) if abs(n * mean - round(n * mean)) < 1e-6}


@pytest.mark.parametrize("secret", [True, False], ids=["in-cohort", "not-in-cohort"])
def test_the_mean_does_not_recover_the_count(tmp_path: Path, secret: bool) -> None:
    store = w.build(tmp_path, secret)
    view = w.run(_spec(), store, tmp_path / "out")
    (payload,) = view["payloads"]
    for covariate, top in (("age", 150), ("charlson_index", 33)):
        released = payload["values"][f"sum:{covariate}"]
        low, high = ReleasePolicy().count_band(released["n"])
        assert set(released) == {"n", "mean", "sd"}  # no sum, no sum of squares
        assert _consistent_counts(store, released, covariate, top) == set(range(low, high + 1))
    # The exact mean the old gate let out would have pinned the count: the attack works
    # when the protection is off, so the test above can fail.
    from medlab.cdm.store import open_store

    with open_store(store, read_only=True) as con:
        ages = [
            a
            for (a,) in con.execute(
                """SELECT year(c.cohort_start_date) - p.year_of_birth FROM results.cohort c
                   JOIN person p ON p.person_id = c.subject_id WHERE cohort_definition_id = 1"""
            ).fetchall()
        ]
    exact = sum(ages) / len(ages)
    shown = ReleasePolicy().round_count(len(ages))
    assert len(_exact_mean_counts(shown, exact)) < len(range(*ReleasePolicy().count_band(shown)))
    # And nothing released equals the exact mean.
    covariates = view["results"]["analyses"][0]["cohorts"][0]["covariates"]
    age = next(c for c in covariates if c["covariate_id"] == "age")
    assert age["mean"] != pytest.approx(exact, abs=1e-9)
