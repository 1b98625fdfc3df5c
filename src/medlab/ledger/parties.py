"""Who signs and logs: each node (key and log beside its store) and the hub.

A node's key and log are its identity's (:mod:`medlab.cdm.identity`: ``DIR/node.key`` and
``DIR/ledger/``, or ``STORE.key`` and ``STORE.ledger/`` beside the store); the hub's live in
its directory (``--hub DIR``, else ``$MEDLAB_HUB_DIR``, else ``~/.medlab/hub``): ``hub.key``
and ``ledger/``.
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

from medlab.cdm.identity import identity
from medlab.ledger.keys import Signer, canonical, key_id
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
        """The party's signing key (created on first use; a rotation a crash interrupted is
        completed or abandoned first)."""
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        staged = self._staged
        if staged.exists():
            new = Signer.load_or_create(staged)
            public = self.log_dir / "public.pem"
            handed_over = public.exists() and key_id(public.read_text()) == new.key_id
            if not handed_over and public.exists():
                with TransparencyLog(self.log_dir, None) as log:
                    last = log.last_entry()
                handed_over = bool(last) and last.get("new_key_id") == new.key_id  # type: ignore[union-attr]
                if handed_over:
                    public.write_text(new.public_pem)
            if handed_over:
                os.replace(staged, self.key_path)
            else:
                staged.unlink()
        return Signer.load_or_create(self.key_path)

    @property
    def _staged(self) -> Path:
        return self.key_path.with_name(self.key_path.name + ".new")

    def rotate(self) -> tuple[str, str]:
        """Replace the party's key: the log records the hand-over (signed by the old key) and
        continues under the new one; the old private key is deleted. Returns (old, new) ids."""
        old = self.signer
        new = Signer.load_or_create(self._staged)
        with self._lock(), TransparencyLog(self.log_dir, old) as log:
            log.rotate(new, {"time": now()})
        os.replace(self._staged, self.key_path)
        return old.key_id, new.key_id

    def log(self, event_type: str, **fields: Any) -> int:
        """Append an event to the party's log; returns its index. Appends from threads of one
        process are serialized; one log has one writing process (its node or hub)."""
        with self._lock(), TransparencyLog(self.log_dir, self.signer) as log:
            return log.append({"type": event_type, "time": now(), **fields})

    def _lock(self) -> threading.Lock:
        with _GUARD:
            return _LOCKS.setdefault(str(self.log_dir.resolve()), threading.Lock())

    def open_log(self) -> TransparencyLog:
        """The party's log, open."""
        return TransparencyLog(self.log_dir, self.signer)


def node(store: Path) -> Party:
    """The node that owns ``store``."""
    found = identity(store)
    return Party(store.stem, found.key, found.ledger)


def hub(directory: Path | None = None) -> Party:
    """The hub whose key and log live in ``directory`` (see the module docstring)."""
    base = directory or Path(os.environ.get("MEDLAB_HUB_DIR", Path.home() / ".medlab" / "hub"))
    return Party("hub", base / "hub.key", base / "ledger")
