"""One secure-aggregation session spread over a federation's task rounds.

A session takes five rounds, one per phase of :mod:`medlab.privacy.secagg.protocol`:
``advertise``, ``share``, ``mask``, ``consistency``, ``unmask``. In each, the hub sends every
node the same request (the session, the phase, the threshold, the vector length and what the
phase needs: every advertisement, every encrypted share — each readable only by the node it
is addressed to —, the survivors, their signatures); each node answers with its message.

The node keeps its side of an open session (its secrets among it) in a file of its own,
mode 0600, in a directory beside its identity key (:class:`Sessions`), so that a session
survives between tasks; a node that loses it, or dies, is a dropout. It refuses to open a
session twice or to change a session's threshold or length midway. The hub keeps nothing
but the messages: :func:`hub_next` rebuilds its side from them each round and says what the
next round asks for, or gives the sum.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medlab.ledger.keys import Signer
from medlab.privacy.secagg.protocol import Keys, SecAggError, SecAggHub, SecAggNode

PHASES = ("advertise", "share", "mask", "consistency", "unmask")
STALE_SECONDS = 7 * 24 * 3600  # an open session older than this is abandoned
MAX_LENGTH = 2_000_000  # the longest vector a node masks (16 MB of ring elements)


class Sessions:
    """A node's open sessions, one JSON file each (mode 0600) in ``directory`` (0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, session: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in session)
        return self.directory / f"{safe}.json"

    def load(self, session: str) -> dict[str, Any] | None:
        """The stored state of ``session`` (None: never opened here, or closed)."""
        path = self._path(session)
        if not path.exists():
            return None
        state: dict[str, Any] = json.loads(path.read_text())
        if state.get("session") != session:
            raise SecAggError(f"the stored session {path.name} is another session's")
        return state

    def save(self, session: str, state: dict[str, Any]) -> None:
        """Write ``state`` atomically, readable by the node's user only."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._path(session)
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)

    def forget_stale(self, now: float | None = None) -> None:
        """Delete sessions nobody finished within :data:`STALE_SECONDS`."""
        if not self.directory.exists():
            return
        limit = (time.time() if now is None else now) - STALE_SECONDS
        for path in self.directory.glob("*.json"):
            if path.stat().st_mtime < limit:
                path.unlink(missing_ok=True)


def request(session: str, phase: str, threshold: int, length: int, **inputs: Any) -> dict[str, Any]:
    """What the hub asks of every node in one round of ``session``."""
    return {
        "session": session,
        "phase": phase,
        "threshold": threshold,
        "length": length,
        **inputs,
    }


def node_round(
    sessions: Sessions,
    name: str,
    signer: Signer,
    peers: Keys,
    asked: Mapping[str, Any],
    values: Callable[[], Sequence[float]],
) -> dict[str, Any]:
    """This node's answer to one round (``values``: its vector, computed only when the
    ``mask`` phase asks for it)."""
    session, phase = str(asked.get("session", "")), asked.get("phase")
    threshold, length = asked.get("threshold"), asked.get("length")
    if phase not in PHASES or not session:
        raise SecAggError(f"not a secure-aggregation round: phase {phase!r}")
    if not isinstance(threshold, int) or not isinstance(length, int) or length < 1:
        raise SecAggError("the round names no threshold or vector length")
    if length > MAX_LENGTH:
        raise SecAggError(f"a vector of {length} values is longer than a node masks")
    stored = sessions.load(session)
    if phase == "advertise":
        if stored is not None:
            raise SecAggError(f"session {session} was opened at this node before")
        sessions.forget_stale()
        node = SecAggNode(name, session, threshold, length, signer, peers)
        message: dict[str, Any] = dict(node.advertise())
    else:
        if stored is None:
            raise SecAggError(f"session {session} is not open at this node")
        if (stored["threshold"], stored["length"]) != (threshold, length):
            raise SecAggError("the hub changed the session's threshold or length midway")
        node = SecAggNode.restore(stored, signer, peers)
        if phase == "share":
            message = node.share_keys(list(asked.get("adverts", [])))
        elif phase == "mask":
            texts = dict(asked.get("ciphertexts", {})).get(name, {})
            message = node.masked_input(dict(texts), values())
        elif phase == "consistency":
            message = dict(node.consistency(list(asked.get("survivors", []))))
        else:
            message = node.unmask(dict(asked.get("signatures", {})))
    sessions.save(session, node.state())
    return message


def hub_next(
    session: str, threshold: int, length: int, messages: Mapping[str, Sequence[dict[str, Any]]]
) -> dict[str, Any] | list[float]:
    """The next round's request, from every phase's messages so far (``messages`` by phase,
    the last phase given being the round just answered), or the sum after ``unmask``."""
    hub = SecAggHub(session, threshold, length)
    done = [p for p in PHASES if p in messages]
    if done != list(PHASES[: len(done)]) or not done:
        raise SecAggError("the session's messages skip a phase")
    adverts = hub.collect_adverts(list(messages["advertise"]))
    if len(done) == 1:
        return request(session, "share", threshold, length, adverts=adverts)
    routed = hub.route_shares(list(messages["share"]))
    if len(done) == 2:
        return request(session, "mask", threshold, length, ciphertexts=routed)
    survivors = hub.collect_masked(list(messages["mask"]))
    if len(done) == 3:
        return request(session, "consistency", threshold, length, survivors=survivors)
    signatures = hub.collect_signatures(list(messages["consistency"]))
    if len(done) == 4:
        return request(session, "unmask", threshold, length, signatures=signatures)
    return hub.unmask(list(messages["unmask"]))


def survivors(messages: Mapping[str, Sequence[dict[str, Any]]]) -> list[str]:
    """The nodes whose vectors a finished session's sum holds."""
    return sorted(m["node"] for m in messages.get("mask", []))
