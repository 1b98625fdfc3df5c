"""Data-use agreements at the node: the steward signs one with the node's key, and the
agent checks every task against the copy it signed, never the hub's word about it.

Signing (``medlab node agreement sign STORE ID``) checks the terms against this node's own
policy (its version, the analyses it allows), records the terms in the node's inbox, grants
the project the agreed privacy budget in the node's ledger (the authoritative one) and logs
it (the agreed budget is granted on top of what the project already spent here). A task that
names an agreement runs only while that agreement is signed here, not
suspended by the steward, not past its date, and only within its analyses, cohort domains,
policy version and budget.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from medlab.errors import UsageError
from medlab.federation.common.messages import AGREEMENT_TERMS, Task, agreement_message
from medlab.federation.node.inbox import Agreements
from medlab.ledger import parties
from medlab.privacy import budget
from medlab.privacy.node_policy import node_policy
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.spec import StudySpec


def terms_of(document: dict[str, Any]) -> dict[str, Any]:
    """The signed terms of an agreement as the hub shows it."""
    missing = [k for k in AGREEMENT_TERMS if k not in document]
    if missing:
        raise UsageError(f"the agreement has no {missing[0]}")
    return {k: document[k] for k in AGREEMENT_TERMS}


def problems(store: Path, terms: dict[str, Any], policy: ReleasePolicy) -> list[str]:
    """Why this node's steward should not sign ``terms`` (empty: nothing against it)."""
    found = []
    if terms["node"] != store.stem:
        found.append(f"the agreement is for node {terms['node']}, this is {store.stem}")
    if terms["policy_version"] != policy.version:
        found.append(
            f"the agreement names policy version {terms['policy_version']}; this node's "
            f"policy is {policy.version}"
        )
    extra = sorted(set(terms["analyses"]) - set(policy.allowed_analyses))
    if extra:
        found.append(f"analysis type {extra[0]} is not allowed by this node's policy")
    if _expiry(terms) <= dt.datetime.now(dt.UTC):
        found.append("the agreement's date has passed")
    return found


def sign(store: Path, document: dict[str, Any], by: str) -> str:
    """Sign an agreement at this node: returns the node's signature over its terms (for the
    hub), having recorded the terms and granted the project's budget here."""
    terms = terms_of(document)
    found = problems(store, terms, node_policy(store).policy)
    if found:
        raise UsageError("not signed: " + "; ".join(found))
    party = parties.node(store)
    signature = party.signer.sign(agreement_message(terms))
    Agreements(store).save(terms, signature, by)
    # The agreement's budget is what the project may spend from now on: on top of what it
    # spent here under earlier agreements (so the hub's mirror, which starts at zero for a
    # new agreement, and the node's ledger agree on what is left).
    spent = budget.status(store, terms["project"])
    epsilon = spent.epsilon_spent + float(terms["epsilon"])
    budget.grant(store, terms["project"], epsilon, spent.rho_spent + float(terms["rho"]), by)
    party.log("agreement_signed", agreement=terms["agreement"], project=terms["project"], by=by)
    return signature


def check(store: Path, task: Task, spec: StudySpec, policy: ReleasePolicy) -> str | None:
    """Why ``task`` may not run under this node's agreements (None: it may)."""
    if task.agreement is None:
        if policy.federation.require_agreement:
            return "this node takes tasks under a data-use agreement its steward signed only"
        return None
    found = Agreements(store).get(task.agreement)
    if found is None:
        return f"agreement {task.agreement} was not signed at this node"
    terms = found.terms
    if terms["project"] != task.project:
        return f"agreement {task.agreement} is for project {terms['project']}"
    if found.state != "signed":
        return f"agreement {task.agreement} is {found.state} at this node"
    if _expiry(terms) <= dt.datetime.now(dt.UTC):
        return f"agreement {task.agreement} expired {terms['expires_at']}"
    if terms["policy_version"] != policy.version:
        return (
            f"agreement {task.agreement} was signed for policy version "
            f"{terms['policy_version']}; the node's policy is now {policy.version}"
        )
    outside = sorted({a.type for a in spec.analyses} - set(terms["analyses"]))
    if outside:
        return f"analysis type {outside[0]} is outside agreement {task.agreement}"
    domains = sorted(spec.domains() - set(terms["domains"]))
    if domains:
        return f"cohort domain {domains[0]} is outside agreement {task.agreement}"
    for name in ("epsilon", "rho"):
        asked = getattr(task, name)
        if asked is None or asked > float(terms[name]) + 1e-12:
            return f"the task's {name} cap is not within agreement {task.agreement}"
    return None


def _expiry(terms: dict[str, Any]) -> dt.datetime:
    moment = dt.datetime.fromisoformat(str(terms["expires_at"]))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
