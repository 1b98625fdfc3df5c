"""Who may call what: the hub's roles, token scopes and one table of every governed
endpoint with the roles it admits (the OpenAPI document and the authorization tests are made
from this table, so what is documented is what is enforced).

Roles: ``operator`` runs the hub and onboards; ``steward`` answers for the nodes of one
hospital organisation; ``researcher`` works inside projects (as lead, analyst or viewer);
``auditor`` reads logs, usage and evidence (results only where a project grants them, as a
viewer). A token carries scopes: ``read`` for any GET, ``write`` for anything that changes
state. A role check is the first gate; the rules of each operation (membership, the node's
organisation, who submitted) come after it, and an object a user may not see is answered as
absent (404), never as forbidden, so its existence does not leak.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from medlab.federation.common import auth
from medlab.governance import schema

ROLES = ("operator", "steward", "researcher", "auditor")
ORGANISATION_KINDS = ("hospital", "pharma", "cro", "device", "ai", "operator", "regulator")
PROJECT_ROLES = ("lead", "analyst", "viewer")
SCOPES = ("read", "write")
ALL = frozenset(ROLES)
TOKEN_DAYS = 90  # a token's default life
MAX_TOKEN_DAYS = 366


@dataclass(frozen=True)
class Operation:
    """One governed endpoint: its method and path, the roles it admits, what it does."""

    method: str
    path: str
    roles: frozenset[str]
    summary: str

    @property
    def scope(self) -> str:
        """The token scope it needs."""
        return "read" if self.method == "GET" else "write"


def _op(method: str, path: str, roles: set[str] | frozenset[str], summary: str) -> Operation:
    return Operation(method, "/api/v1" + path, frozenset(roles), summary)


OPERATIONS: dict[str, Operation] = {
    "me": _op("GET", "/me", ALL, "Who the token belongs to: user, role, organisation, scopes."),
    "organisation_add": _op("POST", "/organisations", {"operator"}, "Add an organisation."),
    "organisation_list": _op("GET", "/organisations", ALL, "Every organisation."),
    "user_add": _op(
        "POST", "/users", {"operator"}, "Add a user with a role; returns their first token."
    ),
    "user_list": _op("GET", "/users", {"operator", "auditor"}, "Every user (no tokens)."),
    "token_add": _op(
        "POST", "/users/{name}/tokens", ALL, "A new token (the operator, or the user for self)."
    ),
    "token_revoke": _op(
        "DELETE", "/tokens/{token_id}", ALL, "Revoke a token (the operator, or its owner)."
    ),
    "node_add": _op("POST", "/nodes", {"operator"}, "Register a node by its public key."),
    "node_list": _op("GET", "/nodes", ALL, "Every node and its organisation."),
    "project_add": _op("POST", "/projects", {"operator"}, "Open a project with its lead."),
    "project_list": _op("GET", "/projects", ALL, "The projects you may see."),
    "project_get": _op("GET", "/projects/{project}", ALL, "One project and its members."),
    "member_add": _op(
        "POST",
        "/projects/{project}/members",
        {"operator", "researcher"},
        "Add a member (the operator, or the project's lead).",
    ),
    "agreement_add": _op(
        "POST",
        "/projects/{project}/agreements",
        {"operator", "researcher"},
        "Draft a data-use agreement with one node (the operator, or the project's lead).",
    ),
    "agreement_list": _op(
        "GET", "/projects/{project}/agreements", ALL, "The project's agreements you may see."
    ),
    "agreement_get": _op("GET", "/agreements/{agreement_id}", ALL, "One agreement."),
    "agreement_move": _op(
        "POST",
        "/agreements/{agreement_id}/state",
        {"operator", "steward"},
        "Move an agreement: signed (its node's steward, with the node's signature), active "
        "(the operator), suspended, expired.",
    ),
    "study_submit": _op(
        "POST", "/studies", {"researcher"}, "Submit a study in a project (lead or analyst)."
    ),
    "study_list": _op("GET", "/studies", ALL, "The studies you may see."),
    "study_get": _op("GET", "/studies/{study_id}", ALL, "A study's state, approvals, tasks."),
    "study_file": _op(
        "GET",
        "/studies/{study_id}/files/{name}",
        {"researcher", "auditor"},
        "A result file (project members; an auditor gets evidence.json unless a member).",
    ),
    "study_approve": _op(
        "POST",
        "/studies/{study_id}/approvals",
        {"operator", "researcher"},
        "Approve a submitted study: the project's lead, or the operator as reviewer; never "
        "the submitter.",
    ),
    "study_reject": _op(
        "POST",
        "/studies/{study_id}/rejection",
        {"operator", "researcher"},
        "Reject a submitted study (the project's lead or the operator), with a reason.",
    ),
    "study_withdraw": _op(
        "POST", "/studies/{study_id}/withdrawal", {"researcher"}, "Withdraw your submission."
    ),
    "usage_get": _op(
        "GET",
        "/projects/{project}/usage",
        {"operator", "auditor", "researcher"},
        "The project's metered usage and budgets (a researcher: its lead).",
    ),
    "usage_csv": _op(
        "GET", "/usage.csv", {"operator", "auditor"}, "Usage per project and node, as CSV."
    ),
    "audit": _op(
        "GET",
        "/audit",
        {"operator", "auditor"},
        "The hub's audit trail (filters: user, project, study, since).",
    ),
}


@dataclass(frozen=True)
class Principal:
    """The caller of a request, as its token says."""

    name: str
    role: str
    organisation: str | None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(SCOPES))
    token_id: str | None = None


@dataclass
class HubError(Exception):
    """A refusal the API answers as ``application/problem+json``."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}"


def forbidden(detail: str) -> HubError:
    """403 with ``detail``."""
    return HubError(403, "forbidden", detail)


def absent(what: str) -> HubError:
    """404: no such object, or none you may see."""
    return HubError(404, "not found", f"no {what} that you may see")


def authorize(principal: Principal, operation: str) -> None:
    """Refuse (403) a caller whose role or token scope the operation does not admit."""
    op = OPERATIONS[operation]
    if principal.role not in op.roles:
        allowed = ", ".join(sorted(op.roles))
        raise forbidden(f"{operation} is for {allowed}; you are {principal.role}")
    if op.scope not in principal.scopes:
        raise forbidden(f"{operation} needs a token with the {op.scope} scope")


def authenticate(s: Session, token: str | None, now: dt.datetime) -> Principal | None:
    """The principal a bearer token belongs to (None: unknown, expired, revoked, or its user
    disabled)."""
    if not token:
        return None
    found = s.scalar(select(schema.Token).where(schema.Token.token_hash == auth.token_hash(token)))
    if found is None or found.revoked_at is not None or found.expires_at <= now:
        return None
    user = s.get(schema.User, found.user)
    if user is None or user.disabled_at is not None:
        return None
    return Principal(user.name, user.role, user.organisation, frozenset(found.scopes), found.id)


def issue_token(
    s: Session, user: str, scopes: list[str] | None = None, days: int = TOKEN_DAYS
) -> tuple[str, str]:
    """A new token for ``user``: (its id, the token itself, shown once; only its hash is
    kept)."""
    chosen = sorted(set(scopes or SCOPES))
    bad = [x for x in chosen if x not in SCOPES]
    if bad or not chosen:
        raise HubError(422, "invalid request", f"scopes are among {', '.join(SCOPES)}")
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise HubError(422, "invalid request", f"a token lives 1 to {MAX_TOKEN_DAYS} days")
    token = auth.new_token()
    token_id = "tok_" + secrets.token_hex(6)
    s.add(
        schema.Token(
            id=token_id,
            user=user,
            token_hash=auth.token_hash(token),
            scopes=chosen,
            expires_at=schema.utcnow() + dt.timedelta(days=days),
        )
    )
    return token_id, token
