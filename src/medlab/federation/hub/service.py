"""The hub's work, apart from HTTP: onboarding, submissions, tasks, reports and combining.

The hub never sees a row: it keeps specs, signed tasks, the nodes' released outputs and the
combined result files. Every change is one database transaction, committed before the
caller acknowledges it; the hub's transparency log records submissions, refusals of
unauthenticated requests and each combined result (never a result value).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select

from medlab import __version__
from medlab.errors import UsageError, VerificationFailed
from medlab.federation.common import auth
from medlab.federation.common.messages import (
    FINAL,
    TRANSITIONS,
    StudyStatus,
    Submission,
    Task,
    TaskReport,
    TaskStatus,
    allowed,
    json_path,
    submission_message,
)
from medlab.federation.hub import db
from medlab.ledger import parties
from medlab.ledger.evidence import log_part
from medlab.ledger.keys import canonical, key_id, verify
from medlab.studies.combine import combine_study, next_round, verify_output
from medlab.studies.local import NodeOutput
from medlab.studies.spec import StudySpec, spec_from_document


@dataclass
class HubError(Exception):
    """A refusal the API answers as ``application/problem+json``."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}"


def _iso(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")


def init_hub(directory: Path, url: str | None = None) -> Hub:
    """Create the hub's directory (mode 0700) with its signing key, log and database, or
    open the hub already there."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    hub = Hub(directory, url)
    with hub.party.open_log() as log:
        fresh = log.size == 0
    if fresh:
        hub.party.log("hub_created", version=__version__)
    return hub


class Hub:
    """The hub whose key, log and default database live in ``directory``."""

    def __init__(self, directory: Path, url: str | None = None) -> None:
        if not directory.is_dir():
            raise UsageError(f"{directory}: no hub here (create it with: medlab hub init DIR)")
        self.directory = directory
        self.sessions = db.connect(url or db.default_url(directory))
        self.party = parties.hub(directory)
        self._combining = threading.Lock()

    # -- onboarding ---------------------------------------------------------------------

    def add_node(self, name: str, public_pem: str) -> str:
        """Register a node by its Ed25519 public key; returns the key id."""
        try:
            kid = key_id(public_pem)
        except ValueError:
            raise HubError(400, "bad key", "not an Ed25519 public key (PEM)") from None
        with db.transaction(self.sessions) as s:
            if s.get(db.Node, name) is not None:
                raise HubError(409, "node exists", f"a node named {name} is registered")
            s.add(db.Node(name=name, public_key=public_pem, key_id=kid))
        self.party.log("node_added", node=name, key_id=kid)
        return kid

    def add_researcher(self, name: str, public_pem: str | None = None) -> str:
        """Register a researcher; returns the bearer token (only its hash is kept)."""
        if public_pem is not None:
            try:
                key_id(public_pem)
            except ValueError:
                raise HubError(400, "bad key", "not an Ed25519 public key (PEM)") from None
        token = auth.new_token()
        with db.transaction(self.sessions) as s:
            if s.get(db.Researcher, name) is not None:
                raise HubError(409, "researcher exists", f"a researcher named {name} exists")
            hashed = auth.token_hash(token)
            s.add(db.Researcher(name=name, token_hash=hashed, public_key=public_pem))
        self.party.log("researcher_added", researcher=name, signs=public_pem is not None)
        return token

    # -- authentication -----------------------------------------------------------------

    def researcher(self, token: str | None) -> str:
        """The researcher a bearer token belongs to."""
        if token:
            with self.sessions() as s:
                found = s.scalar(
                    select(db.Researcher).where(db.Researcher.token_hash == auth.token_hash(token))
                )
            if found is not None:
                return found.name
        self.party.log("request_refused", who="researcher", reason="unknown token")
        raise HubError(401, "unauthenticated", "a valid researcher token is required")

    def node(self, method: str, target: str, body: bytes, headers: auth.Signed) -> str:
        """The node that signed this request (its nonce recorded: never accepted twice)."""
        with db.transaction(self.sessions) as s:
            node = s.get(db.Node, headers.node)
            reason = (
                "unknown node"
                if node is None
                else auth.check_request(node.public_key, method, target, body, headers)
            )
            if reason is None:
                cutoff = db.utcnow() - dt.timedelta(seconds=2 * auth.MAX_AGE_SECONDS)
                s.execute(delete(db.Nonce).where(db.Nonce.seen_at < cutoff))
                if s.get(db.Nonce, (headers.node, headers.nonce)) is not None:
                    reason = "a replayed request (nonce seen before)"
                else:
                    s.add(db.Nonce(node=headers.node, nonce=headers.nonce))
                    assert node is not None
                    node.last_seen = db.utcnow()
        if reason is not None:
            self.party.log("request_refused", who=headers.node[:100], target=target, reason=reason)
            raise HubError(401 if node is None else 403, "unauthenticated", reason)
        return headers.node

    # -- studies ------------------------------------------------------------------------

    def submit(self, researcher: str, data: Any) -> str:
        """Accept a study: one signed task per node; returns the study id."""
        try:
            sub = Submission.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc, "$") from None
        spec, problems = spec_from_document(sub.spec)
        if spec is None:
            errors = [{"path": "$.spec" + p[1:], "message": m} for p, m in problems]
            raise HubError(422, "invalid study", errors[0]["message"], errors)
        project = sub.project or spec.project
        with self.sessions() as s:
            who = s.get(db.Researcher, researcher)
            assert who is not None
            names = list(s.scalars(select(db.Node.name).order_by(db.Node.name)))
        if who.public_key is not None and not (
            sub.signature
            and verify(who.public_key, submission_message(sub.spec, sub.project), sub.signature)
        ):
            raise HubError(403, "unsigned", "this researcher's submissions must be signed")
        if sub.nodes is not None:
            unknown = sorted(set(sub.nodes) - set(names))
            if unknown:
                errors = [{"path": "$.nodes", "message": f"unknown node {unknown[0]}"}]
                raise HubError(422, "invalid study", errors[0]["message"], errors)
            names = sorted(set(sub.nodes))
        if len(names) < sub.min_sites:
            raise HubError(
                422,
                "invalid study",
                f"min_sites {sub.min_sites} but {len(names)} nodes",
                [{"path": "$.min_sites", "message": f"more than the {len(names)} nodes"}],
            )
        study_id = "st_" + secrets.token_hex(8)
        now = db.utcnow()
        deadline = now + dt.timedelta(seconds=sub.deadline_seconds)
        with db.transaction(self.sessions) as s:
            s.add(
                db.Study(
                    id=study_id,
                    name=spec.name,
                    spec=sub.spec,
                    spec_hash=spec.digest(),
                    researcher=researcher,
                    project=project,
                    min_sites=sub.min_sites,
                    deadline=deadline,
                    signature=sub.signature,
                )
            )
            for name in names:
                task = Task(
                    task_id="tk_" + secrets.token_hex(8),
                    study_id=study_id,
                    node=name,
                    spec=sub.spec,
                    spec_hash=spec.digest(),
                    project=project,
                    submitted_project=sub.project,
                    researcher=researcher,
                    researcher_key=who.public_key,
                    researcher_signature=sub.signature,
                    min_sites=sub.min_sites,
                    sites=len(names),
                    deadline=_iso(deadline),
                    issued_at=_iso(now),
                    hub_key_id=self.party.signer.key_id,
                )
                s.add(self._signed(task))
        self.party.log(
            "study_submitted",
            study=spec.name,
            study_id=study_id,
            spec_hash=spec.digest(),
            researcher=researcher,
            nodes=names,
        )
        self.party.log("study_approved", spec_hash=spec.digest(), approved_by="hub (no review)")
        return study_id

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

    def status(self, study_id: str, researcher: str | None = None) -> StudyStatus:
        """A study's state, per node task (deadlines are settled by :meth:`settle`, which
        the service runs every second)."""
        with self.sessions() as s:
            study = self._study(s, study_id, researcher)
            tasks = s.scalars(
                select(db.Task)
                .where(db.Task.study_id == study_id)
                .order_by(db.Task.node, db.Task.round)
            )
            files = s.scalars(
                select(db.StudyFile.name)
                .where(db.StudyFile.study_id == study_id)
                .order_by(db.StudyFile.name)
            )
            return StudyStatus(
                study_id=study.id,
                name=study.name,
                state=study.state,  # type: ignore[arg-type]
                reason=study.reason,
                min_sites=study.min_sites,
                deadline=_iso(study.deadline),
                tasks=[
                    TaskStatus(
                        node=t.node,
                        task_id=t.id,
                        round=t.round,
                        state=t.state,  # type: ignore[arg-type]
                        reason=t.reason,
                        updated_at=_iso(t.updated_at),
                    )
                    for t in tasks
                ],
                files=list(files),
            )

    def file(self, study_id: str, name: str, researcher: str | None = None) -> bytes:
        """One result file of a completed study."""
        with self.sessions() as s:
            self._study(s, study_id, researcher)
            found = s.get(db.StudyFile, (study_id, name))
            if found is None:
                raise HubError(404, "no such file", f"{study_id} has no file {name}")
            return found.content

    @staticmethod
    def _study(s: Any, study_id: str, researcher: str | None) -> db.Study:
        study = s.get(db.Study, study_id)
        if study is None or (researcher is not None and study.researcher != researcher):
            raise HubError(404, "no such study", f"no study {study_id} of yours")
        assert isinstance(study, db.Study)
        return study

    # -- the node side ------------------------------------------------------------------

    def tasks_for(self, node: str) -> list[dict[str, Any]]:
        """The node's tasks that are not yet final, as signed envelopes."""
        with self.sessions() as s:
            rows = s.scalars(
                select(db.Task)
                .where(db.Task.node == node, db.Task.state.not_in(FINAL))
                .order_by(db.Task.id)
            )
            return [dict(t.envelope) | {"state": t.state} for t in rows]

    def report(self, node: str, task_id: str, data: Any) -> str:
        """A node's report on its task; returns the task's state."""
        try:
            report = TaskReport.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc, "$") from None
        output = None
        if report.state == "completed":
            if report.output is None:
                raise HubError(422, "invalid report", "a completed task carries its output")
            try:
                output = NodeOutput.model_validate(report.output)
            except ValidationError as exc:
                raise _invalid(exc, "$.output") from None
        elif report.output is not None:
            raise HubError(422, "invalid report", "only a completed task carries an output")
        with db.transaction(self.sessions) as s:
            task = s.get(db.Task, task_id)
            if task is None or task.node != node:
                raise HubError(404, "no such task", f"no task {task_id} for node {node}")
            registered = s.get(db.Node, node)
            assert registered is not None
            if output is not None:
                if output.site != node or output.key_id != registered.key_id:
                    raise HubError(403, "wrong node", "the output is not this node's")
                if output.round != task.round:
                    raise HubError(422, "invalid output", f"the task is round {task.round}")
                try:
                    verify_output(output, task.envelope["spec_hash"])
                except VerificationFailed as exc:
                    raise HubError(422, "invalid output", str(exc)) from None
                digest = parties.digest(output.model_dump(mode="json"))
                if task.state == "completed":
                    if digest != task.output_hash:
                        raise HubError(409, "already completed", "a different output was stored")
                    return task.state  # a retried upload: stored once
            if not allowed(task.state, report.state):
                raise HubError(
                    409,
                    "illegal transition",
                    f"{task.state} -> {report.state}; allowed: "
                    + ", ".join(sorted(_moves(task.state))),
                )
            task.state = report.state
            task.reason = report.reason
            task.updated_at = db.utcnow()
            if output is not None:
                task.output = output.model_dump(mode="json")
                task.output_hash = parties.digest(task.output)
            study_id = task.study_id
        self.settle(study_id)
        return report.state

    # -- combining ----------------------------------------------------------------------

    def settle(self, study_id: str | None = None) -> None:
        """Expire tasks past their deadline and combine every study whose tasks are all
        final (over the sites that answered, if they reach the quorum)."""
        now = db.utcnow()
        with db.transaction(self.sessions) as s:
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
                    elif now >= _round_deadline(t):
                        t.state, t.reason, t.updated_at = "expired", "round deadline passed", now
                if all(t.state in FINAL for t in tasks):
                    due.append(study.id)
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


def _moves(state: str) -> set[str]:
    return set(TRANSITIONS.get(state, frozenset()))


def _invalid(exc: ValidationError, root: str) -> HubError:
    errors = [{"path": json_path(e["loc"], root), "message": e["msg"]} for e in exc.errors()]
    return HubError(422, "invalid request", f"{errors[0]['path']}: {errors[0]['message']}", errors)
