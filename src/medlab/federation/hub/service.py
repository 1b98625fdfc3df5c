"""The hub's work, apart from HTTP: onboarding, submissions, tasks, reports and combining.

The hub never sees a row: it keeps specs, signed tasks, the nodes' released outputs and the
combined result files. Every change is one database transaction, committed before the
caller acknowledges it; the hub's transparency log records submissions, refusals of
unauthenticated requests and each combined result (never a result value).

A hub is ``authorized`` (the default: :mod:`medlab.governance` — projects, agreements, two
approvals before dispatch, budget holds, metering) or ``open`` (any registered researcher's
study is dispatched at once: a single lab's own testing). The mode is fixed at ``init``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
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
from medlab.federation.hub.combining import Combining
from medlab.governance import metering, schema
from medlab.governance import service as gov
from medlab.governance.access import HubError, Principal, authenticate
from medlab.ledger import parties
from medlab.ledger.keys import key_id, verify
from medlab.studies.combine import verify_output
from medlab.studies.local import NodeOutput
from medlab.studies.spec import StudySpec, spec_from_document

__all__ = ["Hub", "HubError", "init_hub"]
MODES = ("authorized", "open")


def _iso(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")


def init_hub(directory: Path, url: str | None = None, governance: str = "authorized") -> Hub:
    """Create the hub's directory (mode 0700) with its signing key, log and database (``url``
    recorded for the commands after), or open the hub already there (its mode, set on
    creation, stays)."""
    if governance not in MODES:
        raise UsageError(f"governance is one of {', '.join(MODES)}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    hub = Hub(directory, url)
    if url:  # recorded once the database answers
        db.record_url(directory, url)
    with db.transaction(hub.sessions) as s:
        if s.get(schema.Setting, "governance") is None:
            s.add(schema.Setting(key="governance", value=governance))
    hub.mode = hub._mode()
    with hub.party.open_log() as log:
        fresh = log.size == 0
    if fresh:
        hub.party.log("hub_created", version=__version__, governance=hub.mode)
    return hub


class Hub(Combining):
    """The hub whose key, log and default database live in ``directory``."""

    def __init__(self, directory: Path, url: str | None = None) -> None:
        if not directory.is_dir():
            raise UsageError(f"{directory}: no hub here (create it with: medlab hub init DIR)")
        self.directory = directory
        self.sessions = db.connect(db.url_of(directory, url))
        self.party = parties.hub(directory)
        self._combining = threading.Lock()
        self.mode = self._mode()

    def _mode(self) -> str:
        with self.sessions() as s:
            found = s.get(schema.Setting, "governance")
        return "authorized" if found is None else found.value  # never open by omission

    # -- onboarding ---------------------------------------------------------------------

    def add_node(self, name: str, public_pem: str, organisation: str | None = None) -> str:
        """Register a node by its Ed25519 public key (on a governed hub, with the hospital
        organisation whose stewards answer for it); returns the key id."""
        try:
            kid = key_id(public_pem)
        except ValueError:
            raise HubError(400, "bad key", "not an Ed25519 public key (PEM)") from None
        with db.transaction(self.sessions) as s:
            if s.get(db.Node, name) is not None:
                raise HubError(409, "node exists", f"a node named {name} is registered")
            if organisation is not None:
                org = s.get(schema.Organisation, organisation)
                if org is None or org.kind != "hospital":
                    raise HubError(422, "invalid request", f"no hospital {organisation}")
            elif self.governed:
                raise HubError(422, "invalid request", "a node belongs to a hospital organisation")
            s.add(db.Node(name=name, public_key=public_pem, key_id=kid, organisation=organisation))
        self.party.log("node_added", node=name, key_id=kid, organisation=organisation)
        return kid

    def add_researcher(self, name: str, public_pem: str | None = None) -> str:
        """Register a researcher on an open hub; returns the bearer token (only its hash is
        kept). A governed hub's operator adds users with roles instead (``hub user add``)."""
        if self.governed:
            raise HubError(409, "governed hub", "add users with: medlab hub user add")
        if public_pem is not None:
            try:
                key_id(public_pem)
            except ValueError:
                raise HubError(400, "bad key", "not an Ed25519 public key (PEM)") from None
        with db.transaction(self.sessions) as s:
            if s.get(schema.User, name) is not None:
                raise HubError(409, "researcher exists", f"a researcher named {name} exists")
            _, token = gov.add_user(s, name, "researcher", None, public_pem, days=366)
        self.party.log("researcher_added", researcher=name, signs=public_pem is not None)
        return token

    def bootstrap(self, name: str, organisation: str = "operator") -> str:
        """The governed hub's first operator (and their organisation); returns their token.
        Refused once the hub has an operator: later ones are added by an operator."""
        with db.transaction(self.sessions) as s:
            if s.scalar(select(schema.User.name).where(schema.User.role == "operator")):
                raise HubError(409, "conflict", "this hub has an operator already")
            if s.get(schema.Organisation, organisation) is None:
                gov.add_organisation(s, organisation, "operator")
            _, token = gov.add_user(s, name, "operator", organisation, days=366)
        self.party.log("operator_added", user=name, organisation=organisation)
        return token

    # -- authentication -----------------------------------------------------------------

    def principal(self, token: str | None) -> Principal:
        """Who a bearer token belongs to (401 unless it is known, unexpired, unrevoked)."""
        with self.sessions() as s:
            found = authenticate(s, token, db.utcnow())
            known = False
            if found is None and token:
                hashed = auth.token_hash(token)
                row = s.scalar(select(schema.Token.id).where(schema.Token.token_hash == hashed))
                known = row is not None
        if found is None:
            reason = "an expired or revoked token" if known else "unknown token"
            self.party.log("request_refused", who="user", reason=reason)
            raise HubError(401, "unauthenticated", "a valid token is required")
        return found

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

    def submit(self, who: Principal | str, data: Any) -> str:
        """Accept a study; returns its id. An open hub dispatches it at once (one signed task
        per node); a governed one checks the project, its agreements and budget, holds the
        budget and waits for two approvals (nothing is dispatched before)."""
        if isinstance(who, str):
            who = Principal(who, "researcher", None)
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
            user = s.get(schema.User, who.name)
            assert user is not None
            names = list(s.scalars(select(db.Node.name).order_by(db.Node.name)))
        if user.public_key is not None and not (
            sub.signature
            and verify(user.public_key, submission_message(sub.spec, sub.project), sub.signature)
        ):
            raise HubError(403, "unsigned", "this researcher's submissions must be signed")
        if sub.nodes is not None:
            unknown = sorted(set(sub.nodes) - set(names))
            if unknown:
                errors = [{"path": "$.nodes", "message": f"unknown node {unknown[0]}"}]
                raise HubError(422, "invalid study", errors[0]["message"], errors)
            names = sorted(set(sub.nodes))
        if self.governed:
            if project is None:
                raise gov.invalid("$.project", "a study is submitted inside a project")
            if spec.project is not None and spec.project != project:
                raise gov.invalid("$.project", f"the spec's project is {spec.project}")
        study_id = "st_" + secrets.token_hex(8)
        now = db.utcnow()
        with db.transaction(self.sessions) as s:
            agreements: list[schema.Agreement] = []
            if self.governed:
                assert project is not None
                ask = _ask(spec, project, sub.nodes, sub.epsilon, sub.rho)
                agreements = gov.check_study(s, who, ask, now)
                names = [a.node for a in agreements]
            if len(names) < sub.min_sites:
                raise HubError(
                    422,
                    "invalid study",
                    f"min_sites {sub.min_sites} but {len(names)} nodes",
                    [{"path": "$.min_sites", "message": f"more than the {len(names)} nodes"}],
                )
            study = db.Study(
                id=study_id,
                name=spec.name,
                spec=sub.spec,
                spec_hash=spec.digest(),
                researcher=who.name,
                project=project,
                min_sites=sub.min_sites,
                deadline=now + dt.timedelta(seconds=sub.deadline_seconds),
                signature=sub.signature,
                state="submitted" if self.governed else "running",
                nodes=names,
                epsilon=sub.epsilon,
                rho=sub.rho,
                submitted_project=sub.project,  # as the researcher signed it
            )
            s.add(study)
            s.flush()
            if self.governed:
                gov.hold(s, study_id, agreements, sub.epsilon, sub.rho)
                metering.count_study(s, study)
            else:
                self._dispatch(s, study, [])
        self.party.log(
            "study_submitted",
            study=spec.name,
            study_id=study_id,
            spec_hash=spec.digest(),
            researcher=who.name,
            project=project,
            nodes=names,
        )
        if not self.governed:
            self.party.log("study_approved", spec_hash=spec.digest(), approved_by="hub (no review)")
        return study_id

    def _dispatch(self, s: Any, study: db.Study, agreements: list[schema.Agreement]) -> None:
        """One signed task per node of the study (its agreement and budget cap with it, on
        a governed hub); the study runs from now. Its deadline counts from dispatch."""
        now = db.utcnow()
        deadline = now + (study.deadline - study.created_at)
        study.deadline, study.state, study.updated_at = deadline, "running", now
        user = s.get(schema.User, study.researcher)
        by_node = {a.node: a for a in agreements}
        for name in study.nodes:
            agreement = by_node.get(name)
            task = Task(
                task_id="tk_" + secrets.token_hex(8),
                study_id=study.id,
                node=name,
                spec=study.spec,
                spec_hash=study.spec_hash,
                project=study.project,
                submitted_project=study.submitted_project,
                researcher=study.researcher,
                researcher_key=None if user is None else user.public_key,
                researcher_signature=study.signature,
                min_sites=study.min_sites,
                sites=len(study.nodes),
                deadline=_iso(deadline),
                issued_at=_iso(now),
                hub_key_id=self.party.signer.key_id,
                agreement=None if agreement is None else agreement.id,
                epsilon=None if agreement is None else study.epsilon,
                rho=None if agreement is None else study.rho,
            )
            s.add(self._signed(task))

    def approve(self, who: Principal, study_id: str) -> StudyStatus:
        """Record an approval; on the second, re-check the agreements as they are now and
        dispatch (or refuse the study, releasing its budget hold, with the reason)."""
        refused = None
        with db.transaction(self.sessions) as s:
            study = self._study(s, study_id, who, lock=True)
            kind, both = gov.approve(s, who, study)
            if both:
                assert study.project is not None
                spec = StudySpec.model_validate(study.spec)
                ask = _ask(spec, study.project, study.nodes, study.epsilon, study.rho)
                try:
                    agreements = gov.check_study(s, None, ask, db.utcnow())
                except HubError as exc:
                    refused = exc.detail
                    study.state, study.reason = "refused", f"at dispatch: {refused}"
                    gov.settle_holds(s, study_id, {})
                else:
                    self._dispatch(s, study, agreements)
        self.party.log("study_approved", study_id=study_id, kind=kind, approved_by=who.name)
        if refused is not None:
            self.party.log("study_refused", study_id=study_id, reason=refused)
        elif both:
            self.party.log("study_dispatched", study_id=study_id)
        return self.status(study_id, who)

    def end(self, who: Principal, study_id: str, state: str, reason: str) -> StudyStatus:
        """Reject or withdraw a submitted study; its budget hold is released."""
        with db.transaction(self.sessions) as s:
            study = self._study(s, study_id, who, lock=True)
            gov.end_study(s, who, study, state)
            study.state, study.reason, study.updated_at = state, reason, db.utcnow()
            gov.settle_holds(s, study_id, {})
        self.party.log(f"study_{state}", study_id=study_id, by=who.name)
        return self.status(study_id, who)

    def studies(self, who: Principal) -> list[dict[str, Any]]:
        """The studies the caller may see, newest first."""
        with self.sessions() as s:
            rows = s.scalars(select(db.Study).order_by(db.Study.created_at.desc()))
            return [
                {
                    "study_id": r.id,
                    "name": r.name,
                    "project": r.project,
                    "researcher": r.researcher,
                    "state": r.state,
                    "created_at": _iso(r.created_at),
                }
                for r in rows
                if self._sees(s, r, who)
            ]

    def status(self, study_id: str, who: Principal | str | None = None) -> StudyStatus:
        """A study's state, per node task (deadlines are settled by :meth:`settle`, which
        the service runs every second)."""
        with self.sessions() as s:
            study = self._study(s, study_id, who)
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
                project=study.project,
                researcher=study.researcher,
                nodes=list(study.nodes or []),
                approvals=gov.approvals(s, study_id),
            )

    def file(self, study_id: str, name: str, who: Principal | str | None = None) -> bytes:
        """One result file of a completed study (on a governed hub: for the project's
        members; an auditor who is not one gets the evidence record only)."""
        with self.sessions() as s:
            study = self._study(s, study_id, who)
            if isinstance(who, Principal) and self.governed:
                member = gov.project_role(s, who, study.project or "") is not None
                if not member and not (who.role == "auditor" and name == "evidence.json"):
                    raise HubError(403, "forbidden", "results are for the project's members")
            found = s.get(db.StudyFile, (study_id, name))
            if found is None:
                raise HubError(404, "no such file", f"{study_id} has no file {name}")
            return found.content

    def project_of(self, study_id: str) -> str | None:
        """The project of a study (None: no such study, or none)."""
        with self.sessions() as s:
            study = s.get(db.Study, study_id)
            return None if study is None else study.project

    def _sees(self, s: Any, study: db.Study, who: Principal | str | None) -> bool:
        if who is None:
            return True
        if isinstance(who, str) or not self.governed:
            return study.researcher == (who if isinstance(who, str) else who.name)
        if who.role in ("operator", "auditor"):
            return True
        if gov.project_role(s, who, study.project or "") is not None:
            return True
        return bool(set(study.nodes or []) & gov.stewarded(s, who))

    def _study(
        self, s: Any, study_id: str, who: Principal | str | None, lock: bool = False
    ) -> db.Study:
        """The study, if the caller may see it; ``lock``: its row locked to the end of the
        transaction (PostgreSQL: concurrent approvals of one study take turns)."""
        study = s.get(db.Study, study_id, with_for_update=lock)
        if study is None or not self._sees(s, study, who):
            raise HubError(404, "no such study", f"no study {study_id} that you may see")
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
            if report.state == "running" and task.started_at is None:
                task.started_at = task.updated_at
            if report.state in FINAL:
                task.ended_at = task.updated_at
            if output is not None:
                task.output = output.model_dump(mode="json")
                task.output_hash = parties.digest(task.output)
            study_id = task.study_id
        self.settle(study_id)
        return report.state


def _moves(state: str) -> set[str]:
    return set(TRANSITIONS.get(state, frozenset()))


def _invalid(exc: ValidationError, root: str) -> HubError:
    errors = [{"path": json_path(e["loc"], root), "message": e["msg"]} for e in exc.errors()]
    return HubError(422, "invalid request", f"{errors[0]['path']}: {errors[0]['message']}", errors)


def _ask(
    spec: StudySpec, project: str, nodes: list[str] | None, epsilon: float, rho: float
) -> gov.Ask:
    """What a study asks of its project's agreements: its analysis types, the CDM domains
    its cohorts read, its nodes and its budget."""
    return gov.Ask(
        project=project,
        analyses={a.type for a in spec.analyses},
        domains=spec.domains(),
        nodes=nodes,
        epsilon=epsilon,
        rho=rho,
    )
