"""One vector for a secure sum from a symmetric matrix, a vector and a few scalars (the
matrix's upper triangle only), and back. Sums of packed vectors unpack to the sums."""

from __future__ import annotations

import numpy as np


def pack(matrix: np.ndarray, vector: np.ndarray, *scalars: float) -> list[float]:
    """``matrix``'s upper triangle, then ``vector``, then ``scalars``."""
    upper = matrix[np.triu_indices(len(vector))]
    return [*upper.tolist(), *vector.tolist(), *(float(s) for s in scalars)]


def unpack(values: list[float], p: int, scalars: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The symmetric ``p x p`` matrix, the ``p`` vector and the ``scalars`` of :func:`pack`."""
    k = p * (p + 1) // 2
    if len(values) != k + p + scalars:
        raise ValueError(f"{len(values)} values; {k + p + scalars} expected")
    matrix = np.zeros((p, p))
    matrix[np.triu_indices(p)] = values[:k]
    matrix = matrix + np.triu(matrix, 1).T
    return matrix, np.asarray(values[k : k + p]), [float(v) for v in values[k + p :]]
