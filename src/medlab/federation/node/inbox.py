"""The node's own record of its tasks: ``STORE.tasks.sqlite`` beside the store.

The agent writes every task it receives and every state it moves it to here first, then
tells the hub; the steward's ``medlab node tasks / approve / refuse`` read and write it too
(SQLite in WAL mode: the agent and the steward's commands never block each other for long).
A task's released output waits here for the steward's review or for the hub to acknowledge
the upload, so a crash or a hub outage loses nothing. The hub's key is pinned here on first
contact (or given with ``--hub-key``).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.errors import UsageError

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY, study_id TEXT NOT NULL, envelope TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT, output TEXT, approved_by TEXT,
        results_approved_by TEXT, reported TEXT, received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS hub (key_id TEXT NOT NULL, public_key TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS agreements (
        agreement_id TEXT PRIMARY KEY, project TEXT NOT NULL, terms TEXT NOT NULL,
        signature TEXT NOT NULL, state TEXT NOT NULL, signed_by TEXT NOT NULL,
        reason TEXT, updated_at TEXT NOT NULL)""",
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def inbox_path(store: Path) -> Path:
    """Where the node's task record of ``store`` lives."""
    return store.with_suffix(".tasks.sqlite")


@dataclass(frozen=True)
class LocalTask:
    """A task as the node keeps it."""

    task_id: str
    study_id: str
    envelope: dict[str, Any]
    state: str
    reason: str | None
    output: dict[str, Any] | None
    approved_by: str | None
    results_approved_by: str | None
    reported: str | None  # the last state the hub acknowledged
    received_at: str
    updated_at: str


class Inbox:
    """The task record of one node store."""

    def __init__(self, store: Path) -> None:
        self.path = inbox_path(store)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                con.execute(statement)
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def add(self, envelope: dict[str, Any]) -> bool:
        """Record a task received from the hub (``False``: known already)."""
        with self._db() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO tasks (task_id, study_id, envelope, state, received_at, "
                "updated_at) VALUES (?, ?, ?, 'delivered', ?, ?)",
                [envelope["task_id"], envelope["study_id"], json.dumps(envelope), _now(), _now()],
            )
            return cur.rowcount == 1

    def get(self, task_id: str) -> LocalTask:
        """One task; a clear error when the node has none of that id."""
        with self._db() as con:
            row = con.execute("SELECT * FROM tasks WHERE task_id = ?", [task_id]).fetchone()
        if row is None:
            raise UsageError(f"no task {task_id} at this node (see: medlab node tasks STORE)")
        return _task(row)

    def all(self) -> list[LocalTask]:
        """Every task, oldest first."""
        with self._db() as con:
            rows = con.execute("SELECT * FROM tasks ORDER BY received_at, task_id").fetchall()
        return [_task(r) for r in rows]

    def move(
        self,
        task_id: str,
        state: str,
        reason: str | None = None,
        *,
        expect: tuple[str, ...] | None = None,
        output: dict[str, Any] | None = None,
        approved_by: str | None = None,
        results_approved_by: str | None = None,
    ) -> LocalTask:
        """Move a task to ``state`` (refused unless it is in one of ``expect``)."""
        with self._db() as con:
            row = con.execute("SELECT * FROM tasks WHERE task_id = ?", [task_id]).fetchone()
            if row is None:
                raise UsageError(f"no task {task_id} at this node")
            current = _task(row)
            if expect is not None and current.state not in expect:
                raise UsageError(
                    f"task {task_id} is {current.state}; this needs it " + " or ".join(expect)
                )
            # Two stewards approving at once: the second finds the first's approval (the
            # transaction is IMMEDIATE, so they are serialized) and counts for nothing.
            if approved_by and current.approved_by:
                raise UsageError(f"task {task_id} was approved already by {current.approved_by}")
            if results_approved_by and current.results_approved_by:
                raise UsageError(
                    f"task {task_id}'s release was approved already by "
                    f"{current.results_approved_by}"
                )
            con.execute(
                "UPDATE tasks SET state = ?, reason = coalesce(?, reason), "
                "output = coalesce(?, output), approved_by = coalesce(?, approved_by), "
                "results_approved_by = coalesce(?, results_approved_by), updated_at = ? "
                "WHERE task_id = ?",
                [
                    state,
                    reason,
                    None if output is None else json.dumps(output),
                    approved_by,
                    results_approved_by,
                    _now(),
                    task_id,
                ],
            )
            row = con.execute("SELECT * FROM tasks WHERE task_id = ?", [task_id]).fetchone()
        return _task(row)

    def acknowledged(self, task_id: str, state: str) -> None:
        """The hub has acknowledged ``state`` for the task."""
        with self._db() as con:
            con.execute("UPDATE tasks SET reported = ? WHERE task_id = ?", [state, task_id])

    def hub_key(self) -> tuple[str, str] | None:
        """The pinned hub key (key id, PEM), if any."""
        with self._db() as con:
            row = con.execute("SELECT key_id, public_key FROM hub").fetchone()
        return None if row is None else (row[0], row[1])

    def pin_hub_key(self, kid: str, public_pem: str) -> None:
        """Pin the hub's key (once; a different one later is refused by the agent)."""
        with self._db() as con:
            if con.execute("SELECT count(*) FROM hub").fetchone()[0] == 0:
                con.execute("INSERT INTO hub VALUES (?, ?)", [kid, public_pem])


@dataclass(frozen=True)
class LocalAgreement:
    """A data-use agreement as this node's steward signed it (``state``: signed or
    suspended, the steward's own word; expiry is read from the terms)."""

    agreement_id: str
    project: str
    terms: dict[str, Any]
    signature: str
    state: str
    signed_by: str
    reason: str | None
    updated_at: str


class Agreements:
    """The agreements this node's steward signed, beside its tasks (``STORE.tasks.sqlite``)."""

    def __init__(self, store: Path) -> None:
        self.inbox = Inbox(store)

    def save(self, terms: dict[str, Any], signature: str, by: str) -> None:
        """Record a signed agreement (a second signing of the same one is refused)."""
        with self.inbox._db() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO agreements VALUES (?, ?, ?, ?, 'signed', ?, NULL, ?)",
                [terms["agreement"], terms["project"], json.dumps(terms), signature, by, _now()],
            )
            if cur.rowcount != 1:
                raise UsageError(f"agreement {terms['agreement']} is signed at this node already")

    def get(self, agreement_id: str) -> LocalAgreement | None:
        """One agreement, if this node signed it."""
        with self.inbox._db() as con:
            row = con.execute(
                "SELECT * FROM agreements WHERE agreement_id = ?", [agreement_id]
            ).fetchone()
        return None if row is None else LocalAgreement(row[0], row[1], json.loads(row[2]), *row[3:])

    def all(self) -> list[LocalAgreement]:
        """Every agreement this node signed."""
        with self.inbox._db() as con:
            rows = con.execute("SELECT * FROM agreements ORDER BY updated_at").fetchall()
        return [LocalAgreement(r[0], r[1], json.loads(r[2]), *r[3:]) for r in rows]

    def move(self, agreement_id: str, state: str, expect: str, reason: str | None) -> None:
        """Suspend or reinstate an agreement (refused unless it is ``expect``)."""
        with self.inbox._db() as con:
            cur = con.execute(
                "UPDATE agreements SET state = ?, reason = ?, updated_at = ? "
                "WHERE agreement_id = ? AND state = ?",
                [state, reason, _now(), agreement_id, expect],
            )
            if cur.rowcount != 1:
                raise UsageError(f"agreement {agreement_id} is not {expect} at this node")


def _task(row: tuple[Any, ...]) -> LocalTask:
    return LocalTask(
        task_id=row[0],
        study_id=row[1],
        envelope=json.loads(row[2]),
        state=row[3],
        reason=row[4],
        output=None if row[5] is None else json.loads(row[5]),
        approved_by=row[6],
        results_approved_by=row[7],
        reported=row[8],
        received_at=row[9],
        updated_at=row[10],
    )
