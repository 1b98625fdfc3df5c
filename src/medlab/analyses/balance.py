"""Per-covariate balance of a comparative study, inside a node: for each covariate the spec
names, the standardized difference of its means between the arms before adjustment and after
each adjustment (CohortMethod's ``computeCovariateBalance``, whose ``covariateFilter`` names
the covariates), with what the release gate needs to judge it (node-internal).

The covariates are the spec's (``balance_covariates``), never chosen from the data, so that a
release's shape is fixed before any data is read: a covariate nobody has is present all the
same, and the gate withholds it like any other small cell. ``condition_any_time_prior:*``
(and ``condition:*``, ``drug:*``, ``procedure:*``) stands for every standard concept of the
domain in the node's vocabulary, as characterization lists them. Means are weighted as the
adjustment's balance weights say (matching: a comparator counts ``1/k`` in a set of ``k``;
strata: the ATT weights of the stratum; IPTW: the weights), the weights the released maximum
|SMD| uses, so the largest |SMD| of the covariate set never exceeds that maximum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb
import numpy as np
from scipy import sparse

from medlab.analyses import estimation as est
from medlab.errors import DefinitionError
from medlab.privacy.release import Contributions

# The covariate names medlab's covariate set uses (:func:`medlab.analyses.population.covariates`).
_CONCEPT_KINDS = r"(condition|condition_any_time_prior|drug|procedure)"
COVARIATE = re.compile(
    r"^(age|charlson_index|age_group:\d{1,3}|gender:\d{1,12}|index_year:\d{4}"
    rf"|{_CONCEPT_KINDS}:(\d{{1,12}}|\*))$"
)
CONTINUOUS = frozenset({"age", "charlson_index"})
_DOMAINS = {
    "condition": "Condition",
    "condition_any_time_prior": "Condition",
    "drug": "Drug",
    "procedure": "Procedure",
}
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
MAX_COVARIATES = 5_000
LARGEST = 10  # contributions kept per total (:class:`~medlab.privacy.release.Contributions`)


@dataclass(frozen=True)
class Cell:
    """One covariate on one population (node-internal but ``smd``): the standardized
    difference, the persons holding and lacking a binary covariate per arm (target, then
    comparator; each must pass the count rule), and the contributions to each (weighted)
    total an arm's mean is made of (the dominance rules)."""

    smd: float
    counts: tuple[int, ...]
    contributions: tuple[Contributions, ...]


def expand(con: duckdb.DuckDBPyConnection, named: list[str]) -> tuple[list[str], dict[str, str]]:
    """The spec's balance covariates with each ``KIND:*`` replaced by every standard concept
    of its domain in the node's vocabulary (in concept order; a name given twice counts once),
    and the vocabulary's name of each concept covariate."""
    out: list[str] = []
    for name in named:
        kind, _, value = name.partition(":")
        if value == "*":
            rows = con.execute(
                "SELECT concept_id FROM concept WHERE domain_id = ? AND standard_concept = 'S'"
                " AND concept_id <> 0 ORDER BY concept_id",
                [_DOMAINS[kind]],
            ).fetchall()
            out += [f"{kind}:{c}" for (c,) in rows]
        else:
            out.append(name)
    out = list(dict.fromkeys(out))
    if len(out) > MAX_COVARIATES:
        raise DefinitionError(
            f"balance_covariates: {len(out):,} covariates from the vocabulary; a release lists "
            f"at most {MAX_COVARIATES:,}",
            hint="name the concepts instead of a whole domain ('condition_any_time_prior:ID')",
        )
    concepts = {int(n.partition(":")[2]) for n in out if n.partition(":")[0] in _DOMAINS}
    words = dict(
        con.execute(
            "SELECT concept_id, concept_name FROM concept WHERE list_contains(?, concept_id)",
            [sorted(concepts)],
        ).fetchall()
    )
    names = {n: str(words[c]) for n in out if (c := _concept(n)) is not None and c in words}
    return out, names


def _concept(name: str) -> int | None:
    kind, _, value = name.partition(":")
    return int(value) if kind in _DOMAINS and value.isdigit() else None


def _top(values: np.ndarray) -> Contributions:
    values = np.abs(values[values != 0])
    if len(values) > LARGEST:
        top = -np.sort(-np.partition(values, len(values) - LARGEST)[-LARGEST:])
    else:
        top = -np.sort(-values)
    return Contributions(tuple(float(v) for v in top), float(values.sum()), len(values))


def _arm(
    chosen: sparse.csc_matrix,
    binary: np.ndarray,
    people: np.ndarray,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[Contributions], list[Contributions]]:
    """One arm's rows: per covariate the persons holding and lacking it, and the
    contributions to its holders' (or, continuous, its values') and lackers' totals."""
    m = chosen.shape[1]
    persons, person = np.unique(people, return_inverse=True)
    rows = len(people)
    held = chosen.copy()
    held.data = (held.data != 0).astype(float)
    held.eliminate_zeros()
    # Per person, how many of her rows hold each covariate (entries may repeat a person).
    owner = sparse.csr_matrix((np.ones(rows), (person, np.arange(rows))), (len(persons), rows))
    per_person = (owner @ held).tocoo()
    entries = np.bincount(person, minlength=len(persons))
    holders = np.bincount(per_person.col, minlength=m)
    always = per_person.data == entries[per_person.row]
    lackers = len(persons) - np.bincount(per_person.col[always], minlength=m)
    whole = _top(weights)
    first: list[Contributions] = []
    second: list[Contributions] = []
    for j in range(m):
        lo, hi = chosen.indptr[j], chosen.indptr[j + 1]
        at = chosen.indices[lo:hi]
        if binary[j]:
            mine = _top(weights[at][chosen.data[lo:hi] != 0])
            first.append(mine)
            # The lackers' largest are taken from the whole arm's: never smaller than theirs.
            rest = Contributions(whole.largest, max(whole.total - mine.total, 0.0), rows - mine.n)
            second.append(rest)
        else:
            first.append(_top(weights[at] * chosen.data[lo:hi]))
            second.append(Contributions((), 0.0, 0))  # a continuous mean has one total
    return holders, lackers, first, second


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
    pairs = [(index[n], j) for j, n in enumerate(names) if n in index]
    select = sparse.csr_matrix(
        (np.ones(len(pairs)), ([i for i, _ in pairs], [j for _, j in pairs])),
        shape=(len(ids), len(names)),
    )
    chosen = sparse.csr_matrix(x @ select)
    both = len(set(treatment.tolist())) == 2
    smd = (
        est.standardized_differences(chosen, treatment, weights)
        if both
        else np.full(len(names), np.nan)
    )
    binary = np.array([n not in CONTINUOUS for n in names], dtype=bool)
    arms = [
        _arm(chosen[rows].tocsc(), binary, people[rows], weights[rows])
        for rows in (treatment == 1, treatment == 0)
    ]
    out = {}
    for j, name in enumerate(names):
        (h_t, l_t, first_t, second_t), (h_c, l_c, first_c, second_c) = arms
        counts: tuple[int, ...] = ()
        parts: tuple[Contributions, ...] = (first_t[j], first_c[j])
        if binary[j]:
            counts = (int(h_t[j]), int(l_t[j]), int(h_c[j]), int(l_c[j]))
            parts = (first_t[j], second_t[j], first_c[j], second_c[j])
        out[name] = Cell(float(smd[j]), counts, parts)
    return out
