"""How the hub settles studies: deadlines, the next round of a multi-round study, and the
combined result over the nodes that answered (with, on a governed hub, the budget holds
released against what the nodes reported spending, and the study's usage metered)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medlab.federation.common.messages import FINAL, Task
from medlab.federation.hub import db
from medlab.governance import metering
from medlab.governance import service as gov
from medlab.ledger import parties
from medlab.ledger.evidence import log_part
from medlab.ledger.keys import canonical
from medlab.studies.combine import combine_study, next_round
from medlab.studies.local import NodeOutput
from medlab.studies.spec import StudySpec


def _iso(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")


class Combining:
    """The hub's settling, as a part of :class:`medlab.federation.hub.service.Hub`."""

    sessions: sessionmaker[Session]
    party: parties.Party
    _combining: threading.Lock
    mode: str

    @property
    def governed(self) -> bool:
        """Whether studies need projects, agreements and two approvals."""
        return self.mode == "authorized"

    def _signed(self, task: Task) -> db.Task:
        """The task signed by the hub, as a row."""
        signature = self.party.signer.sign(canonical(task.body()))
        envelope = task.model_copy(update={"signature": signature}).model_dump(mode="json")
        return db.Task(
            id=task.task_id,
            study_id=task.study_id,
            node=task.node,
            round=task.round,
            envelope=envelope,
        )

    def settle(self, study_id: str | None = None) -> None:
        """Expire tasks past their deadline and combine every study whose tasks are all
        final (over the sites that answered, if they reach the quorum)."""
        now = db.utcnow()
        with db.transaction(self.sessions) as s:
            expired = gov.expire_due(s, now) if self.governed and study_id is None else []
            query = select(db.Study).where(db.Study.state == "running")
            if study_id is not None:
                query = query.where(db.Study.id == study_id)
            due = []
            for study in s.scalars(query):
                tasks = list(s.scalars(select(db.Task).where(db.Task.study_id == study.id)))
                for t in tasks:
                    if t.state in FINAL:
                        continue
                    if now >= study.deadline:
                        t.state, t.reason, t.updated_at = "expired", "deadline passed", now
                        t.ended_at = now
                    elif now >= _round_deadline(t):
                        t.state, t.reason, t.updated_at = "expired", "round deadline passed", now
                        t.ended_at = now
                if all(t.state in FINAL for t in tasks):
                    due.append(study.id)
        for agreement in expired:
            self.party.log("agreement_expired", agreement=agreement, reason="its date passed")
        for found in due:
            with self._combining:  # one combine at a time: a study is combined once
                try:
                    self._combine(found)
                except Exception as exc:  # the researcher gets a reason without internals
                    self._fail(found, "the hub could not combine the released results")
                    self.party.log("combine_failed", study_id=found, error=type(exc).__name__)

    def _fail(self, study_id: str, reason: str) -> None:
        with db.transaction(self.sessions) as s:
            study = s.get(db.Study, study_id)
            if study is not None and study.state == "running":
                study.state, study.reason = "failed", reason
                self._closed(s, study)

    def _closed(self, s: Session, study: db.Study) -> None:
        """A governed study has ended: its holds are released against what each node
        reported spending, and its tasks are metered."""
        study.updated_at = db.utcnow()
        if not self.governed:
            return
        tasks = list(s.scalars(select(db.Task).where(db.Task.study_id == study.id)))
        gov.settle_holds(s, study.id, metering.spent_by_node(tasks))
        metering.record_tasks(s, study, tasks)

    def _combine(self, study_id: str) -> None:
        """Post the next round, or combine every round over the nodes that answered them
        all, or fail the study when too few answered."""
        with self.sessions() as s:
            study = s.get(db.Study, study_id)
            assert study is not None
            if study.state != "running":
                return  # combined (or failed) meanwhile
            tasks = list(
                s.scalars(
                    select(db.Task)
                    .where(db.Task.study_id == study_id)
                    .order_by(db.Task.round, db.Task.node)
                )
            )
        if any(t.state not in FINAL for t in tasks):
            return  # another settle posted the next round meanwhile: it is under way
        last = max(t.round for t in tasks)
        latest = {t.node: t for t in tasks}  # each node's task of its last round
        answered = [t for t in tasks if t.round == last and t.state == "completed"]
        outputs = [NodeOutput.model_validate(t.output) for t in answered]
        # The stricter quorum wins: the study's, or any answering node's own policy.
        quorum = max([study.min_sites, *(o.policy.get("min_sites", 1) for o in outputs)])
        others = [
            f"{t.node}: {t.state}" + (f" — {t.reason}" if t.reason else "")
            for t in latest.values()
            if t.state != "completed" or t.round != last
        ]
        summary = f"answered {len(answered)} of {len(latest)}" + (
            f" ({'; '.join(others)})" if others else ""
        )
        sites = {"answered": len(answered), "of": len(latest), "quorum": quorum, "summary": summary}
        files: dict[str, bytes] = {}
        spec = StudySpec.model_validate(study.spec)
        if len(answered) >= quorum and answered:
            history = [NodeOutput.model_validate(t.output) for t in tasks if t.state == "completed"]
            params = next_round(spec, last, history)
            if params is not None:
                self._post_round(study_id, answered, last + 1, params, _round_timeout(spec))
                return
            names = {t.node for t in answered}
            every = [
                NodeOutput.model_validate(t.output)
                for t in tasks
                if t.node in names and t.state == "completed"
            ]
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                combine_study(spec, every, out, self.party, extra={"sites": sites}, history=history)
                self._publish_hub_log(out)
                files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
            state, reason = "completed", summary
        else:
            state = "failed"
            reason = f"quorum not reached: {summary}, {quorum} required; nothing released"
        with db.transaction(self.sessions) as s:
            study = s.get(db.Study, study_id)
            assert study is not None
            if study.state != "running":
                return  # combined meanwhile by another request
            for name, content in files.items():
                s.add(db.StudyFile(study_id=study_id, name=name, content=content))
            study.state, study.reason = state, reason
            self._closed(s, study)
        if state == "failed":
            self.party.log("study_failed", study_id=study_id, reason=reason)

    def _post_round(
        self,
        study_id: str,
        answered: list[db.Task],
        round_: int,
        params: dict[str, Any],
        timeout: float | None = None,
    ) -> None:
        """Round ``round_`` for the nodes that answered the round before: the same task with
        the parameters computed from that round's released aggregates, signed anew, due
        within ``timeout`` seconds (a node that misses it drops out; None: the study's
        deadline)."""
        with db.transaction(self.sessions) as s:
            study = s.get(db.Study, study_id)
            assert study is not None
            if study.state != "running":
                return
            for previous in answered:
                template = Task.model_validate(previous.envelope)
                task = template.model_copy(
                    update={
                        "task_id": "tk_" + secrets.token_hex(8),
                        "round": round_,
                        "params": params,
                        "sites": len(answered),
                        "issued_at": _iso(db.utcnow()),
                        "deadline": _iso(
                            study.deadline
                            if timeout is None
                            else min(study.deadline, db.utcnow() + dt.timedelta(seconds=timeout))
                        ),
                        "signature": "",
                    }
                )
                s.add(self._signed(task))
        self.party.log("round_posted", study_id=study_id, round=round_, nodes=len(answered))

    def _publish_hub_log(self, out: Path) -> None:
        """Embed the hub's log entry of the combined result with its proof, so that a
        researcher's copy of the results exports and verifies away from the hub."""
        path = out / "evidence.json"
        record = json.loads(path.read_text())
        hub = record["hub"]
        hub["log"] = log_part("hub", self.party.log_dir, [hub["log_index"]])
        path.write_text(json.dumps(record, indent=2) + "\n")


def _round_timeout(spec: StudySpec) -> float | None:
    """The shortest round timeout of the study's pooled models (None: none has one)."""
    found = [a.settings.round_timeout_s for a in spec.analyses if a.type == "federated_model"]
    found += [
        a.settings.pooled.round_timeout_s
        for a in spec.analyses
        if a.type == "comparative" and a.settings.pooled
    ]
    return float(min(found)) if found else None  # type: ignore[union-attr]


def _round_deadline(task: db.Task) -> dt.datetime:
    """When a task's own round is due (its signed envelope says)."""
    return dt.datetime.fromisoformat(str(task.envelope["deadline"])).replace(tzinfo=None)
