"""The hub's side of a pooled model fitted on secure sums, rebuilt each round from the nodes'
outputs of every round so far (the hub keeps no other state).

Round 1: every node says whether it may contribute (``ready``) or why not (``withheld``).
Then each Newton iteration is one secure-aggregation session of five phases
(:mod:`medlab.privacy.secagg.rounds`) among the ready nodes that are still answering; the
session's sum gives the next coefficients (:func:`medlab.analyses.federated.model.advance`)
or the fit. Sessions overlap: the next session advertises its keys with the current one's
masked inputs and shares them with its consistency round, so a step takes three rounds (the
first five); the session opened ahead of the last step is abandoned. The threshold is the
largest of the analysis's ``threshold`` (default a majority of the ready nodes, at least 2)
and every ready node's ``min_sites``; a node checks it again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlab.analyses.federated import model as pooled
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.secagg import rounds
from medlab.privacy.secagg.protocol import SecAggError
from medlab.studies.local import NodeOutput
from medlab.studies.spec import FederatedModelAnalysis

_ROUNDING = ("none", "nearest5", "midpoint6")


@dataclass
class State:
    """Where one analysis stands: the next request (``ask``), or its result."""

    ask: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)


def threshold(a: FederatedModelAnalysis, ready: list[NodeOutput]) -> int:
    """The secure sums' threshold (the strictest of the analysis and the ready nodes)."""
    wanted = a.settings.threshold or max(2, len(ready) // 2 + 1)
    return max([wanted, *(int(o.policy.get("min_sites", 1)) for o in ready)])


def _messages(a: FederatedModelAnalysis, history: list[NodeOutput]) -> list[tuple[int, str, dict]]:
    """(round, site, what the site sent for ``a``) over every round."""
    return [(o.round, o.site, o.secure[a.name]) for o in history if a.name in o.secure]


def state(a: FederatedModelAnalysis, history: list[NodeOutput], last: int) -> State:
    """The analysis after round ``last``: what round ``last + 1`` asks, or the result."""
    sent = _messages(a, history)
    setup = [(site, m) for r, site, m in sent if r == 1]
    withheld = {site: m["withheld"] for site, m in setup if "withheld" in m}
    ready_sites = sorted(site for site, m in setup if m.get("ready"))
    first = {o.site: o for o in history if o.round == 1}
    ready = [first[s] for s in ready_sites]
    base = {"model": a.settings.model, "withheld_by": withheld} if withheld else {}
    changed = sorted(
        o.site for o in history if o.site in first and o.fingerprint != first[o.site].fingerprint
    )
    if changed:  # one fit, one snapshot per site
        return State(None, {**base, "withheld": f"the data at {changed[0]} changed during the fit"})
    t = threshold(a, ready)
    if len(ready) < t:
        return State(None, {**base, "withheld": f"{len(ready)} sites may contribute; need {t}"})
    keys = {o.site: o.public_key for o in ready}
    sessions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _, _site, m in sent:
        for x in m.get("messages", []):
            sessions.setdefault(x["session"], {}).setdefault(x["phase"], []).append(x["message"])
    order = sorted(sessions, key=lambda s: int(s.rsplit(".", 1)[1]))
    length = pooled.length(a.settings)
    sums: list[list[float]] = []
    members: list[str] = []
    pending: list[dict[str, Any]] = []  # the open sessions' next requests, oldest first
    try:
        for session in order:
            found = rounds.hub_next(session, t, length, sessions[session])
            if isinstance(found, dict):
                pending.append(found)
            elif pending:
                raise SecAggError(f"session {pending[0]['session']} was left unfinished")
            else:
                sums.append(found)
                members = rounds.survivors(sessions[session])
    except SecAggError as exc:
        return State(None, {**base, "withheld": f"secure aggregation stopped: {exc}"})
    step = pooled.advance(a.settings, sums)
    if not isinstance(step, np.ndarray):  # done; a session opened ahead is abandoned
        return State(None, {**base, **_gated(a, step, sums[-1], ready, members, len(sums))})
    if len(pending) > 2:  # never more than the current session and the next one
        return State(None, {**base, "withheld": "secure aggregation stopped: sessions overlap"})

    def fresh() -> dict[str, Any]:
        return rounds.request(f"{secrets.token_hex(8)}.{len(order) + 1}", "advertise", t, length)

    if not pending:
        return State({"secure": [fresh()], "keys": keys, "beta": step.tolist()})
    # The next session's keys are set up while the current one finishes: its advertisements
    # ride with the masked inputs, its shares with the consistency round (3 rounds a step).
    asks = [pending[0]]
    if pending[0]["phase"] == "mask" and len(pending) == 1:
        asks.append(fresh())
    elif pending[0]["phase"] == "consistency" and len(pending) == 2:
        asks.append(pending[1])
    return State({"secure": asks, "keys": keys, "beta": step.tolist()})


def _gated(
    a: FederatedModelAnalysis,
    fit: pooled.PooledFit,
    last: list[float],
    ready: list[NodeOutput],
    members: list[str],
    sessions: int,
) -> dict[str, Any]:
    """The pooled model through the strictest ready node's rules, or why it is withheld."""
    policies = [o.policy for o in ready if o.site in members]
    strict = ReleasePolicy(
        min_cell_count=max(int(p.get("min_cell_count", 10)) for p in policies),
        rounding=max(
            (p.get("rounding", "midpoint6") for p in policies),
            key=lambda r: _ROUNDING.index(r) if r in _ROUNDING else 2,
        )
        if all(p.get("count_protection") == "rounding" for p in policies)
        else "midpoint6",
    )
    per_parameter = max(int(p.get("min_events_per_parameter", 10)) for p in policies)
    counts = pooled.counts(a.settings, last)
    shown = {"rows": counts["rows"], "events": counts["events"]}
    if a.settings.model == "logistic":
        shown["rows without the outcome"] = counts["rows"] - counts["events"]
    for what, n in shown.items():
        if n < strict.min_cell_count:
            return {"withheld": f"the pooled {what} fall below {strict.min_cell_count}"}
    p = len(pooled.names(a.settings))
    if counts["events"] < per_parameter * p:
        return {"withheld": f"fewer than {per_parameter} pooled events per parameter"}
    digits = (_fewest(policies, "ratio_digits"), _fewest(policies, "p_value_digits"))
    body = pooled.summary(a.settings, fit, counts, strict.round_count, digits, members)
    return {**body, "sessions": sessions}


def _fewest(policies: list[dict[str, Any]], key: str) -> int | None:
    """The fewest digits any node's precision allows (None: every node gives full precision)."""
    given = [int(p[key]) for p in policies if p.get(key) is not None]
    return min(given) if given else None
