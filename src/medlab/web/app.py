"""The web app's routes: sign-in and out, each role's home, the static files, and every
workspace's pages (:mod:`medlab.web.researcher`, :mod:`medlab.web.auditor`,
:mod:`medlab.web.operator`, :mod:`medlab.web.steward`, :mod:`medlab.web.builder`,
:mod:`medlab.web.cohort`)."""

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from medlab.federation.hub.service import Hub
from medlab.governance.access import HubError
from medlab.web import auditor, builder, cohort, operator, researcher, steward
from medlab.web.base import (
    COOKIE,
    HOME,
    SECURITY_HEADERS,
    SignInNeeded,
    Web,
    plotly_js,
    sign_in_redirect,
)

STATIC = {"app.css": "text/css", "app.js": "text/javascript"}


def install(app: FastAPI, hub: Hub) -> Web:
    """Serve the web app on ``app`` under ``/``; returns the pages' shared state (the hub's
    error handlers render refusals of page requests with it)."""
    web = Web(hub)
    app.include_router(routes(web))
    app.include_router(researcher.routes(web))
    app.include_router(auditor.routes(web))
    app.include_router(operator.routes(web))
    app.include_router(steward.routes(web))
    app.include_router(builder.routes(web))
    app.include_router(cohort.routes(web))

    @app.exception_handler(SignInNeeded)
    async def _sign_in(_: Request, exc: SignInNeeded) -> Response:
        return sign_in_redirect(exc.then)

    return web


def routes(web: Web) -> APIRouter:
    """Sign-in, sign-out, the home page and the static files."""
    pages = APIRouter(include_in_schema=False)
    scripts = {"plotly.min.js": plotly_js()}
    files = resources.files("medlab.web") / "static"
    own = {name: (files / name).read_bytes() for name in STATIC}

    @pages.get("/static/{name}")
    def static(name: str) -> Response:
        if name in own:
            body, kind = own[name], STATIC[name]
        elif name in scripts:
            body, kind = scripts[name], "text/javascript"
        else:
            raise HubError(404, "not found", f"no static file {name}")
        headers = {"cache-control": "max-age=3600", "x-content-type-options": "nosniff"}
        return Response(body, media_type=kind, headers=headers)

    @pages.get("/")
    def home(request: Request) -> Response:
        who = web.need(request)
        return RedirectResponse(HOME.get(who.role, "/studies"), status_code=303)

    @pages.get("/signin")
    def sign_in_form(request: Request, next: str = "/") -> Response:
        return web.render(request, "signin.html", then=_local(next), error=None)

    @pages.post("/signin")
    async def sign_in(
        request: Request,
        token: Annotated[str, Form(max_length=500)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/",
    ) -> Response:
        token = token.strip()
        error = None if token else "Give your token."
        if token:
            try:
                await run_in_threadpool(web.hub.principal, token)
            except HubError:
                error = "That token is unknown, expired or revoked."
        if error:
            return web.render(request, "signin.html", 401, then=_local(next), error=error)
        response = RedirectResponse(_local(next), status_code=303)
        # The token is the session: HttpOnly (no script reads it), SameSite=Strict (no other
        # site's page sends it). Over HTTPS a deployment adds Secure at its proxy.
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        response.headers.update(SECURITY_HEADERS)
        return response

    @pages.post("/signout")
    def sign_out(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
        web.check_form(request, csrf)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return pages


def _local(target: str) -> str:
    """``target`` if it is a path on this site (never a redirect elsewhere), else ``/``."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
