"""A cohort's mean and SD of age at entry over every site, in two rounds.

The smallest analysis that needs the federation's rounds: round 1 releases each site's entry
count and mean age; the hub pools the mean ``m``; round 2 sends ``m`` back and each site
releases the mean squared deviation from it, ``mean((age - m)^2)``; the hub pools the
variance ``sum(n_i * msd_i) / (N - 1)`` — the two-pass formula, which stays accurate where
one pass of sums and sums of squares cancels. Every number leaves through the release gate
(counts rounded, means at the policy's precision), so the pooled values are exact up to that
protection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb

from medlab.analyses.scope import Scope
from medlab.privacy.release import Release, Released, Sums, require_released

ROUNDS = 2
MAX_AGE = 150.0


@dataclass(frozen=True)
class LocalMoments:
    """One round's sums at one site (node-internal: the persons and the largest values)."""

    n: int
    total: float
    squares: float
    largest: tuple[float, ...]
    persons: frozenset[int]


def local(
    con: duckdb.DuckDBPyConnection, cohort_id: int, round_: int, params: dict[str, Any]
) -> LocalMoments:
    """Round 1: the sum of ages at entry; round 2: of squared deviations from ``mean``."""
    rows = con.execute(
        """SELECT c.subject_id, CAST(year(c.cohort_start_date) - p.year_of_birth AS DOUBLE)
           FROM results.cohort c JOIN person p ON p.person_id = c.subject_id
           WHERE c.cohort_definition_id = ?""",
        [cohort_id],
    ).fetchall()
    center = 0.0 if round_ == 1 else params.get("mean")
    if not isinstance(center, int | float) or not 0.0 <= float(center) <= MAX_AGE:
        raise ValueError("round 2 needs the pooled mean age, a number within 0..150")
    center = float(center)
    values = [a if round_ == 1 else (a - center) ** 2 for _, a in rows]
    return LocalMoments(
        n=len(values),
        total=float(sum(values)),
        squares=float(sum(v * v for v in values)),
        largest=tuple(sorted((abs(v) for v in values), reverse=True)[:2]),
        persons=frozenset(int(p) for p, _ in rows),
    )


def to_release(
    found: LocalMoments, site: str, scope: Scope, cohort_id: int, round_: int
) -> Release:
    """One sum element per round (its population is the cohort's own)."""
    top = MAX_AGE if round_ == 1 else MAX_AGE**2
    element = Sums(
        f"round{round_}",
        found.n,
        {"sum": found.total, "sum_squares": found.squares},
        largest=found.largest,
        magnitude=abs(found.total),
        integer=round_ == 1,  # ages are whole years; squared deviations from m are not
        population=scope.cohort(cohort_id, found.persons),
        value_range=(0.0, top),
    )
    return Release("federated_mean", site, (element,), {"round": round_, "cohort": cohort_id})


def _shown(parts: list[Released], round_: int) -> list[tuple[int, float]]:
    out = []
    for p in parts:
        v = p.values.get(f"round{round_}") or {}
        if v.get("n") is not None and v.get("mean") is not None:
            out.append((int(v["n"]), float(v["mean"])))
    return out


def next_params(round_: int, parts: list[Released]) -> dict[str, Any] | None:
    """The next round's parameters from this round's released sums (None: done)."""
    require_released(parts)
    if round_ >= ROUNDS:
        return None
    shown = _shown(parts, 1)
    total = sum(n for n, _ in shown)
    if total == 0:
        return None  # every site withheld: nothing to pool, no second round
    return {"mean": sum(n * m for n, m in shown) / total}


def combine(rounds: dict[int, list[Released]]) -> dict[str, Any]:
    """The pooled count, mean and SD (``None`` where the sites' releases do not allow it)."""
    for parts in rounds.values():
        require_released(parts)
    first = _shown(rounds.get(1, []), 1)
    n = sum(k for k, _ in first)
    mean = sum(k * m for k, m in first) / n if n else None
    second = _shown(rounds.get(2, []), 2)
    m2 = sum(k for k, _ in second)
    sd = math.sqrt(sum(k * v for k, v in second) / (m2 - 1)) if m2 > 1 else None
    return {"n": n or None, "mean": mean, "sd": sd, "sites": len(first), "rounds": len(rounds)}
