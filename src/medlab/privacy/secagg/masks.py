"""Key agreement and masks: X25519 between nodes, HKDF to keys, ChaCha20 as the keyed
generator that expands a 32-byte seed into ring elements."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medlab.privacy.secagg.ring import BITS, MODULUS

_WORD = BITS // 8


def new_private() -> X25519PrivateKey:
    """A fresh X25519 private key."""
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32 bytes of a private key (what is secret-shared)."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def private_from(raw: bytes) -> X25519PrivateKey:
    """A private key from its raw bytes."""
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32 bytes of the key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(own: X25519PrivateKey, peer: bytes, purpose: bytes) -> bytes:
    """A 32-byte key shared by the two parties (X25519, then HKDF-SHA256 with ``purpose``)."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer))
    return HKDF(hashes.SHA256(), 32, salt=None, info=purpose).derive(shared)


def expand(seed: bytes, length: int) -> list[int]:
    """``length`` ring elements from ``seed`` (ChaCha20 keystream, zero nonce: each seed is
    used for one vector only)."""
    if len(seed) != 32:
        raise ValueError("a mask seed is 32 bytes")
    cipher = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    stream = cipher.update(b"\x00" * (_WORD * length))
    return [
        int.from_bytes(stream[i * _WORD : (i + 1) * _WORD], "little") % MODULUS
        for i in range(length)
    ]
