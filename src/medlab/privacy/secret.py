"""The node's secret key: for keyed hashes of person ids (auditing, pseudonyms, date shifts).

Kept in the node's identity (:mod:`medlab.cdm.identity`: ``DIR/node.secret``, or beside
the store, ``hospital.duckdb`` → ``hospital.secret``), readable by the owner only, created on
first use from the operating system's random source. It never leaves the node; losing it
makes pseudonyms unlinkable to later loads.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from medlab.cdm.identity import identity
from medlab.errors import StoreError


def secret_path(store: Path) -> Path:
    """Where the secret of ``store`` lives."""
    return identity(store).secret


def node_secret(store: Path) -> bytes:
    """The node's 32-byte secret, created (mode 0600) when missing."""
    path = secret_path(store)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    data = path.read_bytes()
    if len(data) != 32:
        raise StoreError(f"{path}: not a medlab node secret (expected 32 bytes)")
    return data


def keyed_hash(secret: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under the node secret, separated by ``purpose``."""
    return hmac.new(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()


def keyed_int(secret: bytes, purpose: str, value: str, bits: int = 63) -> int:
    """A non-negative integer of ``bits`` bits derived from the keyed hash."""
    return int.from_bytes(keyed_hash(secret, purpose, value)[:8], "big") >> (64 - bits)
