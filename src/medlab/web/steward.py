"""The steward's pages, read from what each node's agent reports to the hub (its profile:
policy, data-quality checks, budgets, open tasks, newest log entries) and from the hub's own
records (its tasks and agreements). Deciding on a task stays a node-side action: a waiting
task's page shows the exact command to run at the node.

A steward sees the nodes of their organisation; the operator and auditors see every node.
"""

import shlex
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from medlab.federation.hub import db, profiles
from medlab.governance import schema
from medlab.governance import service as gov
from medlab.governance.access import HubError, Principal
from medlab.studies.words import cohorts_in_words, releases_in_words
from medlab.web import charts, i18n
from medlab.web.base import Web, language
from medlab.web.operator import node_row
from medlab.web.results import Chart

WAITING = ("awaiting_approval", "awaiting_result_review")


def routes(web: Web) -> APIRouter:
    """The list of nodes and each node's page."""
    pages = APIRouter(include_in_schema=False)
    hub = web.hub

    @pages.get("/steward")
    def nodes(request: Request) -> Response:
        who = web.need(request, "node_list")
        with hub.sessions() as s:
            shown = [_summary(s, n) for n in _nodes(s, who)]
        return web.render(request, "steward_nodes.html", nodes=shown)

    @pages.get("/steward/{name}")
    def node(request: Request, name: str) -> Response:
        who = web.need(request, "node_list")
        request.state.audit = {"node": name[:100]}
        _ = i18n.translator(language(request))
        with hub.sessions() as s:
            row = next((n for n in _nodes(s, who) if n.name == name), None)
            if row is None:
                raise HubError(404, "not found", f"no node {name} among yours")
            history = profiles.history(s, name)
            profile = history[0].profile if history else None
            waiting = _waiting(s, name, profile, who)
            agreements = list(
                s.scalars(
                    select(schema.Agreement)
                    .where(schema.Agreement.node == name)
                    .order_by(schema.Agreement.project, schema.Agreement.created_at)
                )
            )
            budgets = _budgets(profile, agreements)
            facts = node_row(row) | (
                {}
                if not history
                else {
                    "reported_at": gov.iso(history[0].received_at),
                    "confirmed_at": gov.iso(history[0].seen_at),
                }
            )
        trend = _trend(history)
        shown_charts = (
            [Chart("dq-trend", _("Failed checks per snapshot"), charts.dq_trend(trend, _))]
            if trend
            else []
        )
        return web.render(
            request,
            "steward_node.html",
            node=facts,
            profile=profile,
            quality=_quality(profile),
            trend=trend,
            waiting=waiting,
            budgets=budgets,
            log=list(reversed((profile or {}).get("log", []))),
            charts=shown_charts,
        )

    return pages


def _nodes(s: Session, who: Principal) -> list[db.Node]:
    query = select(db.Node).order_by(db.Node.name)
    if who.role == "steward":
        query = query.where(db.Node.name.in_(gov.stewarded(s, who)))
    elif who.role not in ("operator", "auditor"):
        raise HubError(403, "forbidden", "the node pages are for stewards, auditors, operators")
    return list(s.scalars(query))


def _summary(s: Session, n: db.Node) -> dict[str, Any]:
    """One node as the list shows it: its latest profile's checks and open tasks."""
    newest = profiles.latest(s, n.name)
    profile = None if newest is None else newest.profile
    quality = _quality(profile)
    waiting = [t for t in (profile or {}).get("tasks", []) if t["state"] in WAITING]
    return node_row(n) | {
        "reported": profile is not None,
        "failed": None if quality is None else quality["failed"],
        "checks": None if quality is None else quality["total"],
        "waiting": len(waiting),
        "policy": None if profile is None else profile["policy"]["version"],
    }


def _quality(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checks of the latest snapshot by category, and the failures."""
    if profile is None or profile.get("dq") is None:
        return None
    checks = profile["dq"]["checks"]
    passed = Counter(c["category"] for c in checks if c["passed"])
    failed = Counter(c["category"] for c in checks if not c["passed"])
    return {
        "fingerprint": profile["dq"]["fingerprint"],
        "checked_at": profile["dq"]["checked_at"],
        "categories": [
            {"category": k, "passed": passed[k], "failed": failed[k]}
            for k in sorted(passed.keys() | failed.keys())
        ],
        "failures": sorted(
            (c for c in checks if not c["passed"]),
            key=lambda c: (c["category"], -c["pct_violated"]),
        ),
        "failed": sum(failed.values()),
        "total": len(checks),
    }


def _trend(history: list[db.NodeProfile]) -> list[dict[str, Any]]:
    """Failed checks per snapshot of the store, oldest first (one point per fingerprint)."""
    points: dict[str, dict[str, Any]] = {}
    for row in reversed(history):  # oldest first; a snapshot's latest checks win
        dq = row.profile.get("dq")
        if dq is None:
            continue
        points.pop(dq["fingerprint"], None)
        points[dq["fingerprint"]] = {
            "fingerprint": dq["fingerprint"],
            "checked_at": str(dq["checked_at"]).replace("T", " ")[:19],
            "failed": sum(1 for c in dq["checks"] if not c["passed"]),
            "total": len(dq["checks"]),
        }
    return list(points.values())


def _waiting(
    s: Session, node: str, profile: dict[str, Any] | None, who: Principal
) -> list[dict[str, Any]]:
    """The tasks waiting for the steward: those the node's profile reports and those the
    hub last heard waiting; each with its study, what it would release and the command."""
    reported = {t["task_id"]: t for t in (profile or {}).get("tasks", []) if t["state"] in WAITING}
    rows = {
        t.id: t
        for t in s.scalars(select(db.Task).where(db.Task.node == node, db.Task.state.in_(WAITING)))
    }
    for task_id in reported.keys() - rows.keys():
        found = s.get(db.Task, task_id)
        if found is not None and found.node == node:
            rows[task_id] = found
    store = shlex.quote((profile or {}).get("store", "STORE"))
    by = shlex.quote(who.name if who.role == "steward" else "STEWARD")
    shown = []
    for task_id in sorted(rows.keys() | reported.keys()):
        task = rows.get(task_id)
        envelope = task.envelope if task is not None else {}
        spec = envelope.get("spec") or {}
        told = reported.get(task_id, {})  # what the node said of it
        shown.append(
            {
                "task_id": task_id,
                "state": told.get("state") or (task.state if task else "?"),
                "study_id": envelope.get("study_id") or told.get("study_id"),
                "study": spec.get("name") or told.get("study", "?"),
                "project": envelope.get("project"),
                "researcher": envelope.get("researcher"),
                "round": envelope.get("round", 1),
                "agreement": envelope.get("agreement"),
                "epsilon": envelope.get("epsilon"),
                "received_at": told.get("received_at"),
                "cohorts": cohorts_in_words(spec),
                "releases": releases_in_words(spec),
                "approve": f"medlab node approve {store} {shlex.quote(task_id)} --by {by}",
                "refuse": f"medlab node refuse {store} {shlex.quote(task_id)} "
                f"--reason 'WHY' --by {by}",
                "show": f"medlab node tasks {store} --show {shlex.quote(task_id)}",
            }
        )
    return shown


def _budgets(
    profile: dict[str, Any] | None, agreements: list[schema.Agreement]
) -> list[dict[str, Any]]:
    """Per project: the budget the node's ledger holds and the hub's agreements for it."""
    at_node = {b["project"]: b for b in (profile or {}).get("budgets", [])}
    by_project: dict[str, list[dict[str, Any]]] = {}
    for a in agreements:
        by_project.setdefault(a.project, []).append(gov.agreement_row(a))
    return [
        {"project": p, "node": at_node.get(p), "agreements": by_project.get(p, [])}
        for p in sorted(at_node.keys() | by_project.keys())
    ]
