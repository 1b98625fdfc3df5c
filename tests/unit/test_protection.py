"""Precision, the cell-key method, policy tightening and the differencing audit, rule by rule."""

from __future__ import annotations

import statistics
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medlab.errors import PolicyError
from medlab.privacy import cellkey, gate
from medlab.privacy.audit import Auditor
from medlab.privacy.persons import PersonKeys
from medlab.privacy.policy import CellKey, Precision, ReleasePolicy, tighten
from medlab.privacy.precision import _consistent, mean_and_sd_steps, nice_step, round_to
from medlab.privacy.release import Cells, Population, Release, Statistic, Sums

SECRET = bytes(range(32))


# -- precision ----------------------------------------------------------------------------


def test_significant_digits_and_the_finest_step() -> None:
    assert round_to(0.7388486465878765, 2) == 0.74
    assert round_to(1.23456, 3) == 1.23
    assert round_to(1234.5, 3) == 1230.0
    assert round_to(None, 3) is None and round_to(float("nan"), 3) is None
    assert round_to(0.7388486465878765, None) == 0.7388486465878765  # precision: none
    assert [nice_step(x) for x in (0.07, 0.013, 0.2, 3.0)] == [0.1, 0.02, 0.2, 5.0]
    # A share of 13..18 persons is never shown finer than 1/13 (a step of 0.1).
    assert round_to(7 / 15, 2, 1 / 13) == 0.5


@given(n=st.integers(10, 5000), share=st.floats(0.01, 0.99))
def test_a_proportion_never_pins_its_count(n: int, share: float) -> None:
    """For every count the rounding band allows, some whole numerator matches the released
    proportion, so the proportion tells nothing the rounded count does not."""
    policy = ReleasePolicy()
    k = round(share * n)
    shown = policy.round_count(n)
    low, high = policy.count_band(shown)
    value = gate.apply(
        policy,
        Release("comparative", "s", (Statistic("equipoise", k / n, n, "proportion"),)),
    ).values["equipoise"]
    if value is None:
        return
    # The attacker knows the policy: for every count in the band, some numerator gives the
    # same released value, so the value tells nothing about which count it is.
    for m in range(low, high + 1):
        assert any(round_to(j / m, 2, 1 / low) == value for j in range(m + 1)), (m, value)


def _age_sums(values: list[int]) -> Sums:
    return Sums(
        "sum:age",
        len(values),
        {"sum": float(sum(values)), "sum_squares": float(sum(v * v for v in values))},
        tuple(sorted(values)[-2:]),
        float(sum(values)),
        value_range=(0.0, 150.0),
    )


def test_sums_leave_as_count_mean_and_sd() -> None:
    ages = [60 + (i * 7) % 23 for i in range(40)]
    released = gate.apply(
        ReleasePolicy(), Release("characterization", "s", (_age_sums(ages),))
    ).values["sum:age"]
    assert released["n"] == 39 and set(released) == {"n", "mean", "sd"}
    assert released["mean"] == pytest.approx(statistics.fmean(ages), abs=0.5)
    assert released["sd"] == pytest.approx(statistics.stdev(ages), abs=0.5)


@given(
    ages=st.lists(st.integers(0, 100), min_size=10, max_size=60),
    spread=st.integers(0, 3),
)
def test_no_count_in_the_band_is_ruled_out_by_mean_and_sd(ages: list[int], spread: int) -> None:
    """Nearly constant values were the worst case: with the sum and sum of squares shown,
    n >= sum^2 / sum of squares pinned the count. Now for every count the rounding band
    allows there are whole numbers with the released mean and SD (within their steps)."""
    values = [a // (1 + 20 * spread) for a in ages]  # spread 0: as drawn; else near-constant
    policy = ReleasePolicy()
    n = len(values)
    band = policy.count_band(policy.round_count(n))
    shown = mean_and_sd_steps(
        n, float(sum(values)), float(sum(v * v for v in values)), band, 3, (0.0, 150.0)
    )
    assert shown is not None
    mean, sd, mean_step, sd_step = shown
    for m in range(band[0], band[1] + 1):
        assert _consistent(
            m,
            (mean - mean_step / 2, mean + mean_step / 2),
            (max(sd - sd_step / 2, 0.0), sd + sd_step / 2),
            (0.0, 150.0),
        ), m


# -- cell key -----------------------------------------------------------------------------


def test_the_cell_key_perturbation_is_keyed_by_the_persons() -> None:
    keys = PersonKeys(SECRET)
    settings = CellKey()
    population = frozenset(range(100, 140))

    def shown(persons: frozenset[int]) -> int:
        key = keys.cell_key(persons)
        return len(persons) + cellkey.perturbation(
            len(persons), key, settings.max_perturbation, settings.variance, 10
        )

    assert shown(population) == shown(frozenset(sorted(population)))  # the same persons
    draws = [shown(population | {1000 + i}) - 41 for i in range(2000)]
    assert set(draws) <= set(range(-3, 4))
    assert abs(statistics.fmean(draws)) < 0.15  # centred
    assert 1.0 < statistics.pvariance(draws) < 2.0  # about the set variance (1.5)
    # Never below the minimum cell count.
    assert min(shown(frozenset(range(i, i + 10))) for i in range(500)) >= 10


def test_cell_key_counts_in_a_release_are_perturbed_by_persons(tmp_path: Path) -> None:
    policy = ReleasePolicy(count_protection="cell_key")
    persons = frozenset(range(1, 51))
    cells = Cells(
        "t",
        {"a": {"n": 50}},
        populations={"a": Population("pop:a", persons)},
    )
    node = gate.NodeSide(keys=PersonKeys(SECRET))
    first = gate.apply(policy, Release("incidence", "s", (cells,)), node).values["t"]["a"]["n"]
    again = gate.apply(policy, Release("incidence", "s", (cells,)), node).values["t"]["a"]["n"]
    assert first == again and abs(first - 50) <= 3
    with pytest.raises(ValueError, match="cell-key"):
        gate.apply(policy, Release("incidence", "s", (cells,)))  # no keys: a programming error


# -- tightening ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"min_cell_count": 5}, "$.min_cell_count"),
        ({"allow_zeros": True}, "$.allow_zeros"),
        ({"rounding": "none"}, "$.rounding"),
        ({"count_protection": "cell_key"}, "$.count_protection"),
        ({"precision": "none"}, "$.precision"),
        ({"precision": {"ratio": 6}}, "$.precision.ratio"),
        ({"dominance": {"k": 0.99}}, "$.dominance.k"),
        ({"min_group_size": 2}, "$.min_group_size"),
        ({"differential_privacy": {"enabled": True}}, "$.differential_privacy.enabled"),
        ({"record_level_export": True}, "$.record_level_export"),
    ],
)
def test_a_request_may_not_loosen_the_nodes_policy(request_: dict, field: str) -> None:
    with pytest.raises(PolicyError, match=field.replace("$", r"\$").replace(".", r"\.")):
        tighten(ReleasePolicy(), request_, "request.yaml")


def test_a_request_may_tighten_it() -> None:
    node = ReleasePolicy(min_cell_count=5, rounding="none", precision=Precision(ratio=4))
    tight = tighten(node, {"min_cell_count": 11, "rounding": "midpoint6", "version": "x"}, "r")
    assert (tight.min_cell_count, tight.rounding, tight.version) == (11, "midpoint6", "x")
    assert tight.precision == Precision(ratio=4)  # what the request leaves out stays the node's
    # Differential privacy may replace the node's protection where the node allows DP.
    dp_node = ReleasePolicy(differential_privacy={"enabled": True})  # type: ignore[arg-type]
    stronger = tighten(dp_node, {"count_protection": "differential_privacy"}, "r")
    assert stronger.count_protection == "differential_privacy"
    assert tighten(node, None, "r") is node


# -- the differencing audit ---------------------------------------------------------------


def _auditor(tmp_path: Path) -> Auditor:
    con = duckdb.connect(str(tmp_path / "audit.duckdb"))
    con.execute("CREATE SCHEMA medlab")
    return Auditor(con, PersonKeys(SECRET), 10)


def _pop(key: str, persons: set[int] | range, family: str, kind: str = "cohort") -> Population:
    return Population(key, frozenset(persons), kind, (family,))


def test_near_and_identical_populations_of_other_definitions_are_flagged(
    tmp_path: Path,
) -> None:
    audit = _auditor(tmp_path)
    audit.begin("r1")
    assert not audit.flagged(_pop("A", range(100), "a"))
    audit.save()
    audit.begin("r2")
    assert audit.flagged(_pop("A+1", [*range(100), 500], "b"))  # one more person
    assert audit.flagged(_pop("A'", range(100), "c"))  # the same persons, another definition
    assert not audit.flagged(_pop("A+10", [*range(100), *range(500, 510)], "d"))
    assert not audit.flagged(_pop("A", range(100), "a"))  # the same definition: reused
    assert not audit.flagged(_pop("A+1 stratum", [*range(100), 500], "b", "incidence"))
    audit.save()
    # Decisions are kept: the same key gets the same answer in a later run.
    later = Auditor(audit.con, PersonKeys(SECRET), 10)
    later.begin("r3")
    assert later.flagged(_pop("A+1", [*range(100), 500], "b"))
    assert not later.flagged(_pop("A", range(100), "a"))


def test_the_same_definition_on_a_later_snapshot(tmp_path: Path) -> None:
    """A load that changes a released cohort by a few persons must not let its next release
    give them away; a load that leaves it as it was changes nothing."""

    def cohort(persons: set[int] | range, snapshot: str) -> Population:
        return Population(f"pop:A@{snapshot}", frozenset(persons), "cohort", ("a",), snapshot)

    audit = _auditor(tmp_path)
    audit.begin("r1")
    assert not audit.flagged(cohort(range(100), "s1"))
    audit.save()
    audit.begin("r2")
    assert not audit.flagged(cohort(range(100), "s2"))  # unchanged by the load
    assert audit.flagged(cohort([*range(100), 500], "s3"))  # one person more
    assert not audit.flagged(cohort([*range(100), *range(500, 520)], "s4"))


def test_populations_of_one_family_are_not_compared(tmp_path: Path) -> None:
    audit = _auditor(tmp_path)
    audit.begin("r1")
    assert not audit.flagged(_pop("rows:x", range(50), "a", "characterization"))
    audit.save()
    audit.begin("r2")
    assert not audit.flagged(_pop("rows:y", range(51), "a", "characterization"))


def test_a_release_never_saved_is_forgotten(tmp_path: Path) -> None:
    audit = _auditor(tmp_path)
    audit.begin("r1")
    audit.flagged(_pop("A", range(100), "a"))
    audit.begin("r2")  # r1 failed before it was recorded
    assert not audit.flagged(_pop("B", range(101), "b"))


@given(
    base=st.sets(st.integers(0, 400), min_size=1, max_size=120),
    others=st.lists(st.sets(st.integers(0, 400), max_size=120), min_size=1, max_size=6),
)
def test_the_prefilter_never_misses_a_near_population(
    base: set[int], others: list[set[int]]
) -> None:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA medlab")
    audit = Auditor(con, PersonKeys(SECRET), 10)
    audit.begin("r0")
    for i, persons in enumerate(others):
        if persons:
            audit.flagged(_pop(f"o{i}", persons, f"f{i}"))
    audit.save()
    audit.begin("r1")
    naive = min([len(base ^ p) for p in others if p] + [1000])
    assert audit.nearest(_pop("base", base, "fb"), 60) == min(naive, 60)
    assert audit.nearest(_pop("base", base, "fb"), 10) == min(naive, 10)


def test_audit_ids_are_keyed(tmp_path: Path) -> None:
    ours, theirs = PersonKeys(SECRET), PersonKeys(bytes(32))
    assert not np.array_equal(ours.audit_ids([1, 2, 3]), theirs.audit_ids([1, 2, 3]))
