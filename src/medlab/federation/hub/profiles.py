"""The node profiles the hub keeps for the steward's pages: a new row each time a node's
profile changes (the same profile again only moves its ``seen_at``), so the rows of one
node are its history: the data-quality checks of each snapshot, the policies it held. The
newest rows are kept, and the newest of every snapshot, so the quality trend stays whole."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from medlab.federation.common.messages import NodeProfile, json_path
from medlab.federation.hub import db
from medlab.governance.access import HubError
from medlab.ledger.parties import digest

HISTORY = 50  # the most rows of one node the pages read


def record(sessions: sessionmaker[Session], node: str, data: Any) -> None:
    """Keep ``node``'s profile (validated; 422 names the JSON path of what is wrong)."""
    try:
        profile = NodeProfile.model_validate(data)
    except ValidationError as exc:
        errors = [{"path": json_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = errors[0]
        message = f"{first['path']}: {first['message']}"
        raise HubError(422, "invalid profile", message, errors) from None
    body = profile.model_dump(mode="json")
    found = digest(body)
    with db.transaction(sessions) as s:
        newest = latest(s, node)
        now = db.utcnow()
        if newest is not None and newest.digest == found:
            newest.seen_at = now
        else:
            fingerprint = None if profile.dq is None else profile.dq.fingerprint
            s.add(
                db.NodeProfile(
                    node=node,
                    digest=found,
                    fingerprint=fingerprint,
                    profile=body,
                    received_at=now,
                    seen_at=now,
                )
            )
            s.flush()
            _prune(s, node)
        row = s.get(db.Node, node)
        if row is not None:
            row.version = profile.agent_version[:100]


def _prune(s: Session, node: str) -> None:
    """Keep the node's newest ``HISTORY`` rows and the newest row of each snapshot."""
    rows = s.execute(
        select(db.NodeProfile.id, db.NodeProfile.fingerprint)
        .where(db.NodeProfile.node == node)
        .order_by(db.NodeProfile.id.desc())
    ).all()
    seen: set[str | None] = set()
    for i, (row_id, fingerprint) in enumerate(rows):
        if i >= HISTORY and fingerprint in seen:
            s.execute(delete(db.NodeProfile).where(db.NodeProfile.id == row_id))
        seen.add(fingerprint)


def history(s: Session, node: str, most: int = HISTORY) -> list[db.NodeProfile]:
    """The node's newest profiles (at most ``most``), newest first."""
    return list(
        s.scalars(
            select(db.NodeProfile)
            .where(db.NodeProfile.node == node)
            .order_by(db.NodeProfile.id.desc())
            .limit(most)
        )
    )


def latest(s: Session, node: str) -> db.NodeProfile | None:
    """The node's profile now (None: its agent never reported)."""
    found = history(s, node, 1)
    return found[0] if found else None
