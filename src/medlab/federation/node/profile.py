"""What the node agent reports about its node to the hub, for the steward's pages: its
policy in words, its data-quality checks (shares and thresholds, never counts), its privacy
budgets per project, the tasks it holds and the newest entries of its transparency log.

The checks run once per snapshot of the store (its fingerprint) and are kept in it
(:func:`medlab.cdm.dq.kept`, shared with the study run): a store that did not change is not
scanned again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from medlab import __version__
from medlab.cdm import dq
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.store import open_store, store_lock
from medlab.federation.common.messages import (
    FINAL,
    DQCheck,
    DQSummary,
    NodeProfile,
    ProfileBudget,
    ProfilePolicy,
    ProfileTask,
    TaskState,
)
from medlab.federation.node.console import running_at
from medlab.federation.node.inbox import Inbox
from medlab.governance.audit import entries
from medlab.ledger import parties
from medlab.privacy import budget
from medlab.privacy.node_policy import describe, node_policy

LOG_ENTRIES = 200  # the newest entries of the node's log that the profile carries


def build(store: Path) -> NodeProfile:
    """The node's profile now (:class:`medlab.errors.StoreBusy` when someone holds the
    store: a profile never waits for the store, the agent sends it later)."""
    with store_lock(store, timeout=0):
        return _build(store)


def _build(store: Path) -> NodeProfile:
    stored = node_policy(store)
    with open_store(store) as con:  # the checks are kept in it, once per snapshot
        fingerprint, _ = snapshot_fingerprint(con)
        quality = _quality(fingerprint, dq.kept(con, fingerprint))
        budgets = [ProfileBudget.model_validate(vars(b)) for b in budget.every(con)]
    tasks = [
        ProfileTask(
            task_id=t.task_id,
            study_id=t.study_id,
            study=str((t.envelope.get("spec") or {}).get("name", "?"))[:300],
            state=cast(TaskState, t.state),
            received_at=t.received_at,
        )
        for t in Inbox(store).all()
        if t.state not in FINAL
    ]
    policy = stored.policy
    return NodeProfile(
        agent_version=__version__,
        store=str(store)[:300],
        policy=ProfilePolicy(
            version=policy.version,
            digest=policy.digest(),
            version_no=stored.version_no,
            set_at=stored.set_at,
            set_by=stored.set_by,
            words=describe(policy),
        ),
        dq=quality,
        budgets=budgets,
        tasks=tasks,
        log=log_entries(store),
        console=running_at(store),
    )


def _quality(fingerprint: str, report: dict[str, Any]) -> DQSummary:
    """The kept checks as the profile carries them: shares and thresholds, never counts."""
    checks = [
        DQCheck(
            name=c["name"],
            check=c["check"],
            category=c["category"],
            table=c["table"],
            field=c["field"],
            description=str(c["description"])[:1000],
            pct_violated=round(c["pct_violated"], 2),
            threshold=c["threshold"],
            passed=c["passed"],
        )
        for c in report["checks"]
    ]
    return DQSummary(fingerprint=fingerprint, checked_at=report["checked_at"], checks=checks)


# The only numbers a log entry keeps in the profile: where it stands in the log, a round,
# a policy's number and a budget (the profile carries budgets anyway). Any other number of
# an entry (the rows a load wrote, say) stays at the node.
_NUMBERS = frozenset({"index", "round", "version_no", "epsilon", "rho"})


def log_entries(store: Path, newest: int = LOG_ENTRIES) -> list[dict[str, Any]]:
    """The newest entries of the node's transparency log, each as its index, time, type
    and the text and yes/no fields of its statement (identifiers, hashes, names, who)."""
    found = []
    for e in entries(parties.node(store).log_dir)[-newest:]:
        statement = e["statement"] if isinstance(e.get("statement"), dict) else {}
        row = {k: v for k, v in {**e, **statement}.items() if _kept(k, v)}
        found.append({k: (v[:300] if isinstance(v, str) else v) for k, v in row.items()})
    return found


def _kept(key: str, value: Any) -> bool:
    if key == "signature":
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return key in _NUMBERS
    return value is None or isinstance(value, str | bool)


def as_json(profile: NodeProfile) -> dict[str, Any]:
    """The profile as the request body."""
    data: dict[str, Any] = json.loads(profile.model_dump_json())
    return data
