"""The hub's audit trail: its transparency log read back, filtered by user, project, study
and time. Every API call that reads or changes anything is an ``api`` event there (who, the
operation, the path, the outcome — never a result value), next to the hub's own events
(submissions, approvals, dispatches, agreements, combined results)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from medlab.errors import StoreError
from medlab.ledger.log import TransparencyLog

WHO = ("user", "researcher", "by", "approved_by")


def entries(log_dir: Path) -> list[dict[str, Any]]:
    """Every event of the log, with its ``index`` (read-only; retried while the hub is
    between writing an entry and its leaf)."""
    if not (log_dir / "public.pem").exists():
        return []
    for attempt in range(20):
        try:
            with TransparencyLog(log_dir, None) as log:
                return [{"index": i, **json.loads(log.entry(i))} for i in range(log.size)]
        except StoreError:
            if attempt == 19:
                raise
            time.sleep(0.05)
    return []


def events(
    log_dir: Path,
    user: str | None = None,
    project: str | None = None,
    study: str | None = None,
    since: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """The events that match every filter given (``since``: naive times are UTC)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    found = []
    for e in entries(log_dir):
        if user is not None and user not in {e.get(k) for k in WHO}:
            continue
        if project is not None and e.get("project") != project:
            continue
        if study is not None and e.get("study_id") != study:
            continue
        if since is not None and dt.datetime.fromisoformat(str(e["time"])) < since:
            continue
        found.append(e)
    return found
