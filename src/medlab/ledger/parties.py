"""Who signs and logs: each node (key and log beside its store) and the hub.

A node's key is ``STORE.key`` and its log ``STORE.ledger/``; the hub's live in its directory
(``--hub DIR``, else ``$MEDLAB_HUB_DIR``, else ``~/.medlab/hub``): ``hub.key`` and ``ledger/``.
Events are small JSON objects with a ``type`` and a ``time``; what a node logs never holds
patient rows, only hashes, fingerprints, counts of what was released and budget amounts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.ledger.keys import Signer, canonical
from medlab.ledger.log import TransparencyLog

_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def digest(value: Any) -> str:
    """``sha256:`` over the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical(value)).hexdigest()


@dataclass(frozen=True)
class Party:
    """A signer with its own transparency log."""

    name: str
    key_path: Path
    log_dir: Path

    @property
    def signer(self) -> Signer:
        """The party's signing key (created on first use)."""
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        return Signer.load_or_create(self.key_path)

    def log(self, event_type: str, **fields: Any) -> int:
        """Append an event to the party's log; returns its index. Appends from threads of one
        process are serialized; one log has one writing process (its node or hub)."""
        key = str(self.log_dir.resolve())
        with _GUARD:
            lock = _LOCKS.setdefault(key, threading.Lock())
        with lock, TransparencyLog(self.log_dir, self.signer) as log:
            return log.append({"type": event_type, "time": now(), **fields})

    def open_log(self) -> TransparencyLog:
        """The party's log, open."""
        return TransparencyLog(self.log_dir, self.signer)


def node(store: Path) -> Party:
    """The node that owns ``store``."""
    return Party(store.stem, store.with_suffix(".key"), store.with_suffix(".ledger"))


def hub(directory: Path | None = None) -> Party:
    """The hub whose key and log live in ``directory`` (see the module docstring)."""
    base = directory or Path(os.environ.get("MEDLAB_HUB_DIR", Path.home() / ".medlab" / "hub"))
    return Party("hub", base / "hub.key", base / "ledger")
