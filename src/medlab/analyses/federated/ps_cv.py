"""Cross-validation of the federated propensity model's prior variance: the comparative
analysis's choice (:func:`medlab.analyses.propensity.cross_validate`: Cyclops's grid of 10
variances, ``ps_cv_folds`` folds, the variance with the highest mean held-out
log-likelihood) made across sites on secure sums.

Every site cuts its own rows into folds (permuted once by ``ps_cv_seed``, as the local
fit), so pooled fold ``f`` is the union of the sites' folds ``f``. A site whose folds would
hold fewer than its ``min_cell_count`` persons of either arm holds none out: its rows are
in every training set (the sums over a held-out fold, found by subtracting a training set's
from the whole's, would otherwise be about a handful of its patients). All the fits — one
per fold and variance — run in lockstep (:func:`cross_validate`): each round holds a slot
per fit, evaluated at that fit's next point (None once it is done: the fits are
:func:`medlab.analyses.federated.ps.steps` generators, stepped side by side), with the training
rows and target rows and, at the same point, the held-out rows and log-likelihood. A fold
whose training set has one arm only, or that no site holds out, is skipped, as the local
fit skips a fold with one arm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse

from medlab.analyses.federated import ps
from medlab.analyses.propensity import GRID, Prior, _predict


def slot_length(k: int) -> int:
    """One fit's values: its training sums, training rows and target rows, held-out rows
    and log-likelihood."""
    return (k + 1) * (k + 2) // 2 + (k + 1) + 1 + 4


def length(k: int, folds: int) -> int:
    """A cross-validation round's vector length."""
    return folds * len(GRID) * slot_length(k)


def site_folds(y: np.ndarray, folds: int, seed: int, min_cell_count: int) -> np.ndarray:
    """Each row's fold (-1: never held out, the site being too small to hold any out)."""
    order = np.random.default_rng(seed).permutation(len(y))
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % folds
    for f in range(folds):
        held = y[fold == f]
        if min((held == 1).sum(), (held == 0).sum()) < min_cell_count:
            return np.full(len(y), -1, dtype=np.int64)
    return fold


def _loglik(x: sparse.csr_matrix, y: np.ndarray, b0: float, beta: np.ndarray) -> float:
    """The held-out log-likelihood, the probabilities clipped as the local fit's."""
    p = np.clip(_predict(x, b0, beta), 1e-15, 1 - 1e-15)
    return float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))


def values(
    x: sparse.csr_matrix,
    y: np.ndarray,
    points: Any,
    folds: int,
    seed: int,
    min_cell_count: int,
) -> list[float]:
    """A site's slots at the asked points (one per fold and variance; None: done)."""
    k = x.shape[1]
    width = slot_length(k)
    if not isinstance(points, list) or len(points) != folds * len(GRID):
        raise ValueError(f"the cross-validation round names no {folds * len(GRID)} points")
    fold = site_folds(y, folds, seed, min_cell_count)
    out: list[float] = []
    for i, point in enumerate(points):
        if point is None:
            out += [0.0] * width
            continue
        at = np.asarray(point, dtype=float) if isinstance(point, list) else np.empty(0)
        if at.shape != (k + 1,) or not np.all(np.isfinite(at)):
            raise ValueError(f"cross-validation point {i} is not an intercept and {k} numbers")
        f = i // len(GRID)
        train, test = fold != f, fold == f
        out += ps.sums(x[train], y[train], float(at[0]), at[1:]).flat()
        out += [float(train.sum()), float(y[train].sum()), float(test.sum())]
        out.append(_loglik(x[test], y[test], float(at[0]), at[1:]) if test.any() else 0.0)
    return out


def cross_validate(
    k: int, prior: Prior, folds: int, take: Callable[[dict[str, Any]], list[float]]
) -> tuple[float, list[float]]:
    """The grid variance with the highest mean held-out log-likelihood over the folds, and
    every mean (``take(query)``: the next round's sum; it raises to pause the replay)."""
    width = slot_length(k)
    fits = [v for _ in range(folds) for v in GRID]
    walks = [ps.steps(k, prior, v) for v in fits]
    points: list[tuple[float, np.ndarray] | None] = [next(w) for w in walks]
    seen: list[dict[tuple[float, ...], float]] = [{} for _ in fits]  # point: held-out
    held: list[float | None] = [None] * len(fits)
    while any(p is not None for p in points):
        asked = [None if p is None else [p[0], *p[1].tolist()] for p in points]
        got = take({"stage": "cv", "points": asked})
        for i, point in enumerate(points):
            if point is None:
                continue
            slot = got[width * i : width * (i + 1)]
            rows, targets, heldout = slot[-4], slot[-3], slot[-2]
            if not seen[i] and (heldout < 0.5 or targets < 0.5 or rows - targets < 0.5):
                points[i] = None  # one arm in training, or nothing held out: skipped
                continue
            seen[i][(point[0], *point[1].tolist())] = slot[-1]
            try:
                points[i] = walks[i].send(ps.PsSums.unflat(list(slot[: width - 4]), k))
            except StopIteration as done:
                fit: ps.FederatedPs = done.value
                held[i] = seen[i][(fit.intercept, *fit.coefficients.tolist())]
                points[i] = None
    totals: list[list[float]] = [[] for _ in GRID]
    for v, h in zip(fits, held, strict=True):
        if h is not None:
            totals[GRID.index(v)].append(h)
    means = [float(np.mean(t)) if t else -math.inf for t in totals]
    if all(m == -math.inf for m in means):
        raise ValueError(
            "no fold can be held out to cross-validate the propensity prior (every site is "
            "too small to hold persons out); give ps_variance"
        )
    return GRID[int(np.argmax(means))], means
