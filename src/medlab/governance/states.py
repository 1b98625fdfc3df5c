"""The life of a study and of a data-use agreement: every state, every legal move, and who
may make it, in one table each. An illegal move is refused with the moves that are allowed.

A study (governed hub)::

    submitted --(project lead + operator reviewer approve)--> running --> completed | failed
        \\--> rejected (a reviewer or lead) | withdrawn (its submitter) | refused (the
              hub's re-check at dispatch: expiry, agreement, budget)

A study on an open hub (no governance: a single lab's own testing) starts ``running``.

An agreement::

    draft --(the node's steward signs, with the node's key)--> signed
    signed --(the operator countersigns)--> active
    active <--> suspended (the steward or the operator suspends; the steward reinstates)
    draft | signed | active | suspended --> expired (its date passed, or the operator ends it)
"""

from __future__ import annotations

from medlab.governance.access import HubError

STUDY_STATES = (
    "submitted",
    "running",
    "completed",
    "failed",
    "rejected",
    "withdrawn",
    "refused",
)
STUDY_FINAL = frozenset({"completed", "failed", "rejected", "withdrawn", "refused"})

# (from, to) -> who may make the move ("hub": the hub itself, never a request).
STUDY_MOVES: dict[tuple[str, str], frozenset[str]] = {
    ("submitted", "running"): frozenset({"hub"}),  # on the second of two approvals
    ("submitted", "rejected"): frozenset({"lead", "operator"}),
    ("submitted", "withdrawn"): frozenset({"submitter"}),
    ("submitted", "refused"): frozenset({"hub"}),
    ("running", "completed"): frozenset({"hub"}),
    ("running", "failed"): frozenset({"hub"}),
}

AGREEMENT_STATES = ("draft", "signed", "active", "suspended", "expired")
AGREEMENT_MOVES: dict[tuple[str, str], frozenset[str]] = {
    ("draft", "signed"): frozenset({"steward"}),
    ("signed", "active"): frozenset({"operator"}),
    ("active", "suspended"): frozenset({"steward", "operator"}),
    ("suspended", "active"): frozenset({"steward"}),
    ("draft", "expired"): frozenset({"operator", "hub"}),
    ("signed", "expired"): frozenset({"operator", "hub"}),
    ("active", "expired"): frozenset({"operator", "hub"}),
    ("suspended", "expired"): frozenset({"operator", "hub"}),
}


def moves_from(table: dict[tuple[str, str], frozenset[str]], state: str) -> tuple[str, ...]:
    """The states reachable in one move from ``state``."""
    return tuple(sorted(to for (frm, to) in table if frm == state))


def check(
    table: dict[tuple[str, str], frozenset[str]],
    what: str,
    current: str,
    wanted: str,
    parties: set[str],
) -> None:
    """Refuse unless ``parties`` (the roles the caller holds here) may move ``what`` from
    ``current`` to ``wanted``: 409 naming the allowed moves when the table has no such
    move, 403 when it is not the caller's to make."""
    allowed = moves_from(table, current)
    who = table.get((current, wanted))
    if who is None:
        moves = ", ".join(allowed) or "none (final)"
        raise HubError(
            409,
            "illegal transition",
            f"{what} is {current}; {wanted} is not allowed; allowed: {moves}",
            [{"path": "$.state", "message": f"allowed: {moves}"}],
        )
    if not who & parties:
        raise HubError(403, "forbidden", f"{what} {current} -> {wanted} is not yours to make")
