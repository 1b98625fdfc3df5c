"""The node's local console (``medlab node console STORE``): the steward's page at the node,
on 127.0.0.1 only, where a waiting task is approved or refused with a click instead of a
command. It reads the node's own record (the task's spec and cohorts in words, what each
analysis releases, the released payload under result review, the node's policy in words)
and decides through :mod:`medlab.federation.node.decisions`, as the commands do.

Only the holder of the console's token, printed when it starts and never stored, signs in
(a cookie, HttpOnly and SameSite=Strict); every form carries a token derived from it; a
request naming another host than the loopback address is refused (DNS rebinding); pages
carry a strict Content-Security-Policy and run no script. While it runs, its address is in
``STORE.console.json``, which the agent puts in the node's profile so that the hub's steward
page links to it.
"""

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape

from medlab.cdm.store import store_lock
from medlab.errors import MedlabError, StoreBusy
from medlab.federation.common.auth import same_secret
from medlab.federation.node import decisions
from medlab.federation.node.inbox import Inbox
from medlab.privacy.node_policy import describe, node_policy

COOKIE = "medlab_console"
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'none'; style-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
CSS = """body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1rem;
color:#1b1b1b}h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
section.task{border:1px solid #8a8a8a;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
pre{white-space:pre-wrap;background:#f3f3f3;padding:.5rem}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ccc;padding:.25rem .5rem;text-align:left}
button{font:inherit;padding:.3rem .9rem;margin:.3rem 0}button.primary{background:#0b5cad;
color:#fff;border:1px solid #0b5cad}textarea{width:100%;font:inherit}
.error{color:#a40000;font-weight:600}:focus{outline:3px solid #b8500b}"""
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><link rel="stylesheet" href="/console.css"></head><body>
<header><h1>{{ title }}</h1><p>{{ store }}</p></header><main>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
{% if notice %}<p role="status">{{ notice }}</p>{% endif %}
{% block main %}{% endblock %}</main></body></html>"""
SIGNIN = """{% extends "page" %}{% block main %}
<form method="post" action="/signin"><label for="token">Console token (printed when the
console started)</label><br><input id="token" name="token" type="password" size="50"
autocomplete="off"> <button class="primary" type="submit">Sign in</button></form>
{% endblock %}"""
TASKS = """{% extends "page" %}{% block main %}
<h2>Waiting for you</h2>
{% for t in waiting %}
<section class="task" aria-labelledby="t-{{ loop.index }}">
<h3 id="t-{{ loop.index }}">{{ t.study }} <small>({{ t.task_id }}, {{ t.state }})</small></h3>
<p>Researcher {{ t.researcher }}, project {{ t.project or "–" }}, received {{ t.received_at }}</p>
<pre>{{ t.cohorts|join("\\n") }}</pre><pre>{{ t.analyses|join("\\n") }}</pre>
{% if t.released is not none %}<details><summary>The released payload (what would leave)
</summary><pre>{{ t.released|tojson(indent=2) }}</pre></details>{% endif %}
<form method="post" action="/tasks/{{ t.task_id }}/approve">
<input type="hidden" name="csrf" value="{{ csrf }}">
<button class="primary" type="submit">Approve {{ "the release" if t.state ==
"awaiting_result_review" else "the run" }} of {{ t.task_id }}</button></form>
<form method="post" action="/tasks/{{ t.task_id }}/refuse">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label for="reason-{{ loop.index }}">Reason for refusing (sent to the researcher)</label>
<textarea id="reason-{{ loop.index }}" name="reason" rows="2" maxlength="2000"></textarea>
<button type="submit">Refuse {{ t.task_id }}</button></form>
</section>
{% else %}<p>No task waits for a decision.</p>{% endfor %}
<h2>Every task</h2>
<table><thead><tr><th scope="col">Task</th><th scope="col">Study</th><th scope="col">State
</th><th scope="col">Researcher</th><th scope="col">Received</th></tr></thead><tbody>
{% for t in tasks %}<tr><td>{{ t.task_id }}</td><td>{{ t.study }}</td><td>{{ t.state }}</td>
<td>{{ t.researcher }}</td><td>{{ t.received_at }}</td></tr>{% endfor %}</tbody></table>
<h2>The node's release policy</h2><pre>{{ policy|join("\\n") }}</pre>
{% endblock %}"""


def console_file(store: Path) -> Path:
    """Where a running console leaves its address (for the agent's profile)."""
    return store.with_suffix(".console.json")


def running_at(store: Path) -> str | None:
    """The address of the console running for ``store``, or None."""
    try:
        found = json.loads(console_file(store).read_text())
        os.kill(int(found["pid"]), 0)  # still running (an error otherwise)
        url = str(found["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if url.startswith(tuple(f"http://{h}:" for h in LOOPBACK)) else None


def form_token(token: str) -> str:
    """The form token of the console's session."""
    return hmac.new(token.encode(), b"medlab node console form", hashlib.sha256).hexdigest()


def create_console(store: Path, token: str, by: str) -> FastAPI:
    """The console's app for ``store``: only ``token``'s holder signs in; decisions are
    logged as made by ``by``."""
    app = FastAPI(title="medlab node console", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(
        loader=DictLoader({"page": PAGE, "signin": SIGNIN, "tasks": TASKS}),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
    )
    title = f"medlab node console: {store.stem}"

    def render(name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        ctx = {"title": title, "store": str(store), "error": None, "notice": None, **ctx}
        return HTMLResponse(env.get_template(name).render(**ctx), code, HEADERS)

    def signed_in(request: Request) -> bool:
        return same_secret(request.cookies.get(COOKIE, ""), token)

    @app.middleware("http")
    async def loopback_only(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if host not in LOOPBACK:
            return PlainTextResponse("the console answers on the loopback address only", 421)
        answer: Response = await call_next(request)
        return answer

    @app.get("/console.css")
    def css() -> Response:
        return Response(CSS, media_type="text/css", headers=HEADERS)

    @app.get("/signin", response_class=HTMLResponse)
    def signin_page() -> Response:
        return render("signin")

    @app.post("/signin")
    def signin(token_given: str = Form("", alias="token")) -> Response:
        if not same_secret(token_given, token):
            return render("signin", 401, error="not the console's token")
        answer = RedirectResponse("/", 303, HEADERS)
        answer.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return answer

    policy_words: list[str] = []  # the last read, for while a running task holds the store

    def policy() -> list[str]:
        """The node's policy in words; never waits for a store a running task holds."""
        try:
            with store_lock(store, timeout=0):
                policy_words[:] = describe(node_policy(store).policy)
        except StoreBusy:
            if not policy_words:
                return ["(a running task holds the store: the policy shows once it is free)"]
        return list(policy_words)

    def page(notice: str | None = None, error: str | None = None, code: int = 200) -> Response:
        tasks = Inbox(store).all()
        waiting = [decisions.in_full(t) for t in tasks if t.state in decisions.WAITING]
        return render(
            "tasks",
            code,
            waiting=waiting,
            tasks=[decisions.summary(t) for t in reversed(tasks)],
            policy=policy(),
            csrf=form_token(token),
            notice=notice,
            error=error,
        )

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        if not signed_in(request):
            return RedirectResponse("/signin", 303, HEADERS)
        return page()

    def decide(request: Request, csrf: str, act: Any) -> Response:
        if not signed_in(request):
            return RedirectResponse("/signin", 303, HEADERS)
        if not same_secret(csrf, form_token(token)):
            return page(error="the form is not from this console; reload it", code=403)
        try:
            notice = act()
        except MedlabError as exc:
            return page(error=str(exc), code=409)
        return page(notice=notice)

    @app.post("/tasks/{task_id}/approve", response_class=HTMLResponse)
    def approve(request: Request, task_id: str, csrf: str = Form("")) -> Response:
        def act() -> str:
            what = decisions.approve(store, task_id, by)
            return f"approved: {task_id} may {what} (the agent goes on)"

        return decide(request, csrf, act)

    @app.post("/tasks/{task_id}/refuse", response_class=HTMLResponse)
    def refuse(
        request: Request, task_id: str, csrf: str = Form(""), reason: str = Form("")
    ) -> Response:
        def act() -> str:
            decisions.refuse(store, task_id, reason, by)
            return f"refused: {task_id}"

        return decide(request, csrf, act)

    return app
