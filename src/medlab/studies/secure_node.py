"""A node's side of an analysis fitted on secure sums (a pooled model, a comparative
analysis's pooled estimates): in round 1 whether it may contribute (and what the set-up
needs: its propensity covariates), then its message of each secure-aggregation round
(:mod:`medlab.studies.secure` is the hub's side).

Before it answers, the node checks what the hub asks: its own name and key among the
parties, the threshold no lower than its ``min_sites``, a majority of the parties and 2, and
its contribution within its own small-count rules (:func:`medlab.analyses.federated.model.
withheld`, :func:`medlab.analyses.federated.comparative.withheld`). A request that fails a
check, or a protocol message that is forged or inconsistent, ends this node's part in the
analysis (``aborted``, with the reason) and never the task. Every message sent is logged in
the node's transparency log (its digest, never the vector).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from medlab.analyses.federated import comparative as pooled_cm
from medlab.analyses.federated import model as pooled
from medlab.analyses.scope import Scope
from medlab.cdm.identity import identity
from medlab.cdm.store import open_store
from medlab.ledger.keys import canonical
from medlab.ledger.parties import Party
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import Population
from medlab.privacy.secagg import rounds
from medlab.privacy.secagg.protocol import SecAggError
from medlab.studies.spec import ComparativeAnalysis, FederatedModelAnalysis

SecureAnalysis = FederatedModelAnalysis | ComparativeAnalysis
Rows = pooled.Design | pooled_cm.SiteRows


def sessions_of(store: Path) -> rounds.Sessions:
    """Where the node of ``store`` keeps its open sessions: beside its identity key."""
    return rounds.Sessions(identity(store).key.with_suffix(".secagg"))


_DESIGNS: dict[tuple[str, str, str], Rows] = {}
_KEPT = 8


def _design(a: SecureAnalysis, store: Path, fingerprint: str) -> Rows:
    """The analysis's rows at this node, built once per data snapshot within a process
    (every round of a fit asks for the same rows)."""
    key = (str(store.resolve()), fingerprint, a.model_dump_json())
    if key not in _DESIGNS:
        with open_store(store, read_only=True) as con:
            if isinstance(a, FederatedModelAnalysis):
                found: Rows = pooled.design(con, a.target, a.comparator, a.outcome, a.settings)
            else:
                found = pooled_cm.site_rows(con, a.target, a.comparator, a.outcome, a.settings)
            _DESIGNS[key] = found
        while len(_DESIGNS) > _KEPT:
            _DESIGNS.pop(next(iter(_DESIGNS)))
    return _DESIGNS[key]


def _check(asked: dict[str, Any], site: str, party: Party, policy: ReleasePolicy) -> None:
    keys = asked.get("keys")
    request = asked.get("secure")
    if not isinstance(keys, dict) or not isinstance(request, list) or not request:
        raise SecAggError("the round names no parties or no secure-aggregation request")
    if keys.get(site) != party.signer.public_pem:
        raise SecAggError("the parties the hub names do not include this node under its key")
    least = max(2, policy.federation.min_sites, len(keys) // 2 + 1)
    for one in request:
        t = one.get("threshold") if isinstance(one, dict) else None
        if not isinstance(t, int) or t < least:
            raise SecAggError(f"the threshold {t} is below this node's least, {least}")


def _setup(a: SecureAnalysis, d: Rows, policy: ReleasePolicy) -> dict[str, Any]:
    """Round 1's message: ``withheld`` with the reason, or ``ready`` (and the covariates
    this site may list, for pooled estimates)."""
    dp = policy.differential_privacy
    exact = policy.count_protection != "differential_privacy" or dp.exact_models
    if isinstance(a, FederatedModelAnalysis):
        assert isinstance(d, pooled.Design)
        reason = pooled.withheld(d, a.settings, policy.min_cell_count, exact)
        return {"withheld": reason} if reason else {"ready": True}
    assert isinstance(d, pooled_cm.SiteRows) and a.settings.pooled is not None
    reason = pooled_cm.withheld(d, policy.min_cell_count, exact)
    if reason:
        return {"withheld": reason}
    most = a.settings.pooled.max_covariates
    return {"ready": True, "covariates": pooled_cm.candidates(d, policy.min_cell_count, most)}


def _values(a: SecureAnalysis, d: Rows, query: Any, size: int) -> list[float]:
    """This node's vector for the round's query."""
    if not isinstance(query, dict):
        raise ValueError("the round asks no query")
    if isinstance(a, FederatedModelAnalysis):
        assert isinstance(d, pooled.Design)
        return pooled.contribution(d, a.settings, query.get("beta", []))
    assert isinstance(d, pooled_cm.SiteRows)
    chosen = query.get("covariates")
    most = a.settings.pooled.max_covariates if a.settings.pooled else 0
    if not isinstance(chosen, list) or len(chosen) > most:
        raise ValueError(f"the query names no covariates or more than {most}")
    if not all(isinstance(c, str) for c in chosen):
        raise ValueError("the query names a covariate that is not a name")
    return pooled_cm.values(d, a.settings, chosen, query, size)


def _size(request: Any) -> int:
    size = request.get("length") if isinstance(request, dict) else None
    return size if isinstance(size, int) else 0


def _populations(a: SecureAnalysis, d: Rows, scope: Scope) -> list[Population]:
    """The persons a contribution is about: the study population's arms (its cohorts are
    audited with the study's other releases)."""
    if isinstance(d, pooled.Design):
        persons, arm = d.persons, d.treatment
    else:
        persons = d.population["person_id"].to_numpy()
        arm = d.population["treatment"].to_numpy()
    roots = (a.target, a.comparator, a.outcome)
    settings = a.settings.model_dump(mode="json", exclude={"pooled"})
    return [
        scope.derived(
            f"secure_{a.type}",
            roots,
            settings,
            name,
            persons=frozenset(int(p) for p in persons[arm == value]),
        )
        for name, value in (("target", 1), ("comparator", 0))
    ]


def node_step(
    a: SecureAnalysis,
    store: Path,
    site: str,
    policy: ReleasePolicy,
    party: Party,
    round_: int,
    asked: dict[str, Any] | None,
    spec_hash: str,
    fingerprint: str,
    audit: Callable[[list[Population]], bool] | None = None,
    scope: Scope | None = None,
) -> dict[str, Any] | None:
    """What this node sends for ``a`` in ``round_`` (None: nothing). ``audit`` with
    ``scope``: the node's differencing audit, which sees the populations the contribution
    is about and withholds it when it flags one."""
    d = _design(a, store, fingerprint)
    found = _setup(a, d, policy)
    # Every round: the audit gives a population the decision it got the first time.
    if "ready" in found and audit and scope and audit(_populations(a, d, scope)):
        found = {"withheld": "the differencing audit flags a population it is about"}
    if round_ == 1:
        logged = {k: v for k, v in found.items() if k != "covariates"}
        party.log("secure_model", spec_hash=spec_hash, analysis=a.name, round=round_, **logged)
        return found
    if asked is None or "withheld" in found:
        return None
    sent = []
    try:
        _check(asked, site, party, policy)
        keys: dict[str, str] = asked["keys"]
        for request in asked["secure"]:  # the current session's phase, and the next's
            message = rounds.node_round(
                sessions_of(store),
                site,
                party.signer,
                keys.get,
                request,
                partial(_values, a, d, asked.get("query"), _size(request)),
            )
            digest = "sha256:" + hashlib.sha256(canonical(message)).hexdigest()
            party.log(
                "secure_sum",
                spec_hash=spec_hash,
                analysis=a.name,
                round=round_,
                session=request["session"],
                phase=request["phase"],
                message=digest,
            )
            sent.append(
                {"session": request["session"], "phase": request["phase"], "message": message}
            )
    except (SecAggError, ValueError) as exc:
        party.log("secure_sum_aborted", spec_hash=spec_hash, analysis=a.name, round=round_)
        return {"messages": sent, "aborted": str(exc)}
    return {"messages": sent}
