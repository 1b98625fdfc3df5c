"""t-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = (1 << 521) - 1  # a Mersenne prime, far above any 32-byte secret


class SharingError(ValueError):
    """Too few or inconsistent shares."""


def split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret`` for each holder (non-zero, distinct x coordinates); any
    ``threshold`` of them recover it, fewer reveal nothing."""
    if not 1 <= threshold <= len(holders):
        raise SharingError(f"threshold {threshold} with {len(holders)} holders")
    if len(set(holders)) != len(holders) or any(not 0 < h < PRIME for h in holders):
        raise SharingError("holders are distinct positive integers")
    value = int.from_bytes(secret, "big")
    coefficients = [value] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for h in holders:
        y = 0
        for c in reversed(coefficients):
            y = (y * h + c) % PRIME
        shares[h] = y
    return shares


def combine(shares: dict[int, int], threshold: int, size: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise SharingError(f"{len(shares)} shares; {threshold} are needed")
    points = list(shares.items())[:threshold]
    value = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        value = (value + yi * num * pow(den, -1, PRIME)) % PRIME
    if value >= 1 << (8 * size):
        raise SharingError("the shares do not belong to one secret")
    return value.to_bytes(size, "big")
