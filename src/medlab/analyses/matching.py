"""Propensity-score matching as CohortMethod's ``matchOnPs`` (``src/Match.cpp``).

Greedy variable-ratio matching: rows are ordered by score; in round ``r`` (1..max_ratio)
every target whose set still has fewer than ``r`` comparators offers its nearest unmatched
comparator on either side, and the globally closest (target, comparator) pair is taken
first (``Match::initializeHeap``, ``Match::matchOnePerTarget``). A pair whose comparator was
taken meanwhile is replaced by that target's nearest still-unmatched comparator, the closer
side (``Match::findNewComparator``: backward only when strictly closer). A pair is only made
at a distance strictly below the caliper. The rounds stop when a round matches nobody or
every comparator is matched.

The caliper's scale is ``matchOnPs``'s ``caliperScale``: ``standardized_logit`` (the
default: the logit of the score, the caliper in standard deviations of the logits),
``standardized`` (the score, in its standard deviations), ``propensity_score`` (the score,
absolute) and medlab's ``logit`` (the logit, absolute). A caliper of 0 is no caliper.

Ties, which CohortMethod leaves to the order of its heap and of its rows, are broken by a
rule that does not depend on how rows are stored: rows with equal scores are ordered by a
key (medlab passes a keyed hash of the person and entry), and among pairs at equal distance
the pair whose target, then comparator, comes first in that order is taken first.
"""

from __future__ import annotations

import heapq
import math
from typing import Literal

import numpy as np

CaliperScale = Literal["standardized_logit", "standardized", "propensity_score", "logit"]


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.asarray(np.log(p / (1 - p)))


def match_on_ps(
    ps: np.ndarray,
    treatment: np.ndarray,
    max_ratio: int = 1,
    caliper: float = 0.2,
    caliper_scale: CaliperScale = "standardized_logit",
    tiebreak: np.ndarray | None = None,
    spread: float | None = None,
) -> np.ndarray:
    """A stratum (matched set) id per row, -1 for rows left unmatched. ``spread``: the
    standard deviation a standardized caliper is scaled by (default this population's; a
    pooled fit gives the union's, as CohortMethod's ``matchOnPs`` with stratification
    columns takes it over the whole population before matching within each stratum)."""
    n = len(ps)
    stratum = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return stratum
    key = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    order = np.lexsort((key, ps))  # by score, then by the tie-break key
    score = np.asarray(ps, dtype=float)[order]
    if caliper_scale in ("standardized_logit", "logit"):
        score = _logit(score)
    width = math.inf
    if caliper > 0 and n > 1 and float(np.min(ps)) != float(np.max(ps)):
        if spread is not None and caliper_scale in ("standardized_logit", "standardized"):
            width = caliper * spread
        elif caliper_scale == "standardized_logit":
            finite = score[np.isfinite(score)]
            width = caliper * float(np.std(finite, ddof=1)) if len(finite) > 1 else math.inf
        elif caliper_scale == "standardized":
            width = caliper * float(np.std(score, ddof=1))
        else:
            width = caliper
    treated = np.asarray(treatment)[order] == 1
    sets = _match_sorted(score, treated, max(1, max_ratio), width)
    stratum[order] = sets
    return stratum


class _Unused:
    """Nearest unmatched comparator left or right of a position (path-halving pointers)."""

    def __init__(self, m: int) -> None:
        self.m = m  # comparators, indexed 0..m-1 in score order
        self.left = list(range(m))  # left[i]: the nearest unused index <= i (or -1)
        self.right = list(range(m + 1))  # right[i]: the nearest unused index >= i (or m)

    def take(self, i: int) -> None:
        self.left[i] = i - 1
        self.right[i] = i + 1

    def below(self, i: int) -> int:
        left = self.left
        while i >= 0 and left[i] != i:
            nxt = left[i]
            if nxt >= 0:
                left[i] = left[nxt]
            i = nxt
        return i

    def above(self, i: int) -> int:
        right, m = self.right, self.m
        while i < m and right[i] != i:
            nxt = right[i]
            if nxt < m:
                right[i] = right[nxt]
            i = nxt
        return i


def _match_sorted(
    score: np.ndarray, treated: np.ndarray, max_ratio: int, width: float
) -> np.ndarray:
    n = len(score)
    stratum = np.full(n, -1, dtype=np.int64)
    comparators = np.flatnonzero(~treated)
    targets = np.flatnonzero(treated)
    m = len(comparators)
    if m == 0 or len(targets) == 0:
        return stratum
    unused = _Unused(m)
    # For each target, the index in ``comparators`` of the first comparator after it.
    after = np.searchsorted(comparators, targets)
    cscore = score[comparators].tolist()
    tscore = score[targets].tolist()
    sizes: list[int] = []
    t_set = [-1] * len(targets)
    c_taken = [False] * m
    matched_comparators = 0

    def offer(heap: list[tuple[float, int, int]], t: int, ci: int) -> None:
        heap.append((abs(tscore[t] - cscore[ci]), t, ci))

    for ratio in range(1, max_ratio + 1):
        heap: list[tuple[float, int, int]] = []
        for t in range(len(targets)):
            if t_set[t] != -1 and sizes[t_set[t]] >= ratio:
                continue
            lo = unused.below(int(after[t]) - 1)
            hi = unused.above(int(after[t]))
            if lo >= 0:
                offer(heap, t, lo)
            if hi < m:
                offer(heap, t, hi)
        if not heap:
            break
        heapq.heapify(heap)
        matched_now = 0
        while heap and matched_comparators < m:
            distance, t, ci = heapq.heappop(heap)
            if not distance < width:
                break
            s = t_set[t]
            if s != -1 and sizes[s] >= ratio:
                continue
            if not c_taken[ci]:
                if s == -1:
                    s = len(sizes)
                    sizes.append(0)
                    t_set[t] = s
                    stratum[targets[t]] = s
                c_taken[ci] = True
                unused.take(ci)
                stratum[comparators[ci]] = s
                sizes[s] += 1
                matched_now += 1
                matched_comparators += 1
            else:
                lo = unused.below(int(after[t]) - 1)
                hi = unused.above(int(after[t]))
                if lo >= 0 and hi < m:
                    back = abs(tscore[t] - cscore[lo])
                    forth = abs(tscore[t] - cscore[hi])
                    heapq.heappush(heap, (back, t, lo) if back < forth else (forth, t, hi))
                elif lo >= 0:
                    heapq.heappush(heap, (abs(tscore[t] - cscore[lo]), t, lo))
                elif hi < m:
                    heapq.heappush(heap, (abs(tscore[t] - cscore[hi]), t, hi))
        if matched_comparators == m or matched_now == 0:
            break
    return stratum
