"""The researcher's pages: projects and their agreements, studies with their live status
and released results, and the downloads (result files, the HTML report, the evidence
bundle). Each page checks the same operation as the API endpoint it mirrors."""

import json
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from medlab.federation.common.messages import StudyStatus
from medlab.federation.hub import db
from medlab.governance import metering
from medlab.governance import service as gov
from medlab.governance.access import HubError, Principal
from medlab.ledger.evidence import export_bundle
from medlab.studies.words import cohorts_in_words, releases_in_words
from medlab.web import i18n
from medlab.web.base import Web, language
from medlab.web.results import sections

LIVE = ("submitted", "running")  # a study page refreshes itself while the study is one


def _reload(request: Request) -> str:
    """The study page's own reload: after ``REFRESH_SECONDS``, the same page and query with
    ``live=1`` (the hub logs such reloads once a minute)."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "live"]
    return f"{REFRESH_SECONDS}; url=?{urlencode([*query, ('live', '1')])}"


REFRESH_SECONDS = 3
RESULT_FILES = ("results.json", "evidence.json", "spec.json")


def routes(web: Web) -> APIRouter:
    """Projects, studies and their downloads."""
    pages = APIRouter(include_in_schema=False)
    hub = web.hub

    @pages.get("/projects")
    def projects(request: Request) -> Response:
        who = web.need(request, "project_list")
        with hub.sessions() as s:
            found = gov.projects(s, who)
        return web.render(request, "projects.html", projects=found)

    @pages.get("/projects/{project}")
    def project(request: Request, project: str) -> Response:
        who = web.need(request, "project_get")
        request.state.audit = {"project": project[:100]}
        with hub.sessions() as s:
            row = gov.project_row(s, gov.visible_project(s, who, project))
            agreements = gov.agreements_of(s, who, project)
            lead = gov.project_role(s, who, project) == "lead"
            usage = metering.totals(s, project) if lead or who.role == "operator" else None
        studies = [st for st in hub.studies(who) if st["project"] == project]
        return web.render(
            request,
            "project.html",
            project=row,
            agreements=agreements,
            usage=usage,
            studies=studies,
        )

    @pages.get("/studies")
    def studies(request: Request) -> Response:
        who = web.need(request, "study_list")
        return web.render(request, "studies.html", studies=hub.studies(who))

    @pages.get("/studies/{study_id}")
    def study(request: Request, study_id: str, adjustment: str | None = None) -> Response:
        who = web.need(request, "study_get")
        status = hub.status(study_id, who)
        request.state.audit = {"project": status.project, "study_id": study_id}
        results, why = None, None
        if status.state == "completed" and "results.json" in status.files:
            try:
                results = json.loads(hub.file(study_id, "results.json", who))
            except HubError as exc:
                why = exc.detail
        _ = i18n.translator(language(request))
        shown = [] if results is None else sections(results, adjustment, _)
        rounds = max((t.round for t in status.tasks), default=0)
        with hub.sessions() as s:
            may_approve = status.state == "submitted" and _approver(s, who, status)
            row = s.get(db.Study, study_id)
            spec = {} if row is None else row.spec
        words = cohorts_in_words(spec) + releases_in_words(spec)
        latest = {t.node: t for t in status.tasks}  # tasks come ordered by node, round
        return web.render(
            request,
            "study.html",
            study=status,
            tasks=sorted(latest.values(), key=lambda t: t.node),
            rounds=rounds,
            figures=[name for name in status.files if name.endswith(".png")],
            results=results,
            why=why,
            sections=shown,
            charts=[c for sec in shown for c in sec.charts],
            refresh=_reload(request) if status.state in LIVE else None,
            refresh_seconds=REFRESH_SECONDS,
            may_approve=may_approve,
            words=words,
        )

    @pages.post("/studies/{study_id}/approve")
    async def approve(
        request: Request, study_id: str, csrf: Annotated[str, Form(max_length=100)] = ""
    ) -> Response:
        who = web.check_form(request, csrf)
        web.need(request, "study_approve")
        status = await run_in_threadpool(hub.approve, who, study_id)
        request.state.audit = {"project": status.project, "study_id": study_id}
        return RedirectResponse(f"/studies/{study_id}", status_code=303)

    @pages.get("/studies/{study_id}/files/{name}")
    def download(request: Request, study_id: str, name: str) -> Response:
        who = web.need(request, "study_file")
        request.state.audit = {"study_id": study_id, "file": name[:200]}
        content = hub.file(study_id, name, who)
        # A download, never a page of this site: the report's own HTML runs sandboxed.
        headers = {
            "content-disposition": f'attachment; filename="{_safe(name)}"',
            "content-security-policy": "sandbox",
            "x-content-type-options": "nosniff",
        }
        kind = "text/html" if name.endswith(".html") else "application/octet-stream"
        return Response(content, media_type=kind, headers=headers)

    @pages.get("/studies/{study_id}/bundle.zip")
    async def bundle(request: Request, study_id: str) -> Response:
        who = web.need(request, "study_file")
        request.state.audit = {"study_id": study_id, "file": "bundle.zip"}

        def pack() -> bytes:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                for name in RESULT_FILES:
                    (out / name).write_bytes(hub.file(study_id, name, who))
                export_bundle(out, out / "bundle.zip")
                return (out / "bundle.zip").read_bytes()

        content = await run_in_threadpool(pack)
        headers = {"content-disposition": f'attachment; filename="{_safe(study_id)}-evidence.zip"'}
        return Response(content, media_type="application/zip", headers=headers)

    return pages


def _approver(s: Session, who: Principal, status: StudyStatus) -> bool:
    """Whether ``who`` may still approve the submitted study (the rule of
    :func:`medlab.governance.service.approval_kind`, one approval of each kind)."""
    try:
        kind = gov.approval_kind(s, who, status.researcher, status.project)
    except HubError:
        return False
    return all(a["kind"] != kind and a["user"] != who.name for a in status.approvals)


def _safe(name: str) -> str:
    """A file name fit for a Content-Disposition header."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:200]
