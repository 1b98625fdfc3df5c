"""Governance on the hub, apart from HTTP: organisations, users and tokens, projects and
members, data-use agreements, the checks a study passes at submission and again at dispatch,
its two approvals, and the budget it holds.

Every function works inside the caller's transaction (``s``), so a refusal leaves the
database exactly as it was. Visibility: the operator and auditors see every project's
metadata; a researcher sees the projects they are a member of; a steward sees the projects
with an agreement at one of their organisation's nodes. Nobody sees another project's
studies, agreements or usage (they are answered as absent).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medlab.federation.common.messages import agreement_message
from medlab.federation.hub import db
from medlab.governance import schema, states
from medlab.governance.access import (
    ORGANISATION_KINDS,
    PROJECT_ROLES,
    ROLES,
    HubError,
    Principal,
    absent,
    forbidden,
    issue_token,
)
from medlab.ledger.keys import key_id, verify

EPS = 1e-12  # float slack in budget comparisons


def invalid(path: str, message: str) -> HubError:
    return HubError(
        422, "invalid request", f"{path}: {message}", [{"path": path, "message": message}]
    )


def _conflict(detail: str) -> HubError:
    return HubError(409, "conflict", detail)


# -- organisations, users, tokens ------------------------------------------------------


def add_organisation(s: Session, name: str, kind: str) -> None:
    """A new organisation of one of :data:`ORGANISATION_KINDS`."""
    if kind not in ORGANISATION_KINDS:
        raise invalid("$.kind", f"one of {', '.join(ORGANISATION_KINDS)}")
    if s.get(schema.Organisation, name) is not None:
        raise _conflict(f"an organisation named {name} exists")
    s.add(schema.Organisation(name=name, kind=kind))


def add_user(
    s: Session,
    name: str,
    role: str,
    organisation: str | None,
    public_key: str | None = None,
    scopes: list[str] | None = None,
    days: int | None = None,
) -> tuple[str, str]:
    """A new user and their first token: (token id, token)."""
    if role not in ROLES:
        raise invalid("$.role", f"one of {', '.join(ROLES)}")
    org = None if organisation is None else s.get(schema.Organisation, organisation)
    if organisation is not None and org is None:
        raise invalid("$.organisation", f"no organisation {organisation}")
    if role == "steward" and (org is None or org.kind != "hospital"):
        raise invalid("$.organisation", "a steward belongs to a hospital organisation")
    if public_key is not None:
        try:
            key_id(public_key)
        except ValueError:
            raise invalid("$.public_key", "not an Ed25519 public key (PEM)") from None
    if s.get(schema.User, name) is not None:
        raise _conflict(f"a user named {name} exists")
    s.add(schema.User(name=name, role=role, organisation=organisation, public_key=public_key))
    s.flush()
    return issue_token(s, name, scopes, days or 90)


def add_token(
    s: Session, who: Principal, user: str, scopes: list[str] | None, days: int | None
) -> tuple[str, str]:
    """Another token for ``user`` (the operator, or the user for themself)."""
    if who.role != "operator" and who.name != user:
        raise forbidden("only the operator issues tokens for someone else")
    found = s.get(schema.User, user)
    if found is None:
        raise absent(f"user {user}")
    if who.name == user and scopes and not set(scopes) <= who.scopes:
        raise forbidden("a token cannot have scopes the token asking for it lacks")
    return issue_token(s, user, scopes, days or 90)


def revoke_token(s: Session, who: Principal, token_id: str) -> None:
    """Revoke a token (the operator's, or its owner's)."""
    found = s.get(schema.Token, token_id)
    if found is None or (who.role != "operator" and found.user != who.name):
        raise absent(f"token {token_id}")
    if found.revoked_at is None:
        found.revoked_at = schema.utcnow()


def user_row(u: schema.User) -> dict[str, Any]:
    """A user as the API shows them."""
    return {
        "name": u.name,
        "role": u.role,
        "organisation": u.organisation,
        "signs_submissions": u.public_key is not None,
        "created_at": iso(u.created_at),
    }


# -- projects --------------------------------------------------------------------------


def iso(moment: dt.datetime | None) -> str | None:
    """UTC ISO 8601, seconds."""
    return None if moment is None else moment.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")


def stewarded(s: Session, who: Principal) -> set[str]:
    """The nodes of a steward's organisation."""
    if who.role != "steward" or who.organisation is None:
        return set()
    return set(s.scalars(select(db.Node.name).where(db.Node.organisation == who.organisation)))


def project_role(s: Session, who: Principal, project: str) -> str | None:
    """The caller's role in ``project`` (None: not a member)."""
    member = s.get(schema.Member, (project, who.name))
    return None if member is None else member.role


def visible_project(s: Session, who: Principal, name: str) -> schema.Project:
    """The project, if the caller may see it (else 404)."""
    project = s.get(schema.Project, name)
    if project is None or not _sees(s, who, project.name):
        raise absent(f"project {name}")
    return project


def _sees(s: Session, who: Principal, project: str) -> bool:
    if who.role in ("operator", "auditor"):
        return True
    if project_role(s, who, project) is not None:
        return True
    nodes = stewarded(s, who)
    if nodes:
        found = s.scalar(
            select(schema.Agreement.id).where(
                schema.Agreement.project == project, schema.Agreement.node.in_(nodes)
            )
        )
        return found is not None
    return False


def add_project(
    s: Session,
    who: Principal,
    name: str,
    organisation: str,
    purpose: str,
    lead: str,
    starts: dt.datetime,
    ends: dt.datetime,
) -> None:
    """Open a project owned by ``organisation`` with ``lead`` as its first member."""
    if s.get(schema.Organisation, organisation) is None:
        raise invalid("$.organisation", f"no organisation {organisation}")
    user = s.get(schema.User, lead)
    if user is None or user.role != "researcher":
        raise invalid("$.lead", f"{lead} is not a researcher")
    if ends <= starts:
        raise invalid("$.ends", "a project ends after it starts")
    if s.get(schema.Project, name) is not None:
        raise _conflict(f"a project named {name} exists")
    s.add(
        schema.Project(
            name=name,
            organisation=organisation,
            purpose=purpose,
            starts=starts,
            ends=ends,
            created_by=who.name,
        )
    )
    s.flush()
    s.add(schema.Member(project=name, user=lead, role="lead", added_by=who.name))


def add_member(s: Session, who: Principal, project: str, user: str, role: str) -> None:
    """Add a member (the operator, or the project's lead); an auditor joins as a viewer only
    (that is how an auditor is granted a project's results)."""
    visible_project(s, who, project)
    if who.role != "operator" and project_role(s, who, project) != "lead":
        raise forbidden(f"only the operator or a lead of {project} adds members")
    if role not in PROJECT_ROLES:
        raise invalid("$.role", f"one of {', '.join(PROJECT_ROLES)}")
    found = s.get(schema.User, user)
    if found is None:
        raise invalid("$.user", f"no user {user}")
    if found.role not in ("researcher", "auditor") or (
        found.role == "auditor" and role != "viewer"
    ):
        raise invalid("$.role", "members are researchers; an auditor joins as a viewer")
    if s.get(schema.Member, (project, user)) is not None:
        raise _conflict(f"{user} is a member of {project} already")
    s.add(schema.Member(project=project, user=user, role=role, added_by=who.name))


def project_row(s: Session, p: schema.Project) -> dict[str, Any]:
    """A project as the API shows it."""
    members = s.scalars(select(schema.Member).where(schema.Member.project == p.name))
    return {
        "name": p.name,
        "organisation": p.organisation,
        "purpose": p.purpose,
        "starts": iso(p.starts),
        "ends": iso(p.ends),
        "members": [{"user": m.user, "role": m.role} for m in members],
    }


def projects(s: Session, who: Principal) -> list[dict[str, Any]]:
    """The projects the caller may see."""
    rows = s.scalars(select(schema.Project).order_by(schema.Project.name))
    return [project_row(s, p) for p in rows if _sees(s, who, p.name)]


# -- agreements ------------------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """What a node's steward agrees to for one project."""

    analyses: list[str]
    domains: list[str]
    policy_version: str
    epsilon: float
    rho: float
    expires_at: dt.datetime


def terms_document(a: schema.Agreement) -> dict[str, Any]:
    """The agreement's terms as its node's steward signs them (canonical JSON)."""
    return {
        "agreement": a.id,
        "project": a.project,
        "node": a.node,
        "analyses": sorted(a.analyses),
        "domains": sorted(a.domains),
        "policy_version": a.policy_version,
        "epsilon": a.epsilon,
        "rho": a.rho,
        "expires_at": iso(a.expires_at),
    }


def signing_text(a: schema.Agreement) -> bytes:
    """What the node's key signs of an agreement."""
    return agreement_message(terms_document(a))


def add_agreement(s: Session, who: Principal, project: str, node: str, terms: Terms) -> str:
    """Draft an agreement of ``project`` at ``node``; returns its id."""
    p = visible_project(s, who, project)
    if who.role != "operator" and project_role(s, who, project) != "lead":
        raise forbidden(f"only the operator or a lead of {project} drafts agreements")
    if s.get(db.Node, node) is None:
        raise invalid("$.node", f"no node {node}")
    if terms.expires_at > p.ends:
        raise invalid("$.expires_at", f"after the project ends ({iso(p.ends)})")
    if terms.expires_at <= schema.utcnow():
        raise invalid("$.expires_at", "in the past")
    live = s.scalar(
        select(schema.Agreement.id).where(
            schema.Agreement.project == project,
            schema.Agreement.node == node,
            schema.Agreement.state != "expired",
        )
    )
    if live is not None:
        raise _conflict(f"{project} has agreement {live} at {node}; expire it first")
    agreement_id = "ag_" + secrets.token_hex(6)
    s.add(
        schema.Agreement(
            id=agreement_id,
            project=project,
            node=node,
            analyses=sorted(set(terms.analyses)),
            domains=sorted(set(terms.domains)),
            policy_version=terms.policy_version,
            epsilon=terms.epsilon,
            rho=terms.rho,
            expires_at=terms.expires_at,
            created_by=who.name,
        )
    )
    return agreement_id


def visible_agreement(s: Session, who: Principal, agreement_id: str) -> schema.Agreement:
    """The agreement, if the caller may see it (its project's members, its node's stewards,
    the operator and auditors)."""
    a = s.get(schema.Agreement, agreement_id)
    if a is None:
        raise absent(f"agreement {agreement_id}")
    ok = who.role in ("operator", "auditor") or project_role(s, who, a.project) is not None
    if not (ok or a.node in stewarded(s, who)):
        raise absent(f"agreement {agreement_id}")
    return a


def expire_due(s: Session, now: dt.datetime) -> list[str]:
    """Mark every agreement past its date expired; returns their ids."""
    due = list(
        s.scalars(
            select(schema.Agreement).where(
                schema.Agreement.state != "expired", schema.Agreement.expires_at <= now
            )
        )
    )
    for a in due:
        a.state, a.reason, a.updated_at = "expired", "its date passed", now
    return [a.id for a in due]


def move_agreement(
    s: Session,
    who: Principal,
    agreement_id: str,
    state: str,
    node_key: str | None,
    signature: str | None = None,
    reason: str | None = None,
) -> schema.Agreement:
    """Move an agreement under :data:`states.AGREEMENT_MOVES`. Signing needs the node's
    signature over :func:`signing_text`, verified with the node's registered key."""
    a = visible_agreement(s, who, agreement_id)
    parties = {who.role} if who.role == "operator" else set()
    if who.role == "steward" and a.node in stewarded(s, who):
        parties.add("steward")
    states.check(states.AGREEMENT_MOVES, f"agreement {a.id}", a.state, state, parties)
    if state == "signed":
        if not signature or node_key is None or not verify(node_key, signing_text(a), signature):
            raise HubError(
                422,
                "invalid signature",
                f"the node {a.node}'s signature over the agreement's terms does not verify "
                "(sign it at the node: medlab node agreement sign)",
            )
        a.signature, a.signed_by = signature, who.name
    a.state, a.reason, a.updated_at = state, reason, schema.utcnow()
    return a


def agreement_row(a: schema.Agreement) -> dict[str, Any]:
    """An agreement as the API shows it: its terms, state and the hub's budget mirror."""
    return terms_document(a) | {
        "state": a.state,
        "reason": a.reason,
        "created_by": a.created_by,
        "signed_by": a.signed_by,
        "signature": a.signature,
        "epsilon_held": a.epsilon_held,
        "epsilon_spent": a.epsilon_spent,
        "rho_held": a.rho_held,
        "rho_spent": a.rho_spent,
    }


def agreements_of(s: Session, who: Principal, project: str) -> list[dict[str, Any]]:
    """The project's agreements the caller may see."""
    visible_project(s, who, project)
    rows = s.scalars(
        select(schema.Agreement)
        .where(schema.Agreement.project == project)
        .order_by(schema.Agreement.node, schema.Agreement.created_at)
    )
    mine = stewarded(s, who)
    member = who.role in ("operator", "auditor") or project_role(s, who, project) is not None
    return [agreement_row(a) for a in rows if member or a.node in mine]


# -- studies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """What a study asks of its project's agreements."""

    project: str
    analyses: set[str]
    domains: set[str]
    nodes: list[str] | None
    epsilon: float
    rho: float


def check_study(
    s: Session, who: Principal | None, ask: Ask, now: dt.datetime
) -> list[schema.Agreement]:
    """The active agreements a study runs under, or the reason it may not (403: membership;
    409: the project, an agreement or the budget does not allow it). ``who`` None: the
    re-check at dispatch, of the submitter's rights as they are now."""
    p = s.get(schema.Project, ask.project)
    if p is None:
        raise absent(f"project {ask.project}")
    if who is not None:
        role = project_role(s, who, ask.project)
        if role is None:
            raise absent(f"project {ask.project}")
        if role not in ("lead", "analyst"):
            raise forbidden(f"a {role} of {ask.project} does not submit studies")
    if now < p.starts:
        raise _conflict(f"project {p.name} starts {iso(p.starts)}")
    if now >= p.ends:
        raise _conflict(f"project {p.name} ended {iso(p.ends)}")
    expire_due(s, now)
    rows = list(
        s.scalars(
            select(schema.Agreement)
            .where(schema.Agreement.project == ask.project, schema.Agreement.state == "active")
            .order_by(schema.Agreement.node)
        )
    )
    active = {a.node: a for a in rows}
    wanted = ask.nodes if ask.nodes is not None else sorted(active)
    if not wanted:
        raise _conflict(f"project {ask.project} has no active data-use agreement at any node")
    chosen = []
    for node in wanted:
        a = active.get(node)
        if a is None:
            raise _conflict(f"project {ask.project} has no active agreement at node {node}")
        outside = sorted(ask.analyses - set(a.analyses))
        if outside:
            raise _conflict(
                f"analysis type {outside[0]} is outside agreement {a.id} at {node} "
                f"(allowed: {', '.join(a.analyses)})"
            )
        domains = sorted(ask.domains - set(a.domains))
        if domains:
            raise _conflict(f"cohort domain {domains[0]} is outside agreement {a.id} at {node}")
        chosen.append(a)
    return chosen


def hold(
    s: Session, study_id: str, agreements: list[schema.Agreement], epsilon: float, rho: float
) -> None:
    """Reserve the study's budget on every agreement, or refuse (409) with nothing held:
    one conditional UPDATE per agreement, so concurrent submissions never overspend."""
    table = schema.Agreement
    for a in agreements:
        done = s.execute(
            update(table)
            .where(
                table.id == a.id,
                table.epsilon + EPS >= table.epsilon_held + table.epsilon_spent + epsilon,
                table.rho + EPS >= table.rho_held + table.rho_spent + rho,
            )
            .values(epsilon_held=table.epsilon_held + epsilon, rho_held=table.rho_held + rho)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            s.refresh(a)
            left = a.epsilon - a.epsilon_held - a.epsilon_spent
            left_rho = a.rho - a.rho_held - a.rho_spent
            raise _conflict(
                f"over budget at {a.node}: the study asks epsilon {epsilon:g}, rho {rho:g}; "
                f"agreement {a.id} has epsilon {max(left, 0):g}, rho {max(left_rho, 0):g} left"
            )
        s.add(schema.Hold(study_id=study_id, agreement=a.id, epsilon=epsilon, rho=rho))


def settle_holds(s: Session, study_id: str, spent: dict[str, tuple[float, float]]) -> None:
    """Release the study's holds; ``spent`` (by node) is what each node reported spending,
    mirrored onto its agreement (the node's own ledger stays authoritative)."""
    table = schema.Agreement
    for h in s.scalars(
        select(schema.Hold).where(schema.Hold.study_id == study_id, schema.Hold.settled.is_(False))
    ):
        a = s.get(table, h.agreement)
        assert a is not None
        epsilon, rho = spent.get(a.node, (0.0, 0.0))
        s.execute(
            update(table)
            .where(table.id == a.id)
            .values(
                epsilon_held=table.epsilon_held - h.epsilon,
                rho_held=table.rho_held - h.rho,
                epsilon_spent=table.epsilon_spent + epsilon,
                rho_spent=table.rho_spent + rho,
            )
            .execution_options(synchronize_session=False)
        )
        h.settled = True


def approve(s: Session, who: Principal, study: Any) -> tuple[str, bool]:
    """Record the caller's approval of a submitted study (the project's lead, or the
    operator as reviewer; never its submitter, never twice of a kind): its kind, and whether
    both are in now."""
    if study.state != "submitted":
        states.check(states.STUDY_MOVES, f"study {study.id}", study.state, "running", set())
    kind = approval_kind(s, who, study.researcher, study.project)
    done = s.scalars(select(schema.Approval).where(schema.Approval.study_id == study.id)).all()
    if any(x.user == who.name for x in done):
        raise _conflict(f"{who.name} approved {study.id} already; a second person must")
    if any(x.kind == kind for x in done):
        raise _conflict(f"the {kind} approval of {study.id} is in already")
    s.add(schema.Approval(study_id=study.id, kind=kind, user=who.name))
    try:
        s.flush()  # the key: never two approvals of a kind, whatever the locking
    except IntegrityError:
        raise _conflict(f"the {kind} approval of {study.id} is in already") from None
    return kind, len({x.kind for x in done} | {kind}) == 2


def approval_kind(s: Session, who: Principal, researcher: str | None, project: str | None) -> str:
    """The kind of approval ``who`` gives a study ``researcher`` submitted in ``project``:
    ``reviewer`` (the operator) or ``lead`` (the project's); 403 for anyone else and for the
    submitter."""
    if who.name == researcher:
        raise forbidden("no one approves their own submission")
    if who.role == "operator":
        return "reviewer"
    if project is not None and project_role(s, who, project) == "lead":
        return "lead"
    raise forbidden(f"only a lead of {project} or the operator approves")


def approvals(s: Session, study_id: str) -> list[dict[str, Any]]:
    """A study's approvals."""
    rows = s.scalars(
        select(schema.Approval)
        .where(schema.Approval.study_id == study_id)
        .order_by(schema.Approval.at)
    )
    return [{"kind": a.kind, "user": a.user, "at": iso(a.at)} for a in rows]


def end_study(s: Session, who: Principal, study: Any, state: str) -> None:
    """Reject (a lead or the operator) or withdraw (its submitter) a submitted study."""
    parties = {who.role} if who.role == "operator" else set()
    if project_role(s, who, study.project) == "lead":
        parties.add("lead")
    if who.name == study.researcher:
        parties.add("submitter")
    states.check(states.STUDY_MOVES, f"study {study.id}", study.state, state, parties)
