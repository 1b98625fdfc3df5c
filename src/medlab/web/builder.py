"""The researcher's study builder: a study spec (JSON or YAML, cohort definitions inline)
uploaded or pasted, a cohort imported from an ATLAS/Circe JSON file, checked as the hub
checks a submission, with each problem shown at its field, and submitted in a project.

A researcher who signs submissions (a registered key) cannot submit from the page: the key
never leaves their machine, so the page says to use ``medlab submit --key``.
"""

import json
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from medlab.cohorts.circe import from_circe
from medlab.cohorts.words import describe
from medlab.errors import MedlabError
from medlab.governance import schema
from medlab.governance import service as gov
from medlab.governance.access import HubError
from medlab.inputs import line_of, parse_document
from medlab.studies.spec import spec_from_document
from medlab.web import analysis_form
from medlab.web.base import Web

MAX_UPLOAD = 2 * 1024 * 1024  # a spec or a Circe file


class Problem(Exception):
    """A problem with one field of the form (``field``), shown next to it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def routes(web: Web) -> APIRouter:
    """The builder's form and its submission."""
    pages = APIRouter(include_in_schema=False)
    hub = web.hub

    def form(request: Request, code: int = 200, **ctx: Any) -> Response:
        return web.render(request, "build.html", code, **form_context(web, request, **ctx))

    @pages.get("/build")
    def build(request: Request) -> Response:
        return form(request)

    @pages.post("/build")
    async def check_or_submit(
        request: Request,
        csrf: Annotated[str, Form(max_length=100)] = "",
        action: Annotated[str, Form(max_length=20)] = "check",
        project: Annotated[str, Form(max_length=100)] = "",
        min_sites: Annotated[str, Form(max_length=10)] = "1",
        hours: Annotated[str, Form(max_length=10)] = "24",
        spec_text: Annotated[str, Form(max_length=MAX_UPLOAD)] = "",
        spec_file: Annotated[UploadFile | None, File()] = None,
        circe_file: Annotated[UploadFile | None, File()] = None,
        circe_name: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        who = web.check_form(request, csrf)
        web.need(request, "study_submit")
        values = {"project": project, "min_sites": min_sites, "hours": hours, "circe_name": ""}
        errors: dict[str, str] = {}
        text = spec_text
        posted = await request.form()
        given = {k: [v for v in posted.getlist(k) if isinstance(v, str)] for k in posted}
        kind = (given.get("analysis_type") or [""])[0]
        adding = action in ("analysis_type", "add_analysis") and kind in analysis_form.MODELS
        shown: dict[str, Any] = {}
        if adding:
            keep = given if action == "add_analysis" else {}
            shown = {"analysis": analysis_form.form_of(kind), "analysis_values": keep}
        if action == "analysis_type":
            return form(request, values=values, spec_text=text, **shown)
        try:
            uploaded = await _read(spec_file, "spec_file")
            if uploaded is not None:
                text = uploaded[1]
            document, yaml_syntax = _document(text, uploaded[0] if uploaded else "the spec")
            circe = await _read(circe_file, "circe_file")
            if circe is not None:
                document = _with_circe(document, circe, circe_name.strip())
                text = _as_yaml(document) if yaml_syntax or not text.strip() else _as_json(document)
            sites = _whole(min_sites, "min_sites", 1, 1000)
            deadline = _whole(hours, "hours", 1, 30 * 24) * 3600
        except Problem as p:
            errors[p.field] = p.message
            return form(request, 422, values=values, errors=errors, spec_text=text, **shown)
        if adding:  # the add_analysis action (analysis_type returned above)
            added, problems_at = _add_analysis(document, kind, given)
            if problems_at:
                shown["analysis_errors"] = problems_at
                return form(request, 422, values=values, spec_text=text, **shown)
            document = added
            text = _as_yaml(document) if yaml_syntax else _as_json(document)
            shown = {}
        spec, problems = spec_from_document(document)
        if spec is None:
            errors["spec_text"] = "; ".join(
                f"{path}{_at_line(text, path)}: {message}" for path, message in problems[:5]
            )
            return form(request, 422, values=values, errors=errors, spec_text=text)
        cohorts = [
            {"id": c.id, "name": c.name, "words": describe(c.definition)}
            for c in spec.cohorts
            if c.definition is not None
        ]
        if action != "submit":
            return form(request, values=values, spec_text=text, cohorts=cohorts, checked=True)
        body = {
            "spec": document,
            "project": project or None,
            "min_sites": sites,
            "deadline_seconds": deadline,
        }
        try:
            study_id = await run_in_threadpool(hub.submit, who, body)
        except HubError as exc:
            field = (
                "project" if exc.status in (403, 404) or "project" in exc.detail else "spec_text"
            )
            errors[field] = exc.detail
            return form(
                request, exc.status, values=values, errors=errors, spec_text=text, cohorts=cohorts
            )
        request.state.audit = {"project": project[:100], "study_id": study_id}
        return RedirectResponse(f"/studies/{study_id}", status_code=303)

    return pages


def _add_analysis(
    document: dict[str, Any], kind: str, given: dict[str, list[str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec with the analysis the form says appended, or the problems at the form's
    fields (the spec is then left as it was)."""
    analysis, problems = analysis_form.analysis_from(kind, given)
    if problems:
        return document, problems
    index = len(document.get("analyses") or [])
    candidate = document | {"analyses": [*(document.get("analyses") or []), analysis]}
    _, found = spec_from_document(candidate)
    mine: dict[str, str] = {}
    for path, message in found:
        field = analysis_form.field_of(path, index)
        if field is None and f"analyses[{index}]" in message:  # a check of the whole spec
            field = "analysis"
        if field is not None:
            mine.setdefault(field, f"{path}: {message}")
    return (document, mine) if mine else (candidate, {})


def _cohorts_of(text: str) -> list[dict[str, Any]]:
    """The cohorts (id and name) of the spec in the text field, as far as it reads."""
    try:
        document, _ = _document(text, "the spec")
    except Problem:
        return []
    cohorts = document.get("cohorts")
    if not isinstance(cohorts, list):
        return []
    return [
        {"id": c.get("id"), "name": str(c.get("name", ""))[:100]}
        for c in cohorts
        if isinstance(c, dict) and isinstance(c.get("id"), int)
    ]


def form_context(web: Web, request: Request, spec_text: str = "", **ctx: Any) -> dict[str, Any]:
    """What the builder's page shows: the caller's projects, whether they sign, the form's
    values and problems (``spec_text``: the spec in the text field)."""
    who = web.need(request, "study_submit")
    with web.hub.sessions() as s:
        names = [p["name"] for p in gov.projects(s, who)]
        projects = [name for name in names if gov.project_role(s, who, name)]
        user = s.get(schema.User, who.name)
        signs = user is not None and user.public_key is not None
    values = {"project": projects[0] if projects else "", "min_sites": "1", "hours": "24"}
    values |= ctx.pop("values", {})
    shown = {"errors": {}, "cohorts": [], "checked": False, "analysis": None} | ctx
    shown.setdefault("analysis_values", {})
    shown.setdefault("analysis_errors", {})
    shown["analysis_types"] = list(analysis_form.MODELS)
    shown["spec_cohorts"] = _cohorts_of(spec_text)
    return {"projects": projects, "signs": signs, "values": values, "spec_text": spec_text} | shown


async def _read(upload: UploadFile | None, field: str) -> tuple[str, str] | None:
    """An uploaded file's name and text (None: no file chosen)."""
    if upload is None or not upload.filename:
        return None
    data = await upload.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise Problem(field, f"{upload.filename}: larger than {MAX_UPLOAD // 1024} KiB")
    try:
        return upload.filename[:200], data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(field, f"{upload.filename}: not UTF-8 text (byte {exc.start})") from None


def _document(text: str, source: str) -> tuple[Any, bool]:
    """The spec document in ``text`` (YAML unless it starts like JSON)."""
    if not text.strip():
        raise Problem("spec_text", "give a study spec: upload a file or paste it here")
    yaml_syntax = not text.lstrip().startswith(("{", "["))
    try:
        data = parse_document(text, source, yaml_syntax, MedlabError)
    except MedlabError as exc:
        raise Problem("spec_text", str(exc)) from None
    if not isinstance(data, dict):
        raise Problem("spec_text", f"{source}: a study spec is a mapping (name, cohorts, ...)")
    return data, yaml_syntax


def _with_circe(document: dict[str, Any], circe: tuple[str, str], name: str) -> dict[str, Any]:
    """The spec with a cohort imported from an ATLAS/Circe JSON file: it replaces the
    cohort of the same name, else it is added with the next id."""
    source, text = circe
    try:
        definition = from_circe(parse_document(text, source, False, MedlabError), source)
    except MedlabError as exc:
        raise Problem("circe_file", str(exc)) from None
    cohorts = [c for c in document.get("cohorts") or [] if isinstance(c, dict)]
    label = name or source.rsplit(".", 1)[0]
    found = next((c for c in cohorts if c.get("name") == label), None)
    entry = {"definition": definition.to_data()}
    if found is not None:
        found.pop("file", None)
        found.update(entry)
    else:
        ids = [c["id"] for c in cohorts if isinstance(c.get("id"), int)]
        cohorts.append({"id": max(ids, default=0) + 1, "name": label, **entry})
    return document | {"cohorts": cohorts}


def _whole(text: str, field: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise Problem(field, f"a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise Problem(field, f"a whole number from {low} to {high}")
    return value


def _at_line(text: str, path: str) -> str:
    """`` (line N)`` of the JSON path ``$.a[0].b`` in the spec's text, where found."""
    parts: list[int | str] = []
    for token in path.lstrip("$").replace("[", ".").replace("]", "").split("."):
        if token:
            parts.append(int(token) if token.isdigit() else token)
    line = line_of(text, parts)
    return "" if line is None else f" (line {line})"


def _as_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _as_yaml(document: dict[str, Any]) -> str:
    return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
