"""The operator's page: organisations, users and their tokens, nodes (last seen, agent
version, key id), projects and their usage; a token can be revoked from it."""

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from medlab.federation.hub import db
from medlab.governance import metering, schema
from medlab.governance import service as gov
from medlab.web.base import Web


def routes(web: Web) -> APIRouter:
    """The operations page and its one action (revoking a token)."""
    pages = APIRouter(include_in_schema=False)
    hub = web.hub

    @pages.get("/operator")
    def operations(request: Request) -> Response:
        who = web.need(request, "user_list")
        web.need(request, "organisation_add")  # the operator's alone
        with hub.sessions() as s:
            organisations = list(
                s.scalars(select(schema.Organisation).order_by(schema.Organisation.name))
            )
            users = [
                gov.user_row(u) | {"disabled": u.disabled_at is not None}
                for u in s.scalars(select(schema.User).order_by(schema.User.name))
            ]
            tokens = [
                _token(t)
                for t in s.scalars(
                    select(schema.Token).order_by(schema.Token.user, schema.Token.created_at)
                )
            ]
            nodes = [node_row(n) for n in s.scalars(select(db.Node).order_by(db.Node.name))]
            projects = gov.projects(s, who)
            usage = {p["name"]: metering.totals(s, p["name"])["total"] for p in projects}
        return web.render(
            request,
            "operator.html",
            organisations=[{"name": o.name, "kind": o.kind} for o in organisations],
            users=users,
            tokens=tokens,
            nodes=nodes,
            projects=projects,
            usage=usage,
            kinds=metering.KINDS,
        )

    @pages.get("/operator/usage.csv")
    def usage_csv(request: Request) -> Response:
        who = web.need(request, "usage_csv")
        with hub.sessions() as s:
            text = metering.as_csv(s, [p["name"] for p in gov.projects(s, who)])
        headers = {"content-disposition": 'attachment; filename="usage.csv"'}
        return Response(text, media_type="text/csv", headers=headers)

    @pages.post("/operator/tokens/{token_id}/revoke")
    def revoke(
        request: Request, token_id: str, csrf: Annotated[str, Form(max_length=100)] = ""
    ) -> Response:
        who = web.check_form(request, csrf)
        web.need(request, "token_revoke")
        with db.transaction(hub.sessions) as s:
            gov.revoke_token(s, who, token_id)
        return RedirectResponse("/operator#tokens", status_code=303)

    return pages


def _token(t: schema.Token) -> dict[str, Any]:
    return {
        "id": t.id,
        "user": t.user,
        "scopes": sorted(t.scopes),
        "created_at": gov.iso(t.created_at),
        "expires_at": gov.iso(t.expires_at),
        "revoked_at": gov.iso(t.revoked_at),
    }


def node_row(n: db.Node) -> dict[str, Any]:
    """A node as the pages show it: name, organisation, key id, last seen, version."""
    return {
        "name": n.name,
        "organisation": n.organisation,
        "key_id": n.key_id,
        "last_seen": gov.iso(n.last_seen),
        "version": n.version,
    }
