"""The hub's side of an analysis fitted on secure sums — a pooled model
(``federated_model``) or a comparative analysis's pooled estimates — rebuilt each round from
the nodes' outputs of every round so far (the hub keeps no other state).

Round 1: every node says whether it may contribute (``ready``, with what the analysis needs
to set up, e.g. its propensity covariates) or why not (``withheld``). Then each step of the
estimator is one secure-aggregation session of five phases
(:mod:`medlab.privacy.secagg.rounds`) among the ready nodes that are still answering; the
session's sum gives the next query (:func:`medlab.analyses.federated.model.advance`,
:func:`medlab.analyses.federated.comparative.drive`) or the fit. Sessions overlap: the next
session advertises its keys with the current one's masked inputs and shares them with its
consistency round, so a step takes three rounds (the first five); the session opened
ahead of the last step is abandoned. The threshold is the largest of the analysis's
``threshold`` (default a majority of the ready nodes, at least 2) and every ready node's
``min_sites``; a node checks it again. A node that refuses a request (``aborted``: a check
failed, or its guard against summing one query over two survivor sets) ends the fit.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlab.analyses.federated import comparative as pooled_cm
from medlab.analyses.federated import model as pooled
from medlab.ledger.keys import canonical
from medlab.privacy import gate, secure_tables
from medlab.privacy.curves import curve_points
from medlab.privacy.policy import Precision, ReleasePolicy
from medlab.privacy.secagg import rounds
from medlab.privacy.secagg.protocol import SecAggError
from medlab.studies.local import NodeOutput
from medlab.studies.spec import (
    CharacterizationAnalysis,
    ComparativeAnalysis,
    FederatedModelAnalysis,
    IncidenceAnalysis,
    SecureAnalysis,
)

Tabled = (IncidenceAnalysis, CharacterizationAnalysis)


@dataclass(frozen=True)
class TablesSum:
    """The summed numbers of an incidence or characterization analysis's tables."""

    values: list[float]


_ROUNDING = ("none", "nearest5", "midpoint6")


@dataclass
class State:
    """Where one analysis stands: the next request (``ask``), or its result."""

    ask: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _wanted(a: SecureAnalysis) -> int | None:
    if isinstance(a, FederatedModelAnalysis):
        return a.settings.threshold
    if isinstance(a, ComparativeAnalysis) and a.settings.pooled:
        return a.settings.pooled.threshold
    return None


def threshold(a: SecureAnalysis, ready: list[NodeOutput]) -> int:
    """The secure sums' threshold (the strictest of the analysis and the ready nodes)."""
    wanted = _wanted(a) or max(2, len(ready) // 2 + 1)
    return max([wanted, *(int(o.policy.get("min_sites", 1)) for o in ready)])


def _messages(a: SecureAnalysis, history: list[NodeOutput]) -> list[tuple[int, str, dict]]:
    """(round, site, what the site sent for ``a``) over every round."""
    return [(o.round, o.site, o.secure[a.name]) for o in history if a.name in o.secure]


def _prepare(a: SecureAnalysis, setup: dict[str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Every session's vector length, and what every query carries (the analysis's set-up
    from the ready sites' round-1 messages)."""
    if isinstance(a, FederatedModelAnalysis):
        if a.settings.model != "cox_binned":
            return pooled.length(a.settings), {}
        widths = [m.get("bin_days") for m in setup.values()]
        if not all(isinstance(w, int) and 1 <= w <= 3650 for w in widths):
            raise SecAggError("a site names no event-time bin width")
        width = max(widths)  # type: ignore[type-var]
        grid = pooled.Grid.of(a.settings, width)  # type: ignore[arg-type]
        return pooled.length(a.settings, grid), {"bin_days": width}
    if isinstance(a, Tabled):
        shapes = [m["shape"] for m in setup.values() if "shape" in m]
        if not shapes:
            raise SecAggError("no node that releases only pooled numbers may contribute")
        shape = shapes[0]
        wanted = secure_tables.digest({"tables": shape})
        if any(m.get("shape_digest") != wanted for m in setup.values()) or any(
            s != shape for s in shapes
        ):
            raise SecAggError("the sites' tables differ in shape")
        withheld = sorted({tuple(r) for m in setup.values() for r in m.get("withheld_rows", [])})
        context = {"shape": shape, "withheld": [list(r) for r in withheld]}
        return sum(secure_tables.size(s) for s in shape), context
    assert isinstance(a, ComparativeAnalysis)
    most = a.settings.pooled.max_covariates if a.settings.pooled else 0
    listed = {}
    for site, m in setup.items():
        names = m.get("covariates")
        if not isinstance(names, list) or len(names) > most:
            raise SecAggError(f"{site} lists no covariates or more than {most}")
        if not all(isinstance(c, str) and 0 < len(c) <= 200 for c in names):
            raise SecAggError(f"{site} lists a covariate that is not a name")
        listed[site] = names
    chosen = pooled_cm.choose(listed, most)
    return pooled_cm.length(a.settings, len(chosen)), {"covariates": chosen}


def _step(
    a: SecureAnalysis, context: dict[str, Any], sums: list[list[float]]
) -> dict[str, Any] | pooled.PooledFit | pooled_cm.Finished | TablesSum:
    """The next query, or the finished fit."""
    if isinstance(a, Tabled):
        return TablesSum(sums[0]) if sums else {"stage": "tables"}
    if isinstance(a, FederatedModelAnalysis):
        found = pooled.advance(a.settings, sums, _grid(a, context))
        return {"beta": found.tolist()} if isinstance(found, np.ndarray) else found
    assert isinstance(a, ComparativeAnalysis)
    try:
        return pooled_cm.drive(a.settings, context["covariates"], sums)
    except ValueError as exc:
        raise SecAggError(str(exc)) from exc


_FINISHED: dict[str, list[float]] = {}  # finished sessions' sums, by their messages' digest
_KEPT = 512


def _next(
    session: str, t: int, length: int, messages: dict[str, list[dict[str, Any]]]
) -> dict[str, Any] | list[float]:
    """:func:`medlab.privacy.secagg.rounds.hub_next`, a finished session's sum remembered
    (the hub rebuilds every round from all the messages; unmasking every earlier session
    again made a fit's cost grow with the square of its rounds)."""
    if set(messages) != set(rounds.PHASES):
        return rounds.hub_next(session, t, length, messages)
    key = hashlib.sha256(canonical([session, t, length, messages])).hexdigest()
    if key not in _FINISHED:
        found = rounds.hub_next(session, t, length, messages)
        assert isinstance(found, list)
        _FINISHED[key] = found
        while len(_FINISHED) > _KEPT:
            _FINISHED.pop(next(iter(_FINISHED)))
    return list(_FINISHED[key])


def _length_of(session: str, default: int) -> int:
    """A session's vector length: named in its id (``token.length.index``), else
    ``default``."""
    parts = session.split(".")
    length = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else default
    if length > rounds.MAX_LENGTH:  # a session id no hub of ours names
        raise SecAggError(f"session {session[:40]} names a vector longer than nodes mask")
    return length


def _stage_length(
    a: SecureAnalysis, context: dict[str, Any], step: dict[str, Any], default: int
) -> int:
    """The length of a session opened now: a cross-validation round's while the pooled
    propensity prior is being cross-validated (the session opened ahead of the last such
    round is one too, zero-padded), else ``default``."""
    if isinstance(a, ComparativeAnalysis) and step.get("stage") == "cv":
        return pooled_cm.length(a.settings, len(context["covariates"]), "cv")
    return default


def _grid(a: FederatedModelAnalysis, context: dict[str, Any]) -> pooled.Grid | None:
    """The event-time bins of an unstratified pooled Cox model (None: another model)."""
    if a.settings.model != "cox_binned":
        return None
    return pooled.Grid.of(a.settings, int(context["bin_days"]))


def state(a: SecureAnalysis, history: list[NodeOutput], last: int) -> State:
    """The analysis after round ``last``: what round ``last + 1`` asks, or the result."""
    sent = _messages(a, history)
    setup = [(site, m) for r, site, m in sent if r == 1]
    withheld = {site: m["withheld"] for site, m in setup if "withheld" in m}
    ready_sites = sorted(site for site, m in setup if m.get("ready"))
    first = {o.site: o for o in history if o.round == 1}
    ready = [first[s] for s in ready_sites]
    if isinstance(a, Tabled) and not any("shape" in m for _, m in setup):
        return State(None, {})  # every node releases its own tables: nothing to sum
    base: dict[str, Any] = {"withheld_by": withheld} if withheld else {}
    if isinstance(a, FederatedModelAnalysis) and withheld:
        base["model"] = a.settings.model
    changed = sorted(
        o.site for o in history if o.site in first and o.fingerprint != first[o.site].fingerprint
    )
    if changed:  # one fit, one snapshot per site
        return State(None, {**base, "withheld": f"the data at {changed[0]} changed during the fit"})
    aborted = sorted((site, m["aborted"]) for _, site, m in sent if m.get("aborted"))
    if aborted:  # a node refused a request: a hub's misstep or a node's guard ends the fit
        site, why = aborted[0]
        return State(None, {**base, "withheld": f"secure aggregation stopped: {site}: {why}"})
    t = threshold(a, ready)
    if len(ready) < t:
        return State(None, {**base, "withheld": f"{len(ready)} sites may contribute; need {t}"})
    keys = {o.site: o.public_key for o in ready}
    sessions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _, _site, m in sent:
        for x in m.get("messages", []):
            sessions.setdefault(x["session"], {}).setdefault(x["phase"], []).append(x["message"])
    order = sorted(sessions, key=lambda s: int(s.rsplit(".", 1)[1]))  # token[.length].index
    sums: list[list[float]] = []
    members: list[str] = []
    pending: list[dict[str, Any]] = []  # the open sessions' next requests, oldest first
    try:
        length, context = _prepare(a, {site: m for site, m in setup if site in keys})
        for session in order:
            found = _next(session, t, _length_of(session, length), sessions[session])
            if isinstance(found, dict):
                pending.append(found)
            elif pending:
                raise SecAggError(f"session {pending[0]['session']} was left unfinished")
            else:
                sums.append(found)
                members = rounds.survivors(sessions[session])
        step = _step(a, context, sums)
    except SecAggError as exc:
        return State(None, {**base, "withheld": f"secure aggregation stopped: {exc}"})
    if not isinstance(step, dict):  # done; a session opened ahead is abandoned
        policies = [o.policy for o in ready if o.site in members]
        if isinstance(step, TablesSum):
            body = _gated_tables(context, step, policies, members)
        elif isinstance(step, pooled_cm.Finished):
            assert isinstance(a, ComparativeAnalysis)
            body = _gated_comparative(a, step, policies, members)
        else:
            assert isinstance(a, FederatedModelAnalysis)
            body = _gated(a, step, sums[-1], policies, members, _grid(a, context))
        return State(None, {**base, **body, "sessions": len(sums)})
    if len(pending) > 2:  # never more than the current session and the next one
        return State(None, {**base, "withheld": "secure aggregation stopped: sessions overlap"})

    def fresh() -> dict[str, Any]:
        size = _stage_length(a, context, step, length)  # type: ignore[arg-type]
        session = f"{secrets.token_hex(8)}.{size}.{len(order) + 1}"
        return rounds.request(session, "advertise", t, size)

    query = {k: v for k, v in context.items() if k not in ("shape", "withheld")} | step
    if not pending:
        return State({"secure": [fresh()], "keys": keys, "query": query})
    # The next session's keys are set up while the current one finishes: its advertisements
    # ride with the masked inputs, its shares with the consistency round (3 rounds a step).
    asks = [pending[0]]
    if pending[0]["phase"] == "mask" and len(pending) == 1:
        asks.append(fresh())
    elif pending[0]["phase"] == "consistency" and len(pending) == 2:
        asks.append(pending[1])
    return State({"secure": asks, "keys": keys, "query": query})


def _strict(policies: Sequence[dict[str, Any]]) -> tuple[ReleasePolicy, int]:
    """The strictest rules of the contributing nodes (counts, rounding, precision, zeros,
    group sizes), and their strictest events per parameter."""
    given = [p["precision"] for p in policies if isinstance(p.get("precision"), dict)]
    precision: Precision | str = "none"
    if given or not all(p.get("precision") == "none" for p in policies):
        digits = {k: min([d[k] for d in given if k in d], default=v) for k, v in Precision()}
        precision = Precision(**digits)
    strict = ReleasePolicy(
        precision=precision,  # type: ignore[arg-type]
        allow_zeros=all(bool(p.get("allow_zeros", False)) for p in policies),
        min_group_size=max(int(p.get("min_group_size", 10)) for p in policies),
        min_cell_count=max(int(p.get("min_cell_count", 10)) for p in policies),
        rounding=max(
            (p.get("rounding", "midpoint6") for p in policies),
            key=lambda r: _ROUNDING.index(r) if r in _ROUNDING else 2,
        )
        if all(p.get("count_protection") == "rounding" for p in policies)
        else "midpoint6",
    )
    per_parameter = max(int(p.get("min_events_per_parameter", 10)) for p in policies)
    return strict, per_parameter


def _gated(
    a: FederatedModelAnalysis,
    fit: pooled.PooledFit,
    last: list[float],
    policies: list[dict[str, Any]],
    members: list[str],
    grid: pooled.Grid | None = None,
) -> dict[str, Any]:
    """The pooled model through the strictest contributing node's rules, or why it is
    withheld."""
    strict, per_parameter = _strict(policies)
    counts = pooled.counts(a.settings, last, grid)
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
    return {**body, **({"bin_days": int(grid.width)} if grid else {})}


def _gated_comparative(
    a: ComparativeAnalysis,
    done: pooled_cm.Finished,
    policies: list[dict[str, Any]],
    members: list[str],
) -> dict[str, Any]:
    """The pooled estimates through the strictest contributing node's rules: the
    propensity model's rows, then per adjustment its persons and events per arm (counts
    below the rule withhold that estimate), events per parameter, ratio and p-value
    precision."""
    strict, per_parameter = _strict(policies)
    rows, targets = done.ps_rows
    for what, n in (("target rows", targets), ("comparator rows", rows - targets)):
        if n < strict.min_cell_count:
            return {"withheld": f"the propensity model's {what} fall below the count rule"}
    digits = (_fewest(policies, "ratio_digits"), _fewest(policies, "p_value_digits"))
    estimates = [
        pooled_cm.released(
            o, strict.round_count, strict.min_cell_count, per_parameter, digits, members
        )
        for o in done.outcomes
    ]
    share = _fewest(policies, "proportion_digits")
    km = {
        adjustment: {
            arm: curve_points(points, strict, share, lambda n, _t: strict.round_count(n))[0]
            for arm, points in arms.items()
        }
        for adjustment, arms in done.km.items()
    }
    ps = {
        "covariates": len(done.model.coefficients),
        "nonzero": int(np.count_nonzero(done.model.coefficients)),
        "converged": done.model.converged,
        "rows": strict.round_count(rows),
        "variance": done.variance,
        "variance_from": "fixed" if a.settings.ps_variance is not None else "cross-validation",
    }
    return {"estimates": estimates, "ps": ps, "km": km}


def _gated_tables(
    context: dict[str, Any],
    summed: TablesSum,
    policies: list[dict[str, Any]],
    members: list[str],
) -> dict[str, Any]:
    """The summed tables as releases of the pooled sites, each through the gate under the
    strictest contributing node's rules, the rows any node's audit flagged withheld
    (payloads, as nodes upload theirs)."""
    strict, _ = _strict(policies)
    parts, start = [], 0
    for i, s in enumerate(context["shape"]):
        end = start + secure_tables.size(s)
        flagged = {(str(e), str(r)) for j, e, r in context["withheld"] if j == i}
        release = secure_tables.rebuild(s, summed.values[start:end], "pooled", flagged)
        keys = {f"withheld:{e}:{r}" for e, r in flagged}
        side = gate.NodeSide(auditor=secure_tables.Withheld(keys))  # type: ignore[arg-type]
        parts.append(gate.payload(gate.apply(strict, release, side)))
        start = end
    return {"parts": parts, "sites": members}


def _fewest(policies: list[dict[str, Any]], key: str) -> int | None:
    """The fewest digits any node's precision allows (None: every node gives full precision)."""
    given = [int(p[key]) for p in policies if p.get(key) is not None]
    return min(given) if given else None
