"""The hub's governance endpoints (``/api/v1``): organisations, users, tokens, nodes,
projects, members, agreements, approvals, usage and the audit trail. Each endpoint's roles
come from :data:`medlab.governance.access.OPERATIONS` and are written into its OpenAPI
description; every call is audited by the app's middleware (never a result value)."""

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from medlab.cohorts.model import Domain
from medlab.federation.common.messages import Name, StudyStatus
from medlab.federation.hub import db
from medlab.federation.hub.service import Hub
from medlab.governance import access, audit, metering, schema
from medlab.governance import service as gov
from medlab.governance.access import OPERATIONS, Principal
from medlab.privacy.policy import AnalysisType

Text = Annotated[str, Field(min_length=1, max_length=2000)]
Pem = Annotated[str, Field(min_length=1, max_length=2000)]
Amount = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Days = Annotated[int, Field(ge=1, le=access.MAX_TOKEN_DAYS)]
Scopes = Annotated[list[Literal["read", "write"]], Field(min_length=1, max_length=2)]


def _utc(moment: dt.datetime) -> dt.datetime:
    """A time as naive UTC (how the database keeps it)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


Moment = Annotated[dt.datetime, AfterValidator(_utc)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrganisationIn(_In):
    name: Name
    kind: Literal["hospital", "pharma", "cro", "device", "ai", "operator", "regulator"]


class UserIn(_In):
    name: Name
    role: Literal["operator", "steward", "researcher", "auditor"]
    organisation: Name | None = None
    public_key: Pem | None = None
    scopes: Scopes | None = None
    days: Days = access.TOKEN_DAYS


class TokenIn(_In):
    scopes: Scopes | None = None
    days: Days = access.TOKEN_DAYS


class NodeIn(_In):
    name: Name
    public_key: Pem
    organisation: Name


class ProjectIn(_In):
    name: Name
    organisation: Name
    purpose: Text
    lead: Name
    starts: Moment | None = None
    ends: Moment


class MemberIn(_In):
    user: Name
    role: Literal["lead", "analyst", "viewer"]


class AgreementIn(_In):
    node: Name
    analyses: Annotated[list[AnalysisType], Field(min_length=1, max_length=20)]
    domains: Annotated[list[Domain], Field(max_length=20)]
    policy_version: Annotated[str, Field(min_length=1, max_length=100)]
    epsilon: Amount = 0.0
    rho: Amount = 0.0
    expires_at: Moment


class AgreementMove(_In):
    state: Literal["signed", "active", "suspended", "expired"]
    signature: Annotated[str, Field(max_length=200)] | None = None
    reason: Text | None = None


class Reason(_In):
    reason: Text


PROBLEM = {
    "type": "object",
    "required": ["title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
REFUSALS = {
    400: "The body is not JSON.",
    401: "No valid token (or node signature).",
    403: "Your role, token scope or standing does not allow it.",
    404: "No such object, or none you may see.",
    409: "An illegal transition (the allowed ones are named), a conflict or a refusal "
    "by rule: agreement, expiry, budget.",
    413: "The body is too large.",
    422: "Invalid input; each error names its JSON path.",
}
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/problem+json": {"schema": PROBLEM}}}
    for code, text in REFUSALS.items()
}


def doc(operation: str) -> dict[str, Any]:
    """The route arguments that document ``operation``: its summary, roles and scope, and
    the refusals it may answer (``application/problem+json``, RFC 9457)."""
    op = OPERATIONS[operation]
    roles = ", ".join(sorted(op.roles))
    return {
        "name": operation,
        "summary": op.summary,
        "description": f"{op.summary}\n\nRoles: {roles}. Token scope: {op.scope}.",
        "openapi_extra": {"x-roles": sorted(op.roles), "x-scope": op.scope},
        "responses": PROBLEMS,
    }


def gate(hub: Hub) -> Callable[[str], Any]:
    """``allow(operation)``: a dependency that authenticates the caller and checks that the
    operation admits their role and token scope."""

    def allow(operation: str) -> Any:
        def dependency(
            request: Request, authorization: Annotated[str | None, Header()] = None
        ) -> Principal:
            token = None
            if authorization and authorization.lower().startswith("bearer "):
                token = authorization[7:].strip()
            who = hub.principal(token)
            request.state.principal = who
            access.authorize(who, operation)
            return who

        return Depends(dependency)

    return allow


def routes(hub: Hub) -> APIRouter:
    """Every governance endpoint on ``hub``."""
    api = APIRouter(prefix="/api/v1")
    allow = gate(hub)

    def run(call: Callable[[Any], Any]) -> Any:
        with db.transaction(hub.sessions) as s:
            return call(s)

    def note(request: Request, **fields: Any) -> None:
        request.state.audit = {**getattr(request.state, "audit", {}), **fields}

    @api.get("/me", **doc("me"))
    def me(who: Annotated[Principal, allow("me")]) -> dict[str, Any]:
        return {
            "user": who.name,
            "role": who.role,
            "organisation": who.organisation,
            "scopes": sorted(who.scopes),
            "token_id": who.token_id,
            "governance": hub.mode,
        }

    @api.post("/organisations", status_code=201, **doc("organisation_add"))
    def organisation_add(
        body: OrganisationIn, who: Annotated[Principal, allow("organisation_add")]
    ) -> dict[str, str]:
        run(lambda s: gov.add_organisation(s, body.name, body.kind))
        return {"name": body.name, "kind": body.kind}

    @api.get("/organisations", **doc("organisation_list"))
    def organisation_list(
        who: Annotated[Principal, allow("organisation_list")],
    ) -> list[dict[str, str]]:
        return run(
            lambda s: [
                {"name": o.name, "kind": o.kind}
                for o in s.query(schema.Organisation).order_by(schema.Organisation.name)
            ]
        )

    @api.post("/users", status_code=201, **doc("user_add"))
    def user_add(body: UserIn, who: Annotated[Principal, allow("user_add")]) -> dict[str, Any]:
        token_id, token = run(
            lambda s: gov.add_user(
                s,
                body.name,
                body.role,
                body.organisation,
                body.public_key,
                None if body.scopes is None else list(body.scopes),
                body.days,
            )
        )
        return {"name": body.name, "role": body.role, "token_id": token_id, "token": token}

    @api.get("/users", **doc("user_list"))
    def user_list(who: Annotated[Principal, allow("user_list")]) -> list[dict[str, Any]]:
        return run(
            lambda s: [gov.user_row(u) for u in s.query(schema.User).order_by(schema.User.name)]
        )

    @api.post("/users/{name}/tokens", status_code=201, **doc("token_add"))
    def token_add(
        name: str, body: TokenIn, who: Annotated[Principal, allow("token_add")]
    ) -> dict[str, Any]:
        token_id, token = run(
            lambda s: gov.add_token(
                s, who, name, None if body.scopes is None else list(body.scopes), body.days
            )
        )
        return {"user": name, "token_id": token_id, "token": token}

    @api.delete("/tokens/{token_id}", **doc("token_revoke"))
    def token_revoke(
        token_id: str, who: Annotated[Principal, allow("token_revoke")]
    ) -> dict[str, str]:
        run(lambda s: gov.revoke_token(s, who, token_id))
        return {"token_id": token_id, "state": "revoked"}

    @api.post("/nodes", status_code=201, **doc("node_add"))
    def node_add(body: NodeIn, who: Annotated[Principal, allow("node_add")]) -> dict[str, str]:
        kid = hub.add_node(body.name, body.public_key, body.organisation)
        return {"name": body.name, "key_id": kid, "organisation": body.organisation}

    @api.get("/nodes", **doc("node_list"))
    def node_list(who: Annotated[Principal, allow("node_list")]) -> list[dict[str, Any]]:
        return run(
            lambda s: [
                {
                    "name": n.name,
                    "organisation": n.organisation,
                    "key_id": n.key_id,
                    "public_key": n.public_key,
                    "last_seen": gov.iso(n.last_seen),
                }
                for n in s.query(db.Node).order_by(db.Node.name)
            ]
        )

    @api.post("/projects", status_code=201, **doc("project_add"))
    def project_add(
        request: Request, body: ProjectIn, who: Annotated[Principal, allow("project_add")]
    ) -> dict[str, Any]:
        note(request, project=body.name)
        starts = body.starts or db.utcnow()

        def add(s: Any) -> dict[str, Any]:
            gov.add_project(
                s, who, body.name, body.organisation, body.purpose, body.lead, starts, body.ends
            )
            s.flush()
            return gov.project_row(s, gov.visible_project(s, who, body.name))

        return run(add)

    @api.get("/projects", **doc("project_list"))
    def project_list(who: Annotated[Principal, allow("project_list")]) -> list[dict[str, Any]]:
        return run(lambda s: gov.projects(s, who))

    @api.get("/projects/{project}", **doc("project_get"))
    def project_get(
        request: Request, project: str, who: Annotated[Principal, allow("project_get")]
    ) -> dict[str, Any]:
        note(request, project=project)
        return run(lambda s: gov.project_row(s, gov.visible_project(s, who, project)))

    @api.post("/projects/{project}/members", status_code=201, **doc("member_add"))
    def member_add(
        request: Request,
        project: str,
        body: MemberIn,
        who: Annotated[Principal, allow("member_add")],
    ) -> dict[str, str]:
        note(request, project=project)
        run(lambda s: gov.add_member(s, who, project, body.user, body.role))
        return {"project": project, "user": body.user, "role": body.role}

    @api.post("/projects/{project}/agreements", status_code=201, **doc("agreement_add"))
    def agreement_add(
        request: Request,
        project: str,
        body: AgreementIn,
        who: Annotated[Principal, allow("agreement_add")],
    ) -> dict[str, Any]:
        note(request, project=project)
        terms = gov.Terms(
            list(body.analyses),
            list(body.domains),
            body.policy_version,
            body.epsilon,
            body.rho,
            body.expires_at,
        )

        def add(s: Any) -> dict[str, Any]:
            agreement_id = gov.add_agreement(s, who, project, body.node, terms)
            s.flush()
            return gov.agreement_row(gov.visible_agreement(s, who, agreement_id))

        found = run(add)
        note(request, agreement=found["agreement"])
        return found

    @api.get("/projects/{project}/agreements", **doc("agreement_list"))
    def agreement_list(
        request: Request, project: str, who: Annotated[Principal, allow("agreement_list")]
    ) -> list[dict[str, Any]]:
        note(request, project=project)
        return run(lambda s: gov.agreements_of(s, who, project))

    @api.get("/agreements/{agreement_id}", **doc("agreement_get"))
    def agreement_get(
        request: Request, agreement_id: str, who: Annotated[Principal, allow("agreement_get")]
    ) -> dict[str, Any]:
        found = run(lambda s: gov.agreement_row(gov.visible_agreement(s, who, agreement_id)))
        note(request, project=found["project"], agreement=agreement_id)
        return found

    @api.post("/agreements/{agreement_id}/state", **doc("agreement_move"))
    def agreement_move(
        request: Request,
        agreement_id: str,
        body: AgreementMove,
        who: Annotated[Principal, allow("agreement_move")],
    ) -> dict[str, Any]:
        def move(s: Any) -> dict[str, Any]:
            a = gov.visible_agreement(s, who, agreement_id)
            node = s.get(db.Node, a.node)
            key = None if node is None else node.public_key
            a = gov.move_agreement(
                s, who, agreement_id, body.state, key, body.signature, body.reason
            )
            return gov.agreement_row(a)

        found = run(move)
        note(request, project=found["project"], agreement=agreement_id, state=body.state)
        hub.party.log(
            f"agreement_{body.state}",
            agreement=agreement_id,
            project=found["project"],
            node=found["node"],
            by=who.name,
        )
        return found

    @api.post("/studies/{study_id}/approvals", **doc("study_approve"))
    async def study_approve(
        request: Request, study_id: str, who: Annotated[Principal, allow("study_approve")]
    ) -> StudyStatus:
        found: StudyStatus = await run_in_threadpool(hub.approve, who, study_id)
        note(request, project=found.project, study_id=study_id)
        return found

    def ending(operation: str, state: str) -> None:
        """Reject or withdraw a submitted study, with a reason."""

        def end_study(
            request: Request,
            study_id: str,
            body: Reason,
            who: Annotated[Principal, allow(operation)],
        ) -> StudyStatus:
            found = hub.end(who, study_id, state, body.reason)
            note(request, project=found.project, study_id=study_id)
            return found

        api.post(OPERATIONS[operation].path.removeprefix("/api/v1"), **doc(operation))(end_study)

    ending("study_reject", "rejected")
    ending("study_withdraw", "withdrawn")

    @api.get("/projects/{project}/usage", **doc("usage_get"))
    def usage_get(
        request: Request, project: str, who: Annotated[Principal, allow("usage_get")]
    ) -> dict[str, Any]:
        note(request, project=project)

        def usage(s: Any) -> dict[str, Any]:
            gov.visible_project(s, who, project)
            if who.role == "researcher" and gov.project_role(s, who, project) != "lead":
                raise access.forbidden(f"usage of {project} is for its lead")
            return metering.totals(s, project)

        return run(usage)

    @api.get("/usage.csv", response_class=PlainTextResponse, **doc("usage_csv"))
    def usage_csv(who: Annotated[Principal, allow("usage_csv")], project: str | None = None) -> str:
        def export(s: Any) -> str:
            names = [p["name"] for p in gov.projects(s, who)]
            if project is not None:
                if project not in names:
                    raise access.absent(f"project {project}")
                names = [project]
            return metering.as_csv(s, names)

        return run(export)

    @api.get("/audit", **doc("audit"))
    def audit_trail(
        who: Annotated[Principal, allow("audit")],
        user: str | None = None,
        project: str | None = None,
        study: str | None = None,
        since: Moment | None = None,
        limit: Annotated[int, Field(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        found = audit.events(hub.party.log_dir, user, project, study, since)
        return found[-limit:]

    return api
