"""Fixed-point encoding of real vectors into the ring of integers modulo 2^128.

A value ``x`` is encoded as ``round(x * 2^FRACTION_BITS) mod 2^128``. Precision: each value
is within ``2^-41`` (half of ``2^-FRACTION_BITS``) of its encoding, so a sum of ``n`` values
within ``n * 2^-41``. Overflow: a value must satisfy ``|x| <= MAX_VALUE`` (2^60) and a sum has
at most ``MAX_PARTIES`` (2^20) terms, so ``|sum| * 2^40 < 2^120 < 2^127`` and the signed
decoding is exact; a value beyond the bound is refused (never wrapped), and a decoded sum
beyond what the parties can produce is reported as an overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BITS = 128
MODULUS = 1 << BITS
FRACTION_BITS = 40
SCALE = 1 << FRACTION_BITS
MAX_VALUE = float(1 << 60)
MAX_PARTIES = 1 << 20


class EncodingError(ValueError):
    """A value cannot be encoded (not finite, or beyond the bound) or a sum overflowed."""


def encode(values: Sequence[float]) -> list[int]:
    """Each value as a ring element; refuses non-finite values and values beyond the bound,
    naming the position."""
    out = []
    for i, x in enumerate(values):
        if not math.isfinite(x):
            raise EncodingError(f"element {i} is not a finite number")
        if abs(x) > MAX_VALUE:
            raise EncodingError(f"element {i} ({x:g}) is beyond the bound ±2^60")
        out.append(round(x * SCALE) % MODULUS)
    return out


def add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise sum in the ring."""
    if len(a) != len(b):
        raise EncodingError(f"vectors of length {len(a)} and {len(b)}")
    return [(x + y) % MODULUS for x, y in zip(a, b, strict=True)]


def subtract(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise difference in the ring."""
    if len(a) != len(b):
        raise EncodingError(f"vectors of length {len(a)} and {len(b)}")
    return [(x - y) % MODULUS for x, y in zip(a, b, strict=True)]


def decode_sum(values: Sequence[int], parties: int) -> list[float]:
    """The real sum of ``parties`` encoded vectors; an overflow (a sum no ``parties`` values
    within the bound can make) is an error, not a wrapped number."""
    if not 1 <= parties <= MAX_PARTIES:
        raise EncodingError(f"{parties} parties; at most {MAX_PARTIES}")
    limit = parties * (MAX_VALUE * SCALE + 1)
    out = []
    for i, v in enumerate(values):
        signed = v - MODULUS if v >= MODULUS // 2 else v
        if abs(signed) > limit:
            raise EncodingError(f"element {i}: the sum overflowed the bound")
        out.append(signed / SCALE)
    return out
