"""``medlab hub user | organisation | node | project | agreement | approve | reject | usage |
studies``: governance from the command line, thin wrappers over the SDK (every call goes
through the hub's API with your token, so the hub checks your role and logs it);
``medlab hub audit DIR`` reads the hub's log where it lies; ``medlab node agreement``: the
steward's side at the node."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.table import Table

from medlab.cli.federation import HubUrl, JsonOpt, StoreArg, Token, _client, _pem
from medlab.cli.output import emit_json, stdout
from medlab.cohorts.model import Domain
from medlab.errors import UsageError

user_app = typer.Typer(help="Users and their tokens (operator).")
organisation_app = typer.Typer(help="Organisations (operator).")
hub_node_app = typer.Typer(help="Nodes of hospital organisations, over the API (operator).")
project_app = typer.Typer(help="Projects and their members.")
agreement_app = typer.Typer(help="Data-use agreements of a project with each node.")
node_agreement_app = typer.Typer(help="The agreements this node's steward signed.")

ALL_DOMAINS = ",".join(get_args(Domain))


def _when(text: str, option: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: not an ISO 8601 date or time ({text!r})") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _show(found: Any, as_json: bool, line: str) -> None:
    if as_json:
        emit_json(found)
    else:
        stdout.print(line, highlight=False, soft_wrap=True)


def _rows(rows: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
        return
    table = Table(*columns)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    stdout.print(table)


# -- users -----------------------------------------------------------------------------


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    role: Annotated[str, typer.Option("--role", help="operator, steward, researcher, auditor.")],
    organisation: Annotated[str | None, typer.Option("--organisation")] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Their public key: submissions must be signed.")
    ] = None,
    scopes: Annotated[str | None, typer.Option("--scopes", help="read,write (default).")] = None,
    days: Annotated[int, typer.Option("--days", help="The token's life in days.")] = 90,
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Add a user; prints their token once, alone on the last line."""
    pem = None if key is None else _pem(key)
    found = _client(hub, token).add_user(name, role, organisation, pem, _split(scopes), days)
    stdout.print(f"user {name} ({role}) added; token {found['token_id']} (shown once):")
    print(found["token"])


@user_app.command("list")
def user_list(hub: HubUrl = None, token: Token = None, as_json: JsonOpt = False) -> None:
    """Every user (operator, auditor)."""
    columns = ("name", "role", "organisation", "signs_submissions", "created_at")
    _rows(_client(hub, token).users(), columns, as_json)


@user_app.command("token")
def user_token(
    name: Annotated[str, typer.Argument(help="Whose token (yours, or anyone's as operator).")],
    scopes: Annotated[str | None, typer.Option("--scopes", help="read,write (default).")] = None,
    days: Annotated[int, typer.Option("--days")] = 90,
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """A new token; printed once, alone on the last line."""
    found = _client(hub, token).add_token(name, _split(scopes), days)
    stdout.print(f"token {found['token_id']} for {name} (shown once):")
    print(found["token"])


@user_app.command("revoke")
def user_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_…).")],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Revoke a token (yours, or anyone's as operator)."""
    _client(hub, token).revoke_token(token_id)
    stdout.print(f"revoked {token_id}")


@user_app.command("me")
def user_me(hub: HubUrl = None, token: Token = None, as_json: JsonOpt = False) -> None:
    """Who your token belongs to."""
    me = _client(hub, token).me()
    _show(me, as_json, f"{me['user']}: {me['role']} of {me['organisation'] or '–'}")


@organisation_app.command("add")
def organisation_add(
    name: Annotated[str, typer.Argument()],
    kind: Annotated[
        str,
        typer.Option("--kind", help="hospital, pharma, cro, device, ai, operator, regulator."),
    ],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Add an organisation."""
    _client(hub, token).add_organisation(name, kind)
    stdout.print(f"organisation {name} ({kind}) added")


@organisation_app.command("list")
def organisation_list(hub: HubUrl = None, token: Token = None, as_json: JsonOpt = False) -> None:
    """Every organisation."""
    _rows(_client(hub, token).organisations(), ("name", "kind"), as_json)


@hub_node_app.command("add")
def node_add(
    name: Annotated[str, typer.Argument(help="The node's name (its store's name).")],
    key: Annotated[Path, typer.Option("--key", help="The node's public key (medlab node key).")],
    organisation: Annotated[str, typer.Option("--organisation", help="Its hospital.")],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Register a node of a hospital organisation."""
    found = _client(hub, token).add_node(name, _pem(key), organisation)
    stdout.print(f"node {name} of {organisation} added (key {found['key_id']})")


@hub_node_app.command("list")
def node_list(hub: HubUrl = None, token: Token = None, as_json: JsonOpt = False) -> None:
    """Every node."""
    _rows(_client(hub, token).nodes(), ("name", "organisation", "key_id", "last_seen"), as_json)


# -- projects and agreements -------------------------------------------------------------


@project_app.command("add")
def project_add(
    name: Annotated[str, typer.Argument()],
    organisation: Annotated[str, typer.Option("--organisation", help="The owner.")],
    purpose: Annotated[str, typer.Option("--purpose")],
    lead: Annotated[str, typer.Option("--lead", help="A researcher: the first member.")],
    ends: Annotated[str, typer.Option("--ends", help="ISO 8601 date.")],
    starts: Annotated[str | None, typer.Option("--starts", help="Default: now.")] = None,
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Open a project (operator)."""
    begin = None if starts is None else _when(starts, "--starts")
    _client(hub, token).add_project(name, organisation, purpose, lead, _when(ends, "--ends"), begin)
    stdout.print(f"project {name} opened; lead {lead}")


@project_app.command("list")
def project_list(hub: HubUrl = None, token: Token = None, as_json: JsonOpt = False) -> None:
    """The projects you may see."""
    _rows(
        _client(hub, token).projects(),
        ("name", "organisation", "starts", "ends", "purpose"),
        as_json,
    )


@project_app.command("show")
def project_show(
    name: Annotated[str, typer.Argument()],
    hub: HubUrl = None,
    token: Token = None,
    as_json: JsonOpt = False,
) -> None:
    """One project and its members."""
    p = _client(hub, token).project(name)
    members = ", ".join(f"{m['user']} ({m['role']})" for m in p["members"])
    _show(
        p,
        as_json,
        f"{p['name']} of {p['organisation']}, {p['starts']} – {p['ends']}: "
        f"{p['purpose']}\nmembers: {members}",
    )


@project_app.command("member")
def project_member(
    name: Annotated[str, typer.Argument(help="The project.")],
    user: Annotated[str, typer.Argument(help="Who joins.")],
    role: Annotated[str, typer.Option("--role", help="lead, analyst, viewer.")],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Add a member (the operator, or the project's lead)."""
    _client(hub, token).add_member(name, user, role)
    stdout.print(f"{user} joined {name} as {role}")


@agreement_app.command("add")
def agreement_add(
    project: Annotated[str, typer.Argument()],
    node: Annotated[str, typer.Option("--node")],
    analyses: Annotated[str, typer.Option("--analyses", help="Analysis types, comma-separated.")],
    policy_version: Annotated[str, typer.Option("--policy-version", help="The node's policy.")],
    expires: Annotated[str, typer.Option("--expires", help="ISO 8601 date.")],
    domains: Annotated[
        str, typer.Option("--domains", help="CDM domains cohorts may read (default: all).")
    ] = ALL_DOMAINS,
    epsilon: Annotated[float, typer.Option("--epsilon")] = 0.0,
    rho: Annotated[float, typer.Option("--rho")] = 0.0,
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Draft an agreement of the project with one node; prints its id on the last line."""
    found = _client(hub, token).add_agreement(
        project,
        node,
        _split(analyses) or [],
        _split(domains) or [],
        policy_version,
        _when(expires, "--expires"),
        epsilon,
        rho,
    )
    stdout.print(f"agreement drafted for {project} at {node}; its steward signs it at the node")
    print(found["agreement"])


@agreement_app.command("list")
def agreement_list(
    project: Annotated[str, typer.Argument()],
    hub: HubUrl = None,
    token: Token = None,
    as_json: JsonOpt = False,
) -> None:
    """The project's agreements you may see."""
    columns = ("agreement", "node", "state", "analyses", "epsilon", "epsilon_spent", "expires_at")
    _rows(_client(hub, token).agreements(project), columns, as_json)


def _move(state: str) -> Any:
    def command(
        agreement_id: Annotated[str, typer.Argument()],
        reason: Annotated[str | None, typer.Option("--reason")] = None,
        hub: HubUrl = None,
        token: Token = None,
    ) -> None:
        found = _client(hub, token).move_agreement(agreement_id, state, reason=reason)
        stdout.print(f"agreement {agreement_id}: {found['state']}")

    command.__doc__ = f"Move an agreement to {state}."
    return command


for _state in ("active", "suspended", "expired"):
    agreement_app.command(
        {"active": "activate", "suspended": "suspend", "expired": "expire"}[_state]
    )(_move(_state))


# -- studies ---------------------------------------------------------------------------


def approve(
    study_id: Annotated[str, typer.Argument()],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Approve a submitted study (its project's lead, or the operator as reviewer)."""
    found = _client(hub, token).approve(study_id)
    kinds = ", ".join(f"{a['kind']} by {a['user']}" for a in found.approvals)
    stdout.print(f"{study_id}: {found.state} (approvals: {kinds})", highlight=False)
    if found.reason:
        stdout.print(found.reason, highlight=False, soft_wrap=True)


def reject(
    study_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason")],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Reject a submitted study."""
    found = _client(hub, token).reject(study_id, reason)
    stdout.print(f"{study_id}: {found.state}", highlight=False)


def studies(hub: HubUrl = None, token: Token = None, as_json: JsonOpt = False) -> None:
    """The studies you may see."""
    columns = ("study_id", "name", "project", "researcher", "state", "created_at")
    _rows(_client(hub, token).studies(), columns, as_json)


def usage(
    project: Annotated[
        str | None, typer.Argument(help="One project (default: all, as CSV).")
    ] = None,
    csv: Annotated[bool, typer.Option("--csv", help="The billing export (CSV).")] = False,
    hub: HubUrl = None,
    token: Token = None,
    as_json: JsonOpt = False,
) -> None:
    """A project's usage: studies, tasks, node-seconds, releases, budget per node."""
    client = _client(hub, token)
    if csv or project is None:
        print(client.usage_csv(project), end="")
        return
    found = client.usage(project)
    if as_json:
        emit_json(found)
        return
    t = found["total"]
    stdout.print(
        f"{project}: {t['studies']:g} studies, {t['tasks']:g} tasks, "
        f"{t['node_seconds']:.1f} node-seconds, {t['releases']:g} releases, "
        f"epsilon {t['epsilon']:g} spent",
        highlight=False,
    )
    columns = ("node", "state", "epsilon_granted", "epsilon_held", "epsilon_spent")
    _rows(found["budgets"], columns, False)


def audit(
    directory: Annotated[Path, typer.Argument(help="The hub's directory.")],
    user: Annotated[str | None, typer.Option("--user")] = None,
    project: Annotated[str | None, typer.Option("--project")] = None,
    study: Annotated[str | None, typer.Option("--study")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601 date or time.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The hub's audit trail: every API call and every governance event, filtered."""
    from medlab.governance.audit import events

    if not (directory / "ledger").is_dir():
        raise UsageError(f"{directory}: no hub here (no ledger)")
    moment = None if since is None else _when(since, "--since")
    found = events(directory / "ledger", user, project, study, moment)
    if as_json:
        emit_json(found)
        return
    table = Table("#", "time", "event", "who", "what", "outcome")
    for e in found:
        who = next((str(e[k]) for k in ("user", "by", "approved_by", "researcher") if e.get(k)), "")
        what = e.get("operation") or e.get("study_id") or e.get("agreement") or ""
        outcome = e.get("status", e.get("reason", ""))
        table.add_row(str(e["index"]), e["time"], e["type"], who, str(what), str(outcome))
    stdout.print(table)
    stdout.print(f"{len(found)} events", highlight=False)


# -- at the node -----------------------------------------------------------------------


@node_agreement_app.command("sign")
def node_agreement_sign(
    store: StoreArg,
    agreement_id: Annotated[str, typer.Argument()],
    hub: HubUrl = None,
    token: Token = None,
    by: Annotated[str | None, typer.Option("--by", help="Who signs (default: you).")] = None,
) -> None:
    """Sign an agreement at this node (its steward): checks the terms against the node's
    policy, records them, grants the project's budget here, and sends the signature."""
    from medlab.federation.node import agreements

    client = _client(hub, token)
    who = by or client.me()["user"]
    document = client.agreement(agreement_id)
    stdout.print(json.dumps(agreements.terms_of(document), indent=2), highlight=False)
    signature = agreements.sign(store, document, who)
    client.move_agreement(agreement_id, "signed", signature)
    stdout.print(f"signed {agreement_id} at {store.stem}; the operator activates it")


@node_agreement_app.command("list")
def node_agreement_list(store: StoreArg, as_json: JsonOpt = False) -> None:
    """The agreements signed at this node."""
    from medlab.federation.node.inbox import Agreements

    rows = [
        {**a.terms, "state": a.state, "signed_by": a.signed_by, "reason": a.reason}
        for a in Agreements(store).all()
    ]
    _rows(rows, ("agreement", "project", "state", "analyses", "epsilon", "expires_at"), as_json)


@node_agreement_app.command("suspend")
def node_agreement_suspend(
    store: StoreArg,
    agreement_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option("--reason")],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Suspend an agreement here (no task runs under it from now), and at the hub when
    ``--hub`` or $MEDLAB_HUB_URL is given."""
    from medlab.federation.node.inbox import Agreements
    from medlab.ledger import parties

    Agreements(store).move(agreement_id, "suspended", "signed", reason)
    parties.node(store).log("agreement_suspended", agreement=agreement_id, reason=reason)
    stdout.print(f"suspended {agreement_id} at {store.stem}")
    if hub or token:
        _client(hub, token).move_agreement(agreement_id, "suspended", reason=reason)
        stdout.print("and at the hub")


@node_agreement_app.command("reinstate")
def node_agreement_reinstate(
    store: StoreArg,
    agreement_id: Annotated[str, typer.Argument()],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Reinstate an agreement suspended here (and at the hub with ``--hub``)."""
    from medlab.federation.node.inbox import Agreements
    from medlab.ledger import parties

    Agreements(store).move(agreement_id, "signed", "suspended", None)
    parties.node(store).log("agreement_reinstated", agreement=agreement_id)
    stdout.print(f"reinstated {agreement_id} at {store.stem}")
    if hub or token:
        _client(hub, token).move_agreement(agreement_id, "active")
