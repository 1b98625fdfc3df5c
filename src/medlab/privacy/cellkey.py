"""The cell-key method: perturbation keyed by the persons in a cell.

As the Australian Bureau of Statistics' TableBuilder does it (Fraser and Wooton, 2005;
Marley and Leaver, 2011): every person carries a random record key that only the node knows
(:mod:`medlab.privacy.persons`); a cell's key is the sum of its persons' record keys modulo
2^32; the perturbation added to the cell's count is a fixed function of (count, cell key),
read from a perturbation table by the key as a uniform quantile. So the same population gets
the same perturbation in every table, study and run (averaging repeats gains nothing), and
one more or one fewer person gives a fresh, independent draw (the rounding attack with known
units finds no pattern).

The perturbation table: for a count ``n`` (already at or above the minimum cell count ``k``;
smaller ones are suppressed), perturbations ``p`` in ``-D..D`` with probability proportional
to ``exp(-p² / 2V)``, restricted so that ``n + p`` stays at or above ``k`` (so no released
count falls below the minimum, and the method never signals a small cell).
"""

from __future__ import annotations

import math
from functools import cache

from medlab.privacy.persons import RECORD_KEY_MODULUS


@cache
def _table(n: int, max_perturbation: int, variance: float, floor: int) -> tuple[float, ...]:
    low = max(-max_perturbation, floor - n)
    support = range(low, max_perturbation + 1)
    weights = [math.exp(-(p * p) / (2 * variance)) for p in support]
    total = sum(weights)
    cumulative = []
    running = 0.0
    for w in weights:
        running += w / total
        cumulative.append(running)
    return tuple(cumulative)


def perturbation(n: int, cell_key: int, max_perturbation: int, variance: float, floor: int) -> int:
    """The perturbation of count ``n`` whose cell key is ``cell_key``."""
    u = cell_key / RECORD_KEY_MODULUS
    cumulative = _table(n, max_perturbation, variance, floor)
    low = max(-max_perturbation, floor - n)
    for i, c in enumerate(cumulative):
        if u < c:
            return low + i
    return max_perturbation


def standard_deviation(max_perturbation: int, variance: float) -> float:
    """The spread of the perturbation away from the minimum (for the noise interval)."""
    support = range(-max_perturbation, max_perturbation + 1)
    weights = [math.exp(-(p * p) / (2 * variance)) for p in support]
    total = sum(weights)
    return math.sqrt(sum(w * p * p for w, p in zip(weights, support, strict=True)) / total)
