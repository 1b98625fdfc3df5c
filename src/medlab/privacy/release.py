"""Typed release objects: what an analysis's local step asks to send out of a node.

A local step describes its aggregates as a :class:`Release` made of a few element types —
counts under additive constraints (:class:`Cells`), nested counts in order (:class:`Steps`),
sums of a continuous value (:class:`Sums`), a fitted model (:class:`Model`), a survival curve
(:class:`Curve`), single statistics (:class:`Statistic`) and per-covariate balance
(:class:`Balance`). Only the release gate turns a
:class:`Release` into a :class:`Released`, the one type a combine step accepts.

**The shape of a release is fixed before any data is read.** Every row, stratum, step, grid
point and bin of an element is enumerated by the local step from the study spec, the policy
and the vocabulary, never from what the data hold: a row nobody is in is present with a zero
count, and the gate marks it suppressed like any other small cell. So two worlds that differ
by one person give releases with the same keys everywhere; only values differ.

Fields marked node-internal never reach a :class:`Released`: the :class:`Population` behind
each count (the persons, for the differencing audit and the cell-key method), and the
dominance contributions of sums.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

# The precision kinds of :class:`medlab.privacy.policy.Precision`.
Kind = Literal["ratio", "p_value", "proportion", "smd", "mean"]


@dataclass(frozen=True)
class Population:
    """The persons behind a released number (node-internal). ``key`` names how they were
    chosen: the definitions and settings they derive from and the data snapshot, so that the
    same definition on the same data is the same population wherever it is used. ``kind`` is
    ``cohort`` for a cohort's own persons, else the analysis type that derived it; ``family``
    the digests of the cohort definitions it derives from and ``snapshot`` the data they were
    applied to (the differencing audit compares populations of one kind across families and
    snapshots)."""

    key: str
    persons: frozenset[int]
    kind: str = "cohort"
    family: tuple[str, ...] = ()
    snapshot: str = ""

    def __len__(self) -> int:
        return len(self.persons)


def population_key(*parts: Any) -> str:
    """A population's key from the parts that define it (JSON-serializable)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return "pop:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Constraint:
    """``total`` equals the sum of ``parts`` for each of ``columns`` (a margin a reader can
    subtract from)."""

    total: str
    parts: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Cells:
    """Rows of counts (``counts``) and other additive numbers released with the row and
    protected like counts (``extras``, e.g. person-days). Suppression applies to whole rows.
    ``complements`` maps a row to its denominator row: the complement (denominator less the
    row) must be safe too. ``populations`` (node-internal) holds the persons behind each row.
    ``sensitivity`` bounds, per column, how much one person changes the column's rows in
    total (for differential privacy)."""

    name: str
    counts: dict[str, dict[str, int]]
    extras: dict[str, dict[str, float]] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    complements: dict[str, str] = field(default_factory=dict)
    populations: dict[str, Population] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Steps:
    """Counts after each step of a sequence whose populations are nested (attrition,
    eligibility funnel): a step cannot hold more persons than the step before it.
    ``populations`` (node-internal): per step, the persons behind each column."""

    name: str
    steps: tuple[tuple[str, dict[str, int]], ...]
    populations: tuple[dict[str, Population], ...] = ()


@dataclass(frozen=True)
class Sums:
    """The sum and sum of squares of a value over ``n`` contributors (``totals``: ``sum``,
    ``sum_squares``), released as the count, the mean and the SD. ``value_range`` bounds one
    contribution; ``integer``: the values are whole numbers (ages, scores), so the gate checks
    that no count the released count allows is ruled out by the mean and SD.
    ``largest`` and ``magnitude`` (node-internal) are the largest absolute contributions and
    the sum of all absolute contributions, for the dominance rules; ``bounds`` the most one
    person adds to each total (for differential privacy)."""

    name: str
    n: int
    totals: dict[str, float]
    largest: tuple[float, ...] = ()
    magnitude: float = 0.0
    integer: bool = True
    population: Population | None = None
    bounds: dict[str, float] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Model:
    """A fitted model's results (``values``, each of a precision ``kinds``), the counts
    behind it (``counts``; ``populations`` holds their persons), and its size."""

    name: str
    parameters: int
    observations: int
    events: int
    values: dict[str, float | None]
    counts: dict[str, int]
    event_counts: tuple[str, ...] = ()  # which of ``counts`` are outcome events per group
    kinds: dict[str, Kind] = field(default_factory=dict)
    populations: dict[str, Population] = field(default_factory=dict)


@dataclass(frozen=True)
class Curve:
    """A step curve (Kaplan-Meier) per group on a time grid fixed by the spec: (time, at
    risk, events since the previous point, value) at every grid point."""

    name: str
    groups: dict[str, tuple[tuple[float, float, float, float], ...]]
    populations: dict[str, Population] = field(default_factory=dict)


@dataclass(frozen=True)
class Statistic:
    """One number summarizing ``n`` persons (a proportion, a maximum |SMD|), of a precision
    ``kind``. For a proportion, ``numerator`` is the count it is the share of ``n`` of."""

    name: str
    value: float | None
    n: int
    kind: Kind = "proportion"
    numerator: int | None = None
    population: Population | None = None


@dataclass(frozen=True)
class Contributions:
    """The contributions to one (weighted) total of one arm: the largest few, the sum of
    all their absolute values and how many there are (node-internal). For the dominance
    rules the gate takes the ones not kept (up to its rule's ``n``) as large as the smallest
    kept, which can only withhold more."""

    largest: tuple[float, ...]
    total: float
    n: int

    def padded(self, n: int) -> tuple[float, ...]:
        """The ``n`` largest, those not kept taken as large as the smallest kept."""
        want = min(n, self.n)
        if not self.largest or want <= len(self.largest):
            return self.largest[:want]
        return self.largest + (self.largest[-1],) * (want - len(self.largest))


@dataclass(frozen=True)
class Balance:
    """Per covariate (named by the spec) and population (before adjustment, after each
    adjustment), the standardized difference of the covariate's means between two arms
    (``smd[covariate][population]``). Node-internal: ``populations[population]`` the persons
    of each arm; ``counts[covariate][population]`` the persons holding and lacking a binary
    covariate in each arm (each must pass the count rule; none for a continuous one);
    ``contributions[covariate][population]`` those of each total its arms' means are made of
    (the dominance rules)."""

    name: str
    smd: dict[str, dict[str, float | None]]
    populations: dict[str, dict[str, Population]] = field(default_factory=dict)
    counts: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    contributions: dict[str, dict[str, tuple[Contributions, ...]]] = field(default_factory=dict)
    # The population the others are taken from (before adjustment): one whose arm differs
    # from its arm by fewer than the minimum cell count would show those persons' covariates.
    base: str | None = None


Element = Cells | Steps | Sums | Model | Curve | Statistic | Balance


@dataclass(frozen=True)
class Release:
    """Everything one local step asks to release. ``labels`` carries non-disclosive context
    (vocabulary names, settings), fixed by the spec like the shape."""

    analysis: str
    site: str
    elements: tuple[Element, ...]
    labels: dict[str, Any] = field(default_factory=dict)
    # The cohorts the release is about (node-internal): when the audit flags any, every
    # value of the release is withheld.
    roots: tuple[Population, ...] = ()

    def element(self, name: str) -> Element:
        """The element called ``name``."""
        for e in self.elements:
            if e.name == name:
                return e
        raise KeyError(name)


@dataclass(frozen=True)
class Decision:
    """One thing the gate did (node-internal, for the steward): which element and item,
    under which rule, with what effect."""

    element: str
    item: str
    rule: str
    action: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {
            "element": self.element,
            "item": self.item,
            "rule": self.rule,
            "action": self.action,
        }


_GATE = object()

# The one text every data-dependent refusal carries: which rule fired (too small a cell, a
# complement, a margin, the differencing audit, a model's events) would itself tell something
# about the data, so the researcher sees only that the disclosure rules withheld it.
WITHHELD = "withheld by the node's disclosure rules"


@dataclass(frozen=True)
class Released:
    """A release after the gate: values safe to leave the node (suppressed ones are None),
    how they were protected (``protection``: mechanism, precision, noise per element) and the
    policy applied. Only :func:`medlab.privacy.gate.apply` makes one."""

    analysis: str
    site: str
    policy_version: str
    policy_digest: str
    values: dict[str, Any]
    labels: dict[str, Any]
    protection: dict[str, Any]
    token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.token is not _GATE:
            raise TypeError("a Released is made only by the release gate")

    def disclosure(self) -> dict[str, Any]:
        """What the gate did, in terms the released values show anyway: per element, how
        many values were shown and how many withheld, and how they were protected."""
        elements = {name: _tally(value) for name, value in self.values.items()}
        return {
            "site": self.site,
            "analysis": self.analysis,
            "policy_version": self.policy_version,
            "policy_digest": self.policy_digest,
            "protection": self.protection,
            "elements": elements,
            "shown": sum(e["shown"] for e in elements.values()),
            "withheld": sum(e["withheld"] for e in elements.values()),
        }


def _tally(value: Any) -> dict[str, int]:
    shown = withheld = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(x for k, x in v.items() if k not in ("step", "time", "refused"))
        elif isinstance(v, list):
            stack.extend(v)
        elif v is None:
            withheld += 1
        elif isinstance(v, int | float) and not isinstance(v, bool):
            shown += 1
    return {"shown": shown, "withheld": withheld}


def require_released(parts: list[Released]) -> None:
    """Refuse anything but gate output in a combine step."""
    for part in parts:
        if not isinstance(part, Released):
            raise TypeError(
                f"combine steps accept only released payloads, not {type(part).__name__}"
            )
