"""The auditor's pages: the transparency logs as a searchable timeline, a study's evidence
chain, and bundle verification (the same code as ``medlab verify``, run by the hub on the
uploaded file)."""

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from medlab.federation.hub import db
from medlab.governance import audit
from medlab.governance.access import HubError
from medlab.ledger.evidence import Check, verify_bundle
from medlab.ledger.parties import digest
from medlab.web.base import Web

MAX_BUNDLE = 64 << 20
SHOWN = 500  # the timeline shows the newest events that match, at most this many


def routes(web: Web) -> APIRouter:
    """The timeline, the evidence chain and the verification page."""
    pages = APIRouter(include_in_schema=False)
    hub = web.hub

    @pages.get("/audit")
    def timeline(
        request: Request,
        q: str = "",
        user: str = "",
        project: str = "",
        study: str = "",
        source: str = "hub",
    ) -> Response:
        web.need(request, "audit")
        nodes = node_logs(web)
        if source not in nodes:
            source = "hub"
        if source == "hub":
            found = audit.events(
                hub.party.log_dir, user or None, project or None, study or None, None
            )
        else:
            found = [e for e in nodes[source] if not study or e.get("study_id") == study]
        needle = q.strip().lower()
        if needle:
            found = [e for e in found if needle in json.dumps(e, sort_keys=True).lower()]
        shown = list(reversed(found))[:SHOWN]
        return web.render(
            request,
            "audit.html",
            events=[_event(e) for e in shown],
            matched=len(found),
            limit=SHOWN,
            sources=["hub", *nodes],
            form={"q": q, "user": user, "project": project, "study": study, "source": source},
        )

    @pages.get("/studies/{study_id}/evidence")
    def chain(request: Request, study_id: str) -> Response:
        who = web.need(request, "study_file")
        status = hub.status(study_id, who)
        request.state.audit = {"project": status.project, "study_id": study_id}
        if "evidence.json" not in status.files:
            raise HubError(409, "no evidence yet", f"{study_id} is {status.state}: no evidence")
        evidence = json.loads(hub.file(study_id, "evidence.json", who))
        with hub.sessions() as s:
            study = s.get(db.Study, study_id)
            submitted = None if study is None else study.spec_hash
        return web.render(
            request, "evidence.html", study=status, chain=evidence_chain(evidence, submitted)
        )

    @pages.get("/verify")
    def verify_form(request: Request) -> Response:
        web.need(request, "audit")
        return web.render(request, "verify.html", checks=None, name=None, error=None)

    @pages.post("/verify")
    async def verify(
        request: Request,
        bundle: Annotated[UploadFile, File()],
        csrf: Annotated[str, Form(max_length=100)] = "",
        pin: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        web.check_form(request, csrf)
        web.need(request, "audit")
        name = (bundle.filename or "bundle.zip")[:200]
        data = await bundle.read(MAX_BUNDLE + 1)
        if not data or len(data) > MAX_BUNDLE:
            error = "Choose an evidence bundle (a zip of at most 64 MiB)."
            return web.render(request, "verify.html", 422, checks=None, name=name, error=error)
        trusted = known_keys(web) if pin else None
        checks = await run_in_threadpool(_verify, data, trusted)
        request.state.audit = {"file": name, "verified": all(c.ok for c in checks)}
        return web.render(request, "verify.html", checks=checks, name=name, error=None)

    return pages


def _verify(data: bytes, trusted: set[str] | None) -> list[Check]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.zip"
        path.write_bytes(data)
        return verify_bundle(path, trusted)


def known_keys(web: Web) -> set[str]:
    """The key ids this hub knows: its own and every registered node's."""
    with web.hub.sessions() as s:
        nodes = {n.key_id for n in s.query(db.Node)}
    return {web.hub.party.signer.key_id, *nodes}


def node_logs(web: Web) -> dict[str, list[dict[str, Any]]]:
    """The node log entries the nodes published with their releases (each completed
    study's evidence carries them), per node, oldest first. A study's evidence is written
    once, when it is combined, so each is read once and kept (``web.published``)."""
    with web.hub.sessions() as s:
        studies = s.scalars(
            select(db.StudyFile.study_id).where(db.StudyFile.name == "evidence.json")
        ).all()
        for study_id in studies:
            if study_id not in web.published:
                found = s.get(db.StudyFile, (study_id, "evidence.json"))
                assert found is not None
                web.published[study_id] = _published(study_id, json.loads(found.content))
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for study_id in studies:
        for node, index, row in web.published[study_id]:
            rows.setdefault(node, {})[index] = row
    return {node: [found[i] for i in sorted(found)] for node, found in sorted(rows.items())}


def _published(study_id: str, evidence: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """The node log entries one study's evidence carries: (node, index, entry as a row)."""
    out = []
    for node, info in (evidence.get("nodes") or {}).items():
        for item in (info.get("log") or {}).get("entries", []):
            entry = json.loads(item["entry"])
            statement = entry.get("statement") or {}
            row = {"index": item["index"], "study_id": study_id, **statement}
            row |= {k: v for k, v in entry.items() if k not in ("statement", "signature")}
            out.append((node, int(item["index"]), row))
    return out


def _event(e: dict[str, Any]) -> dict[str, Any]:
    """An event as the timeline shows it: its index, time, type, who, and the rest."""
    main = ("index", "time", "type")
    who = next((e[k] for k in audit.WHO if e.get(k)), None)
    rest = {k: v for k, v in e.items() if k not in main and k not in audit.WHO}
    return {
        "index": e.get("index"),
        "time": e.get("time"),
        "type": e.get("type"),
        "who": who,
        "rest": rest,
    }


def evidence_chain(evidence: dict[str, Any], submitted: str | None) -> dict[str, Any]:
    """A study's evidence as a chain: the spec hash, each node's signed statements (with
    whether the hub's statement names them), and the hub's combined result."""
    hub = evidence["hub"]
    signed = hub["statement"]["signed"]
    named = set(signed.get("node_statements", []))
    statements = []
    for release in evidence.get("releases", []):
        body = release["signed"].get("signed", {})
        statements.append(
            {
                "site": body.get("site"),
                "analysis": body.get("analysis"),
                "round": body.get("round"),
                "fingerprint": body.get("fingerprint"),
                "policy_hash": body.get("policy_hash"),
                "result_hash": body.get("result_hash"),
                "key_id": release["signed"].get("key_id"),
                "log_index": release.get("log_index"),
                "statement": digest(release["signed"]),
                "named": digest(release["signed"]) in named,
            }
        )
    return {
        "spec_hash": signed.get("spec_hash"),
        "submitted_spec_hash": submitted,
        "policy_hash": signed.get("policy_hash"),
        "code_version": signed.get("code_version"),
        "result_hash": signed.get("result_hash"),
        "hub_key_id": hub.get("key_id"),
        "hub_log_index": hub.get("log_index"),
        "statements": statements,
        "named": len(named),
    }
