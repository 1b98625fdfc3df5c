"""What the node agent reports about its node to the hub, for the steward's pages: its
policy in words, its data-quality checks (shares and thresholds, never counts), its privacy
budgets per project, the tasks it holds and the newest entries of its transparency log.

The checks run once per snapshot of the store (its fingerprint): a store that did not change
is not scanned again.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, cast

from medlab import __version__
from medlab.cdm import dq
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.store import META_SCHEMA, open_store, rows_if_recorded, store_lock
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
from medlab.federation.node.inbox import Inbox
from medlab.governance.audit import entries
from medlab.ledger import parties
from medlab.privacy.node_policy import describe, node_policy
from medlab.recent import Recent

LOG_ENTRIES = 200  # the newest entries of the node's log that the profile carries
_BUDGETS = f"""SELECT project, epsilon_granted, epsilon_spent, rho_granted, rho_spent
    FROM {META_SCHEMA}.privacy_budget ORDER BY project"""


# The data-quality summaries of the snapshots seen last, by store and fingerprint: every
# agent of the process on the same snapshot reads the same summary, scanned once.
_CHECKED: Recent[DQSummary] = Recent(16)


class Profiler:
    """Builds a node's profile."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def build(self) -> NodeProfile:
        """The node's profile now (:class:`medlab.errors.StoreBusy` when someone holds the
        store: a profile never waits for the store, the agent sends it later)."""
        with store_lock(self.store, timeout=0):
            return self._build()

    def _build(self) -> NodeProfile:
        stored = node_policy(self.store)
        with open_store(self.store, read_only=True) as con:
            fingerprint, _ = snapshot_fingerprint(con)
            quality = _CHECKED.get(
                (str(self.store.resolve()), fingerprint), lambda: _quality(con, fingerprint)
            )
            budgets = [
                ProfileBudget(
                    project=row[0],
                    epsilon_granted=float(row[1]),
                    epsilon_spent=float(row[2]),
                    rho_granted=float(row[3]),
                    rho_spent=float(row[4]),
                )
                for row in rows_if_recorded(con, _BUDGETS)
            ]
        tasks = [
            ProfileTask(
                task_id=t.task_id,
                study_id=t.study_id,
                study=str((t.envelope.get("spec") or {}).get("name", "?"))[:300],
                state=cast(TaskState, t.state),
                received_at=t.received_at,
            )
            for t in Inbox(self.store).all()
            if t.state not in FINAL
        ]
        policy = stored.policy
        return NodeProfile(
            agent_version=__version__,
            store=str(self.store)[:300],
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
            log=log_entries(self.store),
        )


def _quality(con: Any, fingerprint: str) -> DQSummary:
    report = dq.run_checks(con)
    checks = []
    for r in report.results:
        c = r.check
        checks.append(
            DQCheck(
                name=c.name,
                check=c.kind,
                category=c.category,
                table=c.table,
                field=c.field,
                description=c.description[:1000],
                pct_violated=round(r.pct_violated, 2),
                threshold=c.threshold,
                passed=r.passed,
            )
        )
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return DQSummary(fingerprint=fingerprint, checked_at=now, checks=checks)


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
