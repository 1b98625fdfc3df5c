"""Keyed values per person, computed inside the node from its secret.

Each person id maps, under the node secret (BLAKE2b keyed, so nobody without the secret can
compute or invert it), to an **audit id** (64 bits: the differencing audit stores and compares
populations as sets of these, never as person ids) and a **record key** (32 bits: the
cell-key method's per-person random key). Values are cached for the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

RECORD_KEY_MODULUS = 2**32


class PersonKeys:
    """Audit ids and record keys of persons under one node's secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: dict[int, tuple[int, int]] = {}

    def _of(self, person: int) -> tuple[int, int]:
        found = self._cache.get(person)
        if found is None:
            digest = hashlib.blake2b(
                str(person).encode(), key=self._secret, digest_size=12, person=b"medlab-person"
            ).digest()
            found = (
                int.from_bytes(digest[:8], "big") >> 1,  # fits a signed 64-bit integer
                int.from_bytes(digest[8:], "big"),
            )
            self._cache[person] = found
        return found

    def audit_ids(self, persons: Iterable[int]) -> np.ndarray:
        """The sorted audit ids of ``persons``."""
        ids = np.fromiter((self._of(p)[0] for p in persons), dtype=np.int64)
        ids.sort()
        return ids

    def cell_key(self, persons: Iterable[int], salt: int = 0) -> int:
        """The cell key of a population: the sum of its record keys (and ``salt``, which
        separates the columns of one row) modulo 2^32."""
        total = salt
        for p in persons:
            total += self._of(p)[1]
        return total % RECORD_KEY_MODULUS
