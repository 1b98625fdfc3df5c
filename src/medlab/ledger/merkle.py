"""Merkle tree hashing, proofs and proof verification exactly as RFC 6962 / RFC 9162.

Leaf hash ``SHA-256(0x00 || entry)``, interior node ``SHA-256(0x01 || left || right)``, the
empty tree's hash ``SHA-256()``; a tree of ``n > 1`` leaves splits at the largest power of two
smaller than ``n`` (RFC 6962 §2.1). Proof generation takes a function that returns the hash of
any aligned range of leaves, so a stored tree answers it from its saved perfect subtrees in
O(log n); verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

RangeHash = Callable[[int, int], bytes]
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, computed directly (the reference the stored tree is checked
    against)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(range_hash: RangeHash, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 6962 §2.1.1)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, n, m = 0, size, index
    while n > 1:
        k = split(n)
        if m < k:
            proof.append(range_hash(start + k, start + n))
            n = k
        else:
            proof.append(range_hash(start, start + k))
            start, n, m = start + k, n - k, m - k
    return proof[::-1]


def consistency_proof(range_hash: RangeHash, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[0:size2]) (RFC 6962 §2.1.2)."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    proof: list[bytes] = []
    start, n, m, whole = 0, size2, size1, True
    while m != n:
        k = split(n)
        if m <= k:
            proof.append(range_hash(start + k, start + n))
            n = k
        else:
            proof.append(range_hash(start, start + k))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:
        proof.append(range_hash(start, start + n))
    return proof[::-1]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` of the tree of
    ``size`` leaves with root ``expected_root``?"""
    if not 0 <= index < size or any(len(h) != 32 for h in (leaf, expected_root, *proof)):
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree of ``size1`` leaves (``root1``) is a
    prefix of the tree of ``size2`` leaves (``root2``)?"""
    if size1 > size2 or any(len(p) != 32 for p in proof):
        return False
    if size1 == 0:
        # Every tree extends the empty tree, so such a proof proves nothing; refused, as the
        # transparency-dev/merkle verifier does.
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def prefix_roots(leaves: Sequence[bytes], sizes: set[int]) -> dict[int, bytes]:
    """The roots of the first ``s`` leaves for each ``s`` in ``sizes``, in one pass: the
    perfect subtrees along the right edge (a compact range) fold into the root."""
    frontier: list[tuple[int, bytes]] = []  # (height, hash), heights strictly decreasing
    roots = {0: EMPTY_ROOT} if 0 in sizes else {}
    for count, leaf in enumerate(leaves, start=1):
        height, value = 0, leaf
        while frontier and frontier[-1][0] == height:
            value = node_hash(frontier.pop()[1], value)
            height += 1
        frontier.append((height, value))
        if count in sizes:
            top = frontier[-1][1]
            for _, left in reversed(frontier[:-1]):
                top = node_hash(left, top)
            roots[count] = top
    return roots
