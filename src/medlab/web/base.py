"""What every page shares: the signed-in user, the language, the templates and the refusals
rendered as pages. A page checks the same operation as the API endpoint it mirrors, so a
role or token scope the API refuses is refused here too."""

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from medlab import __version__
from medlab.federation.common.auth import same_secret
from medlab.federation.hub.service import Hub
from medlab.governance import access
from medlab.governance.access import HubError, Principal
from medlab.web import i18n

COOKIE = "medlab_session"
LANG_COOKIE = "medlab_lang"
# Plotly draws into style elements it creates, hence 'unsafe-inline' for styles only; no
# script runs but the app's own files, and nothing is fetched from anywhere but the hub.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
# What each role's workspace is, in the order the navigation shows them.
WORKSPACES: dict[str, list[tuple[str, str]]] = {
    "researcher": [("/projects", "Projects"), ("/studies", "Studies"), ("/build", "Study builder")],
    "steward": [("/steward", "Nodes"), ("/studies", "Studies")],
    "auditor": [("/audit", "Transparency log"), ("/studies", "Studies"), ("/verify", "Verify")],
    "operator": [("/operator", "Operations"), ("/projects", "Projects"), ("/studies", "Studies")],
}
HOME = {role: pages[0][0] for role, pages in WORKSPACES.items()}


class SignInNeeded(Exception):
    """No valid session: the page sends the browser to the sign-in form."""

    def __init__(self, then: str) -> None:
        super().__init__(then)
        self.then = then


def csrf_token(token: str) -> str:
    """The form token of a session: only a page served to the session's holder can carry it
    (the session token itself never reaches a page)."""
    return hmac.new(token.encode(), b"medlab web form", hashlib.sha256).hexdigest()[:32]


@dataclass
class Web:
    """The hub the pages read, and their templates (and, per study, the node log entries
    its evidence published: written once, read once)."""

    hub: Hub
    published: dict[str, list[tuple[str, int, dict[str, Any]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("medlab.web", "templates"),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["count"] = count
        self.env.filters["ratio"] = ratio
        self.env.filters["when"] = when
        self.env.globals["version"] = __version__

    # -- who is asking --------------------------------------------------------------

    def session(self, request: Request) -> tuple[Principal, str] | None:
        """The signed-in user and their token (None: no valid session), looked up once per
        request."""
        if not hasattr(request.state, "session"):
            request.state.session = self._session(request.cookies.get(COOKIE))
        found: tuple[Principal, str] | None = request.state.session
        return found

    def _session(self, token: str | None) -> tuple[Principal, str] | None:
        if not token:
            return None
        try:
            return self.hub.principal(token), token
        except HubError:
            return None

    def need(self, request: Request, operation: str | None = None) -> Principal:
        """The signed-in user, allowed ``operation`` as the API would allow it."""
        found = self.session(request)
        if found is None:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise SignInNeeded(path)
        who, _ = found
        request.state.principal = who
        if operation is not None:
            access.authorize(who, operation)
        return who

    def check_form(self, request: Request, csrf: str) -> Principal:
        """The signed-in user of a form post that carries the session's form token."""
        who = self.need(request)
        found = self.session(request)
        assert found is not None
        if not same_secret(csrf, csrf_token(found[1])):
            raise HubError(403, "forbidden", "the form is not from this session; reload it")
        return who

    # -- pages ----------------------------------------------------------------------

    def render(self, request: Request, template: str, code: int = 200, **ctx: Any) -> Response:
        """``template`` rendered for the request's user and language."""
        lang = language(request)
        found = self.session(request)
        who = None if found is None else found[0]
        page = self.env.get_template(template).render(
            _=i18n.translator(lang),
            lang=lang,
            who=who,
            csrf=None if found is None else csrf_token(found[1]),
            nav=[] if who is None else WORKSPACES.get(who.role, []),
            path=request.url.path,
            query=str(request.url.query),
            **ctx,
        )
        response = HTMLResponse(page, status_code=code)
        if request.query_params.get("lang") in i18n.LANGUAGES:
            response.set_cookie(LANG_COOKIE, lang, samesite="strict", httponly=True)
        response.headers.update(SECURITY_HEADERS)
        return response

    def refusal(self, request: Request, status: int, title: str, detail: str) -> Response:
        """A refusal as a page (the API answers problem+json for the same refusal)."""
        return self.render(request, "error.html", status, status=status, title=title, detail=detail)


def is_page(request: Request) -> bool:
    """Whether the request is for the web app (not the API)."""
    return not request.url.path.startswith("/api/")


def sign_in_redirect(then: str) -> Response:
    """To the sign-in form, coming back to ``then`` afterwards."""
    return RedirectResponse(f"/signin?next={quote(then, safe='')}", status_code=303)


def language(request: Request) -> str:
    """The page language: ``?lang=``, else the cookie, else the browser's preference."""
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
    if asked in i18n.LANGUAGES:
        return asked
    accept = request.headers.get("accept-language", "").lower()
    return "zh" if accept.startswith("zh") else "en"


def plotly_js() -> bytes:
    """Plotly's JavaScript as its Python package ships it (no CDN)."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()


def count(value: Any) -> str:
    """A released count (``–`` where the gate withheld it)."""
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def ratio(value: Any, digits: int = 2) -> str:
    """A ratio, estimate or proportion at ``digits`` decimals (``–`` where withheld)."""
    return "–" if value is None else f"{float(value):.{digits}f}"


def when(value: Any) -> Markup:
    """An ISO time as the pages show it (to the second, UTC), in a ``time`` element."""
    if not value:
        return Markup("–")
    text = str(value).replace("T", " ")[:19]
    return Markup('<time datetime="{}">{} UTC</time>').format(str(value), text)


Page = Callable[..., Response]
