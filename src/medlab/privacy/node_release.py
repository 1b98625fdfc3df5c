"""The node's side of every release: admission, the gate, the audit, budgets and the journal.

One :class:`NodeReleaser` serves one node for a sequence of releases (a study run, later a
node agent's tasks). For each release it:

1. **admits** it before any data is touched: the analysis type must be allowed by the node's
   policy, and under differential privacy the project must hold a grant with enough budget
   left; a refusal here depends on nothing but settings and bookkeeping;
2. runs the **gate** (:func:`medlab.privacy.gate.apply`) with the node's differencing audit
   and person keys;
3. **records** it in one transaction: the populations the audit saw, the budget spent (under
   differential privacy), the released payload for reuse (so re-running the same release on
   the same data returns the same noisy values and spends nothing), and the gate's decisions
   for the steward (``medlab.release_log``; never released: which rule withheld a value
   would tell something about the data).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.cdm import outbox
from medlab.cdm.store import META_SCHEMA, open_store, rows_if_recorded, transaction
from medlab.privacy import budget as budgets
from medlab.privacy import gate
from medlab.privacy.audit import TABLE as AUDIT_TABLE
from medlab.privacy.audit import Auditor
from medlab.privacy.persons import PersonKeys
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import Population, Release, Released
from medlab.privacy.secret import node_secret

JOURNAL = f"{META_SCHEMA}.release_log"
CACHE = f"{META_SCHEMA}.release_cache"
_TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {JOURNAL} (
        release_id VARCHAR NOT NULL, released_at TIMESTAMP NOT NULL, analysis VARCHAR NOT NULL,
        site VARCHAR NOT NULL, policy_digest VARCHAR NOT NULL, context VARCHAR NOT NULL,
        decisions VARCHAR NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {CACHE} (
        release_id VARCHAR PRIMARY KEY, payload VARCHAR NOT NULL)""",
)


@dataclass(frozen=True)
class Admission:
    """Whether a release may go ahead: ``refused`` names why not (bookkeeping only), and a
    release already made under differential privacy comes back as ``cached``."""

    refused: str | None = None
    cached: Released | None = None


@dataclass(frozen=True)
class Charge:
    """Whom a run's privacy spend is charged to — its project — and the most it may spend
    (None: no cap beyond the project's budget), as a federated task carries them."""

    project: str | None
    epsilon: float | None = None
    rho: float | None = None


class NodeReleaser:
    """Releases at one node under its policy (see the module docstring). ``cap``: the most
    this run may spend (a governed task's hold), on top of the project's budget; ``spent``:
    what it has charged so far (epsilon, rho)."""

    def __init__(
        self,
        store: Path,
        policy: ReleasePolicy,
        project: str | None = None,
        cap: tuple[float | None, float | None] = (None, None),
    ) -> None:
        self.store = store
        self.site = store.stem
        self.policy = policy
        self.project = project
        self.cap = cap
        self.spent = [0.0, 0.0]
        self.keys = PersonKeys(node_secret(store))
        self.auditor = Auditor(None, self.keys, policy.min_cell_count)

    @property
    def _dp(self) -> bool:
        return self.policy.count_protection == "differential_privacy"

    def _loss(self) -> tuple[float, float]:
        settings = self.policy.differential_privacy
        if settings.mechanism == "laplace":
            return settings.epsilon_per_release, 0.0
        return 0.0, settings.rho_per_release

    def admit(self, analysis: str, release_id: str) -> Admission:
        """Settle what can be settled before any data is read."""
        if analysis not in self.policy.allowed_analyses:
            return Admission(refused="analysis type not allowed by the node's policy")
        if not self.policy.federation.release_site_level:
            return Admission(
                refused="the node releases pooled numbers only "
                "(its policy's federation.release_site_level is false)"
            )
        if not self._dp:
            return Admission()
        with open_store(self.store, read_only=True) as con:
            found = rows_if_recorded(
                con, f"SELECT payload FROM {CACHE} WHERE release_id = ?", [release_id]
            )
            if found:
                return Admission(cached=gate.restore(json.loads(found[0][0])))
            if not self.project:
                return Admission(
                    refused="the node releases study results with differential privacy; "
                    "name the study's project ($.project) so its budget can be charged"
                )
            refusal = budgets.shortfall(con, self.project, *self._loss())
        return Admission(refused=refusal or self._over_cap())

    def _over_cap(self) -> str | None:
        """Why the next release would pass this run's cap (None: it would not)."""
        for i, (name, loss) in enumerate(zip(("epsilon", "rho"), self._loss(), strict=True)):
            cap = self.cap[i]
            if loss > 0 and cap is not None and self.spent[i] + loss > cap + 1e-12:
                return (
                    f"the study's budget at this node is spent ({name} {cap:g} held for it; "
                    f"{self.spent[i]:g} spent, the release needs {loss:g})"
                )
        return None

    def audit(self, populations: Sequence[Population], release_id: str) -> list[bool]:
        """Whether the differencing audit flags each of ``populations`` — the persons behind
        a contribution to a secure sum, which passes through no gate — recorded as a
        release's populations are, so that later releases are compared with them. Populations
        audited before get the decision they got then (looked up by key: every round of a
        fit asks again)."""
        keys = [p.key for p in populations]
        with open_store(self.store, read_only=True) as con:
            known: dict[str, bool] = dict(
                rows_if_recorded(
                    con,
                    f"SELECT population_key, flagged FROM {AUDIT_TABLE} "
                    f"WHERE population_key IN ({', '.join('?' for _ in keys) or 'NULL'})",
                    keys,
                )
            )
        if all(p.key in known or len(p) == 0 for p in populations):
            return [bool(known.get(p.key, False)) for p in populations]
        with open_store(self.store) as con:
            self.auditor.bind(con)
            self.auditor.begin(release_id)
            flagged = [self.auditor.flagged(p) for p in populations]
            with transaction(con):
                self.auditor.save()
            self.auditor.bind(None)
        return flagged

    def release(self, request: Release, release_id: str, context: dict[str, Any]) -> Released:
        """``request`` through the gate; recorded (audit, budget, cache, journal) in one
        transaction. ``context`` (spec hash, study, analysis name) goes to the journal."""
        epsilon, rho = self._loss() if self._dp else (0.0, 0.0)
        with open_store(self.store) as con:
            for statement in (*_TABLES, *budgets.TABLES):
                con.execute(statement)
            self.auditor.bind(con)
            self.auditor.begin(release_id)
            side = gate.NodeSide(self.auditor, self.keys, epsilon or rho)
            released = gate.apply(self.policy, request, side)
            with transaction(con):
                self.auditor.save()
                if self._dp:
                    assert self.project is not None
                    budgets.spend(
                        con,
                        self.project,
                        epsilon=epsilon,
                        rho=rho,
                        query_key=release_id,
                        purpose=f"study release {request.analysis}",
                    )
                    self.spent = [self.spent[0] + epsilon, self.spent[1] + rho]
                    con.execute(
                        f"INSERT INTO {CACHE} VALUES (?, ?)",
                        [release_id, json.dumps(gate.payload(released))],
                    )
                con.execute(
                    f"INSERT INTO {JOURNAL} VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        release_id,
                        dt.datetime.now(dt.UTC).replace(tzinfo=None),
                        request.analysis,
                        self.site,
                        self.policy.digest(),
                        json.dumps(context, default=str),
                        json.dumps([d.to_dict() for d in side.journal]),
                    ],
                )
            outbox.flush(con, self.store)  # the budget spend's log entry, once committed
            self.auditor.bind(None)
        return released
