"""Request signatures (nodes) and bearer tokens (researchers).

A node signs every request with its Ed25519 key over one canonical text: the method, the
path with its query, the SHA-256 of the body, a timestamp and a nonce. The hub refuses a
request whose timestamp is more than :data:`MAX_AGE_SECONDS` away from its clock or whose
nonce it has seen (no replay). A researcher's token is random; the hub keeps only its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from medlab.ledger.keys import Signer, verify

MAX_AGE_SECONDS = 300
NODE = "x-medlab-node"
TIMESTAMP = "x-medlab-timestamp"
NONCE = "x-medlab-nonce"
SIGNATURE = "x-medlab-signature"


def signing_text(method: str, target: str, body: bytes, timestamp: str, nonce: str) -> bytes:
    """What a node signs: ``target`` is the path with its query string."""
    digest = hashlib.sha256(body).hexdigest()
    parts = ("medlab-request-v1", method.upper(), target, digest, timestamp, nonce)
    return "\n".join(parts).encode()


def sign_request(
    signer: Signer, node: str, method: str, target: str, body: bytes
) -> dict[str, str]:
    """The headers that authenticate one request of ``node``."""
    timestamp = str(int(time.time()))
    nonce = secrets.token_hex(16)
    signature = signer.sign(signing_text(method, target, body, timestamp, nonce))
    return {NODE: node, TIMESTAMP: timestamp, NONCE: nonce, SIGNATURE: signature}


@dataclass(frozen=True)
class Signed:
    """The authentication headers of a request as received."""

    node: str
    timestamp: str
    nonce: str
    signature: str


def check_request(
    public_pem: str,
    method: str,
    target: str,
    body: bytes,
    headers: Signed,
    now: float | None = None,
) -> str | None:
    """Why the request does not authenticate (``None``: the signature holds and it is
    fresh; the nonce's novelty is the hub's to check)."""
    try:
        stamp = int(headers.timestamp)
    except ValueError:
        return "the timestamp is not an integer"
    if abs((time.time() if now is None else now) - stamp) > MAX_AGE_SECONDS:
        return f"the request is more than {MAX_AGE_SECONDS} seconds old or ahead"
    if not 16 <= len(headers.nonce) <= 128:
        return "the nonce is not 16 to 128 characters"
    text = signing_text(method, target, body, headers.timestamp, headers.nonce)
    if not verify(public_pem, text, headers.signature):
        return "the signature does not verify"
    return None


def new_token() -> str:
    """A researcher's bearer token (shown once)."""
    return "mlt_" + secrets.token_urlsafe(32)


def same_secret(given: str, expected: str) -> bool:
    """Whether a secret someone sent (a token, a form token) is the expected one, in constant
    time; any text may be sent, so both are compared as UTF-8 bytes."""
    return hmac.compare_digest(given.encode(), expected.encode())


def token_hash(token: str) -> str:
    """What the hub stores of a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()
