"""CohortMethod's greedy variable-ratio matcher against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medlab.analyses.matching import match_on_ps


def brute_force(ps: np.ndarray, treatment: np.ndarray, max_ratio: int, width: float) -> list:
    """Match.cpp's result spelled out: in round r, repeatedly take the globally closest
    (target with fewer than r comparators, unmatched comparator) pair under the caliper,
    on the logit scale; stop when a round matches nobody or every comparator is used."""
    score = np.log(ps / (1 - ps))
    targets = [i for i in range(len(ps)) if treatment[i] == 1]
    comparators = [i for i in range(len(ps)) if treatment[i] == 0]
    sets: dict[int, list[int]] = {}
    used: set[int] = set()
    for ratio in range(1, max_ratio + 1):
        matched = 0
        while len(used) < len(comparators):
            best = None
            for t in targets:
                if len(sets.get(t, [])) >= ratio:
                    continue
                for c in comparators:
                    if c in used:
                        continue
                    d = abs(score[t] - score[c])
                    if d < width and (best is None or d < best[0]):
                        best = (d, t, c)
            if best is None:
                break
            _, t, c = best
            sets.setdefault(t, []).append(c)
            used.add(c)
            matched += 1
        if matched == 0 or len(used) == len(comparators):
            break
    return sorted((t, sorted(cs)) for t, cs in sets.items())


def pairs(stratum: np.ndarray, treatment: np.ndarray) -> list:
    out = []
    for s in sorted(set(stratum[stratum >= 0])):
        members = np.flatnonzero(stratum == s)
        (t,) = members[treatment[members] == 1]
        out.append((int(t), sorted(int(c) for c in members[treatment[members] == 0])))
    return sorted(out)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("max_ratio", [1, 3, 100])
def test_same_pairs_as_the_brute_force_reference(seed: int, max_ratio: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    ps = rng.uniform(0.02, 0.98, n)
    treatment = (rng.random(n) < ps).astype(int)
    logits = np.log(ps / (1 - ps))
    width = 0.2 * float(np.std(logits, ddof=1))
    stratum = match_on_ps(ps, treatment, max_ratio, 0.2)
    assert pairs(stratum, treatment) == brute_force(ps, treatment, max_ratio, width)


def test_globally_closest_pairs_first_not_target_order() -> None:
    # Walking targets in score order (medlab's old matcher) gives target 0 the comparator
    # that is target 1's near-twin; the global greedy matcher gives it to target 1.
    ps = np.array([0.30, 0.40, 0.405])
    treatment = np.array([1, 1, 0])
    stratum = match_on_ps(ps, treatment, 1, 0, "propensity_score")
    assert stratum[1] == stratum[2] and stratum[0] == -1


@pytest.mark.parametrize(
    ("scale", "caliper", "near"),
    [
        ("propensity_score", 0.1, True),  # 0.05 apart on the score
        ("standardized", 0.5, True),  # 0.5 * sd(ps) = 0.077
        ("logit", 0.25, True),  # 0.20 apart on the logit
        ("standardized_logit", 0.25, False),  # 0.25 * sd(logit) = 0.18 < 0.20
        ("standardized_logit", 0.5, True),  # 0.35
    ],
)
def test_caliper_scales(scale: str, caliper: float, near: bool) -> None:
    ps = np.array([0.50, 0.55, 0.20, 0.40])
    treatment = np.array([1, 0, 1, 0])
    stratum = match_on_ps(ps, treatment, 1, caliper, scale)  # type: ignore[arg-type]
    assert bool(stratum[0] == stratum[1] >= 0) is near
    assert stratum[2] == -1  # 0.2 apart on the score, 0.98 on the logit: never within


@given(
    st.lists(st.floats(0.01, 0.99), min_size=2, max_size=80),
    st.lists(st.booleans(), min_size=80, max_size=80),
    st.integers(1, 5),
    st.floats(0.01, 1.0),
)
def test_properties(scores: list[float], arms: list[bool], max_ratio: int, caliper: float) -> None:
    ps = np.array(scores)
    treatment = np.array(arms[: len(ps)], dtype=int)
    stratum = match_on_ps(ps, treatment, max_ratio, caliper)
    logits = np.log(ps / (1 - ps))
    sd = float(np.std(logits, ddof=1)) if len(ps) > 1 else 0.0
    width = caliper * sd if ps.min() != ps.max() else math.inf
    for s in set(stratum[stratum >= 0]):
        members = np.flatnonzero(stratum == s)
        targets = members[treatment[members] == 1]
        comparators = members[treatment[members] == 0]
        assert len(targets) == 1  # one target per set, each comparator in one set only
        assert 1 <= len(comparators) <= max_ratio
        assert np.all(np.abs(logits[comparators] - logits[targets[0]]) < width)
    # Greedy: no unmatched target and unmatched comparator remain within the caliper.
    free_t = np.flatnonzero((treatment == 1) & (stratum == -1))
    free_c = np.flatnonzero((treatment == 0) & (stratum == -1))
    if len(free_t) and len(free_c):
        gaps = np.abs(logits[free_t][:, None] - logits[free_c][None, :])
        assert gaps.min() >= width


def test_ties_do_not_depend_on_row_order() -> None:
    # Four equal scores: which target gets which comparator follows the tie-break key,
    # so the persons matched are the same however the rows are stored.
    ps = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    treatment = np.array([1, 0, 1, 0, 0, 1])
    key = np.array([40, 10, 30, 60, 20, 50])
    first = pairs(match_on_ps(ps, treatment, 1, 0.2, tiebreak=key), treatment)
    order = np.array([5, 3, 1, 0, 4, 2])
    again = pairs(
        match_on_ps(ps[order], treatment[order], 1, 0.2, tiebreak=key[order]), treatment[order]
    )
    relabel = [(int(order[t]), sorted(int(order[c]) for c in cs)) for t, cs in again]
    assert sorted(relabel) == first
