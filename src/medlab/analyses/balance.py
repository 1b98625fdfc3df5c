"""Per-covariate balance of a comparative study, inside a node: for each covariate the spec
names, the standardized difference of its means between the arms before adjustment and after
each adjustment (CohortMethod's ``computeCovariateBalance``, whose ``covariateFilter`` names
the covariates), with what the release gate needs to judge it (node-internal).

The covariates are the spec's (``balance_covariates``), never chosen from the data, so that a
release's shape is fixed before any data is read: a covariate nobody has is present all the
same, and the gate withholds it like any other small cell. Its means are weighted as the
adjustment's balance weights say (matching: a comparator counts ``1/k`` in a set of ``k``;
strata: the ATT weights of the stratum; IPTW: the weights), the same weights the released
maximum |SMD| uses, so the largest |SMD| of a covariate set never exceeds that maximum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from medlab.analyses import estimation as est

# The covariate names medlab's covariate set uses (:func:`medlab.analyses.population.covariates`).
COVARIATE = re.compile(
    r"^(age|charlson_index|age_group:\d{1,3}|gender:\d{1,12}|index_year:\d{4}"
    r"|(condition|condition_any_time_prior|drug|procedure):\d{1,12})$"
)
CONTINUOUS = frozenset({"age", "charlson_index"})
# FeatureExtraction's default table 1 starts with demographics and the Charlson index; the
# default list is those of medlab's covariate set that need no data to name (male, female).
DEFAULT = (
    "age",
    "charlson_index",
    "gender:8507",
    "gender:8532",
    *(f"age_group:{a}" for a in range(0, 105, 5)),
)
BEFORE = "before"
# The most contributions kept per mean for the dominance rules (their ``n`` is at most 100).
_LARGEST = 100


@dataclass(frozen=True)
class Cell:
    """One covariate on one population (node-internal but ``smd``): the standardized
    difference, the persons holding and lacking a binary covariate per arm (target, then
    comparator; each must pass the count rule), and per (weighted) mean of an arm its largest
    contributions and the sum of all of them (the dominance rules)."""

    smd: float
    counts: tuple[int, ...]
    contributions: tuple[tuple[tuple[float, ...], float], ...]


def _persons(people: np.ndarray, rows: np.ndarray) -> int:
    return len(np.unique(people[rows]))


def _largest(values: np.ndarray) -> tuple[tuple[float, ...], float]:
    values = np.abs(values[values != 0])
    top = np.sort(values)[::-1][:_LARGEST]
    return tuple(float(v) for v in top), float(values.sum())


def cells(
    x: sparse.csr_matrix,
    ids: list[str],
    names: list[str],
    treatment: np.ndarray,
    people: np.ndarray,
    weights: np.ndarray,
) -> dict[str, Cell]:
    """The balance of each of ``names`` on one population's rows: ``x`` its covariate rows
    (columns ``ids``), ``treatment`` 1 for the target arm, ``people`` each row's person and
    ``weights`` each row's balance weight. A name the covariate set lacks is nobody's (a
    column of zeros)."""
    index = {name: i for i, name in enumerate(ids)}
    empty = sparse.csr_matrix((x.shape[0], 1))
    chosen = sparse.hstack([x[:, [index[n]]] if n in index else empty for n in names], format="csc")
    smd = (
        est.standardized_differences(chosen.tocsr(), treatment, weights)
        if len(set(treatment.tolist())) == 2
        else np.full(len(names), np.nan)
    )
    out = {}
    arms = [treatment == 1, treatment == 0]
    for j, name in enumerate(names):
        column = np.asarray(chosen[:, [j]].todense()).ravel()
        held = column != 0
        counts: tuple[int, ...] = ()
        parts = []
        for arm in arms:
            if name in CONTINUOUS:
                parts.append(_largest(weights[arm] * column[arm]))
            else:
                counts += (
                    _persons(people, arm & held),
                    _persons(people, arm & ~held),
                )
                parts.append(_largest(weights[arm & held]))
                parts.append(_largest(weights[arm & ~held]))
        out[name] = Cell(float(smd[j]), counts, tuple(parts))
    return out
