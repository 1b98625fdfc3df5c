"""Log entries that commit with the store change they record.

A load, a policy change or a budget grant changes the store and must be logged in the node's
transparency log, which lives in files beside the store. The two cannot commit together, so
the change stages its log entry in ``medlab.log_outbox`` inside its own transaction: the
entry is in the store exactly when the change is. After the commit, :func:`flush` appends
every staged entry to the log and then deletes it; every writable open of the store flushes
too, so an entry left behind by a process killed between its commit and its append (or
between the append and the delete) is completed by the next open, exactly once: each entry
carries an ``intent`` id, and one already in the log is not appended again.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from medlab.ledger import parties

TABLE = "medlab.log_outbox"
_CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    intent VARCHAR PRIMARY KEY, staged_at TIMESTAMP NOT NULL, event VARCHAR NOT NULL)"""


def stage(con: duckdb.DuckDBPyConnection, event_type: str, **fields: Any) -> str:
    """Stage a log entry inside the caller's transaction; returns its intent id."""
    con.execute(_CREATE)
    intent = uuid.uuid4().hex
    event = {"type": event_type, "intent": intent, **fields}
    con.execute(
        f"INSERT INTO {TABLE} VALUES (?, ?, ?)",
        [intent, dt.datetime.now(dt.UTC).replace(tzinfo=None), json.dumps(event)],
    )
    return intent


def _pending(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    try:
        rows = con.execute(
            f"SELECT intent, event FROM {TABLE} ORDER BY staged_at, intent"
        ).fetchall()
    except duckdb.CatalogException:
        return []
    return [(str(i), str(e)) for i, e in rows]


@contextmanager
def logged_transaction(store: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable connection to ``store`` inside one transaction; once it commits, the log
    entries it staged are appended (on the same connection)."""
    from medlab.cdm.store import open_store, transaction

    with open_store(store) as con:
        with transaction(con):
            yield con
        flush(con, store)


def flush(con: duckdb.DuckDBPyConnection, store: Path) -> list[int]:
    """Append the staged entries to the node's log (each once) and clear them; returns the
    log indices appended. ``con`` is a writable connection outside any transaction."""
    pending = _pending(con)
    if not pending:
        return []
    party = parties.node(store)
    with party.open_log() as log:
        # Entries staged and appended but not yet cleared are among the log's newest.
        tail = range(max(0, log.size - len(pending) - 1000), log.size)
        logged = {json.loads(log.entry(i)).get("intent") for i in tail}
    appended = []
    for intent, event in pending:
        if intent not in logged:
            data = json.loads(event)
            appended.append(party.log(data.pop("type"), **data))
        con.execute(f"DELETE FROM {TABLE} WHERE intent = ?", [intent])
    return appended
