"""Metered usage per project: studies, tasks, node-seconds, releases and the privacy budget
the nodes reported spending, recorded by the hub when a study is submitted and when it ends,
summed per project and node, and exported as CSV for billing.

Node-seconds are the hub's own measure: from the node's ``running`` report to its last
report of the task. Epsilon and rho are what each node said it charged to the project (the
node's ledger is authoritative; the hub mirrors it on the agreement).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medlab.governance import schema

KINDS = ("studies", "tasks", "node_seconds", "releases", "epsilon", "rho")


def count_study(s: Session, study: Any) -> None:
    """One study submitted in its project."""
    s.add(schema.Usage(project=study.project, study_id=study.id, node="", kind="studies", amount=1))


def spent_by_node(tasks: list[Any]) -> dict[str, tuple[float, float]]:
    """What each node reported spending over a study's completed tasks: (epsilon, rho)."""
    found: dict[str, tuple[float, float]] = {}
    for t in tasks:
        if t.state != "completed" or not t.output:
            continue
        spent = t.output.get("spent") or {}
        e, r = found.get(t.node, (0.0, 0.0))
        found[t.node] = (e + float(spent.get("epsilon", 0.0)), r + float(spent.get("rho", 0.0)))
    return found


def record_tasks(s: Session, study: Any, tasks: list[Any]) -> None:
    """The metered quantities of a study's tasks, once each (the key refuses a repeat)."""
    for t in tasks:
        rows = {"tasks": 1.0}
        if t.started_at is not None and t.ended_at is not None:
            rows["node_seconds"] = max((t.ended_at - t.started_at).total_seconds(), 0.0)
        if t.state == "completed" and t.output:
            rows["releases"] = float(len(t.output.get("releases", [])))
            spent = t.output.get("spent") or {}
            rows["epsilon"] = float(spent.get("epsilon", 0.0))
            rows["rho"] = float(spent.get("rho", 0.0))
        for kind, amount in rows.items():
            s.add(
                schema.Usage(
                    project=study.project,
                    study_id=study.id,
                    node=t.node,
                    round=t.round,
                    kind=kind,
                    amount=amount,
                )
            )


def totals(s: Session, project: str) -> dict[str, Any]:
    """A project's usage: totals by kind, the same per node, and each agreement's budget."""
    u = schema.Usage
    rows = s.execute(
        select(u.node, u.kind, func.sum(u.amount))
        .where(u.project == project)
        .group_by(u.node, u.kind)
        .order_by(u.node, u.kind)
    ).all()
    total = dict.fromkeys(KINDS, 0.0)
    nodes: dict[str, dict[str, float]] = {}
    for node, kind, amount in rows:
        total[kind] += float(amount)
        if node:
            nodes.setdefault(node, dict.fromkeys(KINDS[1:], 0.0))[kind] = float(amount)
    budgets = [
        {
            "agreement": a.id,
            "node": a.node,
            "state": a.state,
            "epsilon_granted": a.epsilon,
            "epsilon_held": a.epsilon_held,
            "epsilon_spent": a.epsilon_spent,
            "rho_granted": a.rho,
            "rho_held": a.rho_held,
            "rho_spent": a.rho_spent,
        }
        for a in s.scalars(
            select(schema.Agreement)
            .where(schema.Agreement.project == project)
            .order_by(schema.Agreement.node, schema.Agreement.created_at)
        )
    ]
    return {"project": project, "total": total, "nodes": nodes, "budgets": budgets}


def as_csv(s: Session, projects: list[str]) -> str:
    """One row per project and node (node empty: the project's own counts), one column per
    kind: the billing export."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["project", "node", *KINDS])
    for project in projects:
        found = totals(s, project)
        writer.writerow([project, "", *(_num(found["total"][k]) for k in KINDS)])
        for node, kinds in found["nodes"].items():
            writer.writerow([project, node, "", *(_num(kinds[k]) for k in KINDS[1:])])
    return out.getvalue()


def _num(value: float) -> str:
    return f"{value:.6g}" if value != int(value) else str(int(value))
