"""The hub's HTTP API (FastAPI). Users send a bearer token; nodes sign each request.

Every governed endpoint names its roles (:data:`medlab.governance.access.OPERATIONS`), and
every call that reads or changes anything is an ``api`` event in the hub's transparency log:
who, which operation, the path, the outcome (never a result value).

Errors are ``application/problem+json`` (RFC 9457) with ``title``, ``status``, ``detail`` and,
for invalid input, ``errors`` naming each JSON path; an unforeseen error answers 500 with no
internals. The OpenAPI document is at ``/openapi.json``.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlab import __version__
from medlab.errors import UsageError
from medlab.federation.common import auth
from medlab.federation.common.messages import PROTOCOL, StudyStatus, json_path
from medlab.federation.hub import profiles
from medlab.federation.hub.governed import PROBLEMS, doc, gate, routes
from medlab.federation.hub.service import Hub, HubError
from medlab.governance.access import Principal
from medlab.inputs import parse_document
from medlab.web import install, is_page

UNAUDITED = frozenset({"/api/v1/health", "/api/v1/hub-key"})
# A running study's page reloads itself every few seconds (``?live=1``): one ``web`` event per
# user and page a minute says as much to an auditor as one per reload.
LIVE_EVERY_S = 60.0
MAX_BODY = 64 << 20  # a study's released output is aggregates: 64 MiB is already absurd
MAX_WAIT = 30.0


def _problem(status: int, title: str, detail: str, errors: list[Any] | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def create_app(hub: Hub, settle_every: float = 1.0) -> FastAPI:
    """The hub's API over ``hub``; a background loop settles deadlines every few seconds."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def settle() -> None:
            while True:
                await asyncio.sleep(settle_every)
                with contextlib.suppress(Exception):  # a settling error waits for the next
                    await run_in_threadpool(hub.settle)

        loop = asyncio.create_task(settle())
        try:
            yield
        finally:
            loop.cancel()

    app = FastAPI(
        title="medlab hub",
        version=__version__,
        lifespan=lifespan,
        description="The medlab hub: federation and authorized operation. Roles and token "
        "scopes are given per endpoint; errors are application/problem+json.",
    )
    allow = gate(hub)
    web = install(app, hub)
    live_logged: dict[tuple[str | None, str], float] = {}  # (user, page): last logged reload

    def quiet_reload(request: Request, who: Principal | None, status: int) -> bool:
        """Whether this is a page's own reload logged less than a minute ago."""
        live = request.query_params.get("live") == "1"
        if not live or request.method != "GET" or status != 200:
            return False
        key, now = (None if who is None else who.name, request.url.path), time.monotonic()
        if now - live_logged.get(key, -LIVE_EVERY_S) < LIVE_EVERY_S:
            return True
        if len(live_logged) > 10_000:
            live_logged.clear()
        live_logged[key] = now
        return False

    @app.middleware("http")
    async def audited(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        path = request.url.path
        who: Principal | None = getattr(request.state, "principal", None)
        noted = getattr(request.state, "audit", {})
        if is_page(request) and not path.startswith("/static/"):
            if quiet_reload(request, who, response.status_code):
                return response  # pages only: an API call is an event every time
            # Every page served is a ``web`` event: who, the path, the outcome.
            fields = {
                "user": None if who is None else who.name,
                "role": None if who is None else who.role,
                "method": request.method,
                "path": path[:300],
                "status": response.status_code,
                **{k: v for k, v in noted.items() if v is not None},
            }
            await run_in_threadpool(hub.party.log, "web", **fields)
        elif path.startswith("/api/v1/") and path not in UNAUDITED and "/node/" not in path:
            route = request.scope.get("route")
            params = request.scope.get("path_params") or {}
            known = {k: str(params[k])[:100] for k in ("project", "study_id") if k in params}
            if "study_id" in known and "project" not in known | noted:  # not looked up twice
                project = await run_in_threadpool(hub.project_of, known["study_id"])
                known |= {"project": project} if project else {}
            fields = {
                "user": None if who is None else who.name,
                "role": None if who is None else who.role,
                "operation": getattr(route, "name", None),
                "method": request.method,
                "path": path[:300],
                "status": response.status_code,
                **known,
                **noted,
            }
            await run_in_threadpool(hub.party.log, "api", **fields)
        return response

    # A page request gets its refusal as a page; the API answers problem+json.
    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> Response:
        if is_page(request):
            if exc.status == 404:  # a page does not say whether what you may not see exists
                return web.refusal(request, 403, "forbidden", exc.detail)
            return web.refusal(request, exc.status, exc.title, exc.detail)
        return _problem(exc.status, exc.title, exc.detail, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"path": json_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        detail = f"{errors[0]['path']}: {errors[0]['message']}" if errors else "invalid request"
        if is_page(request):
            return web.refusal(request, 422, "invalid request", detail)
        return _problem(422, "invalid request", detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if is_page(request):
            return web.refusal(request, exc.status_code, "error", str(exc.detail))
        return _problem(exc.status_code, "error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        if is_page(request):
            detail = "the hub could not complete the request"
            return web.refusal(request, 500, "internal error", detail)
        return _problem(500, "internal error", "the hub could not complete the request")

    async def body_of(request: Request) -> bytes:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            raise HubError(413, "too large", f"a request body is at most {MAX_BODY} bytes")
        data = await request.body()
        if len(data) > MAX_BODY:
            raise HubError(413, "too large", f"a request body is at most {MAX_BODY} bytes")
        return data

    async def signed_node(request: Request) -> tuple[str, bytes]:
        h = request.headers
        missing = [k for k in (auth.NODE, auth.TIMESTAMP, auth.NONCE, auth.SIGNATURE) if k not in h]
        if missing:
            hub.party.log("request_refused", who="node", reason=f"missing {missing[0]}")
            raise HubError(401, "unauthenticated", f"a node request carries {missing[0]}")
        body = await body_of(request)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signed = auth.Signed(h[auth.NODE], h[auth.TIMESTAMP], h[auth.NONCE], h[auth.SIGNATURE])
        name = await run_in_threadpool(hub.node, request.method, target, body, signed)
        return name, body

    @app.get("/api/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__, "protocol": PROTOCOL}

    @app.get("/api/v1/hub-key")
    def hub_key() -> dict[str, str]:
        signer = hub.party.signer
        return {"key_id": signer.key_id, "public_key": signer.public_pem}

    @app.post("/api/v1/studies", status_code=201, **doc("study_submit"))
    async def submit(
        request: Request, who: Annotated[Principal, allow("study_submit")]
    ) -> dict[str, str]:
        data = await _json(await body_of(request))
        if isinstance(data, dict) and isinstance(data.get("project"), str):
            request.state.audit = {"project": data["project"][:100]}
        study_id = await run_in_threadpool(hub.submit, who, data)
        request.state.audit = {**getattr(request.state, "audit", {}), "study_id": study_id}
        return {"study_id": study_id}

    @app.get("/api/v1/studies", **doc("study_list"))
    def studies(who: Annotated[Principal, allow("study_list")]) -> list[dict[str, Any]]:
        return hub.studies(who)

    @app.get("/api/v1/studies/{study_id}", **doc("study_get"))
    def status(
        request: Request, study_id: str, who: Annotated[Principal, allow("study_get")]
    ) -> StudyStatus:
        found = hub.status(study_id, who)
        request.state.audit = {"project": found.project, "study_id": study_id}
        return found

    @app.get("/api/v1/studies/{study_id}/files/{name}", **doc("study_file"))
    def file(
        request: Request, study_id: str, name: str, who: Annotated[Principal, allow("study_file")]
    ) -> Response:
        request.state.audit = {"study_id": study_id, "file": name[:200]}
        return Response(hub.file(study_id, name, who), media_type="application/octet-stream")

    app.include_router(routes(hub))

    @app.get("/api/v1/node/tasks", responses=PROBLEMS, summary="A node's open tasks (signed).")
    async def tasks(request: Request, wait: float = 0.0) -> dict[str, Any]:
        node, _ = await signed_node(request)
        until = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            found = await run_in_threadpool(hub.tasks_for, node)
            if any(t["state"] == "pending" for t in found) or time.monotonic() >= until:
                return {"tasks": found}
            await asyncio.sleep(0.2)

    @app.post(
        "/api/v1/node/tasks/{task_id}", responses=PROBLEMS, summary="A node's report (signed)."
    )
    async def report(task_id: str, request: Request) -> dict[str, str]:
        node, body = await signed_node(request)
        state = await run_in_threadpool(hub.report, node, task_id, await _json(body))
        return {"state": state}

    @app.post("/api/v1/node/profile", responses=PROBLEMS, summary="A node's profile (signed).")
    async def profile(request: Request) -> dict[str, str]:
        node, body = await signed_node(request)
        await run_in_threadpool(profiles.record, hub.sessions, node, await _json(body))
        return {"state": "recorded"}

    return app


async def _json(body: bytes) -> Any:
    """The request body as JSON, with the input rules of every medlab document."""
    try:
        return parse_document(body.decode("utf-8"), "the request body", False, UsageError)
    except UnicodeDecodeError as exc:
        raise HubError(400, "not JSON", f"the body is not UTF-8 (byte {exc.start})") from None
    except UsageError as exc:
        raise HubError(400, "not JSON", str(exc)) from None
