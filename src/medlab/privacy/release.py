"""Typed release objects: what an analysis's local step asks to send out of a node.

A local step describes its aggregates as a :class:`Release` made of a few element types —
counts under additive constraints (:class:`Cells`), nested counts in order (:class:`Steps`),
sums of a continuous value (:class:`Sums`), a fitted model (:class:`Model`), a survival curve
(:class:`Curve`) and single statistics (:class:`Statistic`). Only the release gate turns a
:class:`Release` into a :class:`Released`, the one type a combine step accepts. Fields marked
node-internal (dominance contributions, person sets for auditing) never reach a
:class:`Released`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Constraint:
    """``total`` equals the sum of ``parts`` for each of ``columns`` (a margin a reader can
    subtract from)."""

    total: str
    parts: tuple[str, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Cells:
    """Rows of counts (``counts``) and other additive numbers released with the row
    (``extras``, e.g. person-days). Suppression applies to whole rows. ``complements`` maps a
    row to its denominator row: the complement (denominator less the row) must be safe too.
    ``populations`` (node-internal) holds the persons behind each row, for auditing."""

    name: str
    counts: dict[str, dict[str, int]]
    extras: dict[str, dict[str, float]] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    complements: dict[str, str] = field(default_factory=dict)
    populations: dict[str, frozenset[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Steps:
    """Counts after each step of a sequence whose populations are nested (attrition,
    eligibility funnel): a step cannot hold more persons than the step before it."""

    name: str
    steps: tuple[tuple[str, dict[str, int]], ...]


@dataclass(frozen=True)
class Sums:
    """Totals of a continuous value over ``n`` contributors (e.g. sum and sum of squares).
    ``largest`` and ``magnitude`` (node-internal) are the largest absolute contributions and
    the sum of all absolute contributions, for the dominance rules."""

    name: str
    n: int
    totals: dict[str, float]
    largest: tuple[float, ...] = ()
    magnitude: float = 0.0


@dataclass(frozen=True)
class Model:
    """A fitted model's results (``values``), the counts behind it, and its size."""

    name: str
    parameters: int
    observations: int
    events: int
    values: dict[str, float | None]
    counts: dict[str, int]
    event_counts: tuple[str, ...] = ()  # which of ``counts`` are outcome events per group


@dataclass(frozen=True)
class Curve:
    """A step curve (Kaplan-Meier) per group: (time, at risk, events at time, value)."""

    name: str
    groups: dict[str, tuple[tuple[float, float, float, float], ...]]


@dataclass(frozen=True)
class Statistic:
    """One number summarizing ``n`` persons (a proportion, a maximum |SMD|)."""

    name: str
    value: float | None
    n: int


Element = Cells | Steps | Sums | Model | Curve | Statistic


@dataclass(frozen=True)
class Release:
    """Everything one local step asks to release. ``labels`` carries non-disclosive context
    (vocabulary names, settings)."""

    analysis: str
    site: str
    elements: tuple[Element, ...]
    labels: dict[str, Any] = field(default_factory=dict)

    def element(self, name: str) -> Element:
        """The element called ``name``."""
        for e in self.elements:
            if e.name == name:
                return e
        raise KeyError(name)


@dataclass(frozen=True)
class Decision:
    """One thing the gate did: which element and item, under which rule, with what effect."""

    element: str
    item: str
    rule: str
    action: str

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return asdict(self)


_GATE = object()


@dataclass(frozen=True)
class Released:
    """A release after the gate: values safe to leave the node (suppressed ones are None), the
    decisions taken and the policy applied. Only :func:`medlab.privacy.gate.apply` makes one."""

    analysis: str
    site: str
    policy_version: str
    policy_digest: str
    values: dict[str, Any]
    labels: dict[str, Any]
    decisions: tuple[Decision, ...]
    token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.token is not _GATE:
            raise TypeError("a Released is made only by the release gate")

    def disclosure(self) -> dict[str, Any]:
        """The readable disclosure report of this release."""
        rules: dict[str, int] = {}
        for d in self.decisions:
            rules[d.rule] = rules.get(d.rule, 0) + 1
        return {
            "site": self.site,
            "analysis": self.analysis,
            "policy_version": self.policy_version,
            "policy_digest": self.policy_digest,
            "decisions": [d.to_dict() for d in self.decisions],
            "summary": dict(sorted(rules.items())),
        }


def require_released(parts: list[Released]) -> None:
    """Refuse anything but gate output in a combine step."""
    for part in parts:
        if not isinstance(part, Released):
            raise TypeError(
                f"combine steps accept only released payloads, not {type(part).__name__}"
            )
