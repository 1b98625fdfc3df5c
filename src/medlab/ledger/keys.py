"""Ed25519 signing keys, canonical JSON, and signature checks.

A node's key lives beside its store (``hospital.duckdb`` → ``hospital.key``), the hub's in its
directory; both are PKCS#8 PEM files readable by the owner only, created on first use. A key
is known by its id, the SHA-256 of its raw 32-byte public key, in hex. Everything signed is
canonical JSON: keys sorted, UTF-8, no insignificant whitespace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from medlab.errors import StoreError


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, UTF-8, no insignificant whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public_pem: str) -> str:
    """The id of a public key: SHA-256 of its raw bytes, hex."""
    raw = _public(public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


def _public(public_pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(public_pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify(public_pem: str, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is the key's Ed25519 signature of ``data``."""
    try:
        _public(public_pem).verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Signer:
    """A private signing key and its public half."""

    private: Ed25519PrivateKey

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """The key in ``path``, created (mode 0600) when missing."""
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            return cls(key)
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path}: not a medlab signing key ({exc})") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise StoreError(f"{path}: not an Ed25519 signing key")
        return cls(loaded)

    @property
    def public_pem(self) -> str:
        """The public key, PEM."""
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def key_id(self) -> str:
        """SHA-256 of the raw public key, hex."""
        return key_id(self.public_pem)

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of ``data``, base64."""
        return base64.b64encode(self.private.sign(data)).decode()

    def sign_json(self, value: Any) -> dict[str, Any]:
        """``value`` with the key id and a signature over its canonical JSON."""
        return {"signed": value, "key_id": self.key_id, "signature": self.sign(canonical(value))}


def verify_json(public_pem: str, signed: dict[str, Any]) -> bool:
    """Whether ``signed`` (from :meth:`Signer.sign_json`) was signed by ``public_pem``."""
    try:
        return signed["key_id"] == key_id(public_pem) and verify(
            public_pem, canonical(signed["signed"]), signed["signature"]
        )
    except (KeyError, TypeError, ValueError):
        return False
