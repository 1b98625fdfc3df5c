"""The steward's decisions on a node's tasks, the same from the command line (``medlab node
approve | refuse | tasks``) and the node's local console (``medlab node console``): a task
in words, approval to run (or to release, under result review), refusal with a reason.
Each decision is logged in the node's transparency log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlab.errors import UsageError
from medlab.federation.node.inbox import Inbox, LocalTask
from medlab.ledger import parties

WAITING = ("awaiting_approval", "awaiting_result_review")


def summary(task: LocalTask) -> dict[str, Any]:
    """One task as a list shows it: its study, state, researcher, project and analyses."""
    e = task.envelope
    spec = e.get("spec", {})
    return {
        "task_id": task.task_id,
        "study_id": task.study_id,
        "study": spec.get("name", "?"),
        "state": task.state,
        "reason": task.reason,
        "researcher": e.get("researcher"),
        "project": e.get("project"),
        "analyses": [f"{a.get('type')} {a.get('name')}" for a in spec.get("analyses", [])],
        "received_at": task.received_at,
    }


def in_full(task: LocalTask) -> dict[str, Any]:
    """One task in full: the summary, its cohorts and what each analysis releases in words,
    and the released payloads when the run is done (what would leave, under review)."""
    from medlab.studies.words import cohorts_in_words, releases_in_words

    shown = summary(task)
    spec = task.envelope.get("spec", {})
    shown["cohorts"] = cohorts_in_words(spec)
    shown["analyses"] = releases_in_words(spec)
    shown["released"] = (
        None if task.output is None else [r["payload"] for r in task.output["releases"]]
    )
    return shown


def approve(store: Path, task_id: str, by: str) -> str:
    """Approve a waiting task to run, or its released payload under review to leave; what
    was approved (``run`` or ``release``)."""
    inbox = Inbox(store)
    task = inbox.get(task_id)
    if task.state == "awaiting_result_review":
        inbox.move(task_id, task.state, expect=(task.state,), results_approved_by=by)
        what = "release"
    else:
        inbox.move(task_id, "awaiting_approval", expect=("awaiting_approval",), approved_by=by)
        what = "run"
    parties.node(store).log("task_approved", task_id=task_id, what=what, by=by)
    return what


def refuse(store: Path, task_id: str, reason: str, by: str) -> None:
    """Refuse a waiting task; the reason goes to the researcher."""
    if not reason.strip() or len(reason) > 2000:
        raise UsageError("the reason: one to 2,000 characters")
    Inbox(store).move(task_id, "refused", reason, expect=WAITING)
    parties.node(store).log("task_refused", task_id=task_id, by=by, reason=reason)
