"""RFC 6962 hashing and proofs: the published vectors, naive recomputation, properties."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from medlab.ledger import merkle
from medlab.ledger.keys import Signer, verify_json

# transparency-dev/merkle's RFC 6962 vectors (Apache 2.0; provenance in their README).
VECTORS = Path(__file__).resolve().parents[1] / "data" / "merkle-vectors"

# RFC 6962's reference inputs (the certificate-transparency test suite) and the roots of
# their first 1..8 leaves, as published with it.
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _hashes(n: int) -> list[bytes]:
    return [merkle.leaf_hash(str(i).encode()) for i in range(n)]


def _range(leaves: list[bytes]) -> merkle.RangeHash:
    return lambda a, b: merkle.root(leaves[a:b])


def test_reference_tree_roots() -> None:
    assert merkle.EMPTY_ROOT.hex() == merkle.root([]).hex() == EMPTY
    hashes = [merkle.leaf_hash(x) for x in LEAVES]
    for n in range(1, 9):
        assert merkle.root(hashes[:n]).hex() == ROOTS[n - 1], n


def _cases(kind: str) -> list[tuple[str, dict]]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


def _b(value: str) -> bytes:
    return base64.b64decode(value)


def test_inclusion_vectors() -> None:
    cases = _cases("inclusion")
    assert len(cases) > 80
    for name, c in cases:
        ok = merkle.verify_inclusion(
            _b(c["leafHash"]),
            c["leafIdx"],
            c["treeSize"],
            [_b(p) for p in c["proof"] or []],
            _b(c["root"]),
        )
        assert ok is not c["wantErr"], name


def test_consistency_vectors() -> None:
    cases = _cases("consistency")
    assert len(cases) > 80
    for name, c in cases:
        ok = merkle.verify_consistency(
            c["size1"],
            c["size2"],
            _b(c["root1"]),
            _b(c["root2"]),
            [_b(p) for p in c["proof"] or []],
        )
        assert ok is not c["wantErr"], name


def test_our_proofs_of_the_reference_tree_equal_the_vectors() -> None:
    hashes = [merkle.leaf_hash(x) for x in LEAVES]
    for name, c in _cases("inclusion"):
        if c["wantErr"] or c["treeSize"] > 8 or not name.split("/")[0].isdigit():
            continue
        proof = merkle.inclusion_proof(_range(hashes), c["leafIdx"], c["treeSize"])
        assert [base64.b64encode(p).decode() for p in proof] == (c["proof"] or []), name
    for name, c in _cases("consistency"):
        if c["wantErr"] or c["size2"] > 8 or not name.split("/")[0].isdigit():
            continue
        proof = merkle.consistency_proof(_range(hashes), c["size1"], c["size2"])
        assert [base64.b64encode(p).decode() for p in proof] == (c["proof"] or []), name


def test_every_small_tree_against_naive_recomputation() -> None:
    for size in range(1, 34):
        leaves = _hashes(size)
        top = merkle.root(leaves)
        for index in range(size):
            proof = merkle.inclusion_proof(_range(leaves), index, size)
            assert merkle.verify_inclusion(leaves[index], index, size, proof, top)
            if index + 1 < size:
                assert not merkle.verify_inclusion(leaves[index], index + 1, size, proof, top)
        for size1 in range(1, size + 1):
            proof = merkle.consistency_proof(_range(leaves), size1, size)
            root1 = merkle.root(leaves[:size1])
            assert merkle.verify_consistency(size1, size, root1, top, proof)
            if size1 < size:
                assert not merkle.verify_consistency(size1, size, top, root1, proof)


def _flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@given(
    size=st.integers(1, 300),
    data=st.data(),
)
def test_any_flipped_bit_fails_inclusion(size: int, data: st.DataObject) -> None:
    leaves = _hashes(size)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(_range(leaves), index, size)
    top = merkle.root(leaves)
    assert merkle.verify_inclusion(leaves[index], index, size, proof, top)
    bit = data.draw(st.integers(0, 255))
    assert not merkle.verify_inclusion(_flip(leaves[index], bit), index, size, proof, top)
    assert not merkle.verify_inclusion(leaves[index], index, size, proof, _flip(top, bit))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], _flip(proof[k], bit), *proof[k + 1 :]]
        assert not merkle.verify_inclusion(leaves[index], index, size, bad, top)


@given(size=st.integers(2, 300), data=st.data())
def test_any_flipped_bit_fails_consistency(size: int, data: st.DataObject) -> None:
    leaves = _hashes(size)
    size1 = data.draw(st.integers(1, size - 1))
    proof = merkle.consistency_proof(_range(leaves), size1, size)
    root1, root2 = merkle.root(leaves[:size1]), merkle.root(leaves)
    assert merkle.verify_consistency(size1, size, root1, root2, proof)
    bit = data.draw(st.integers(0, 255))
    assert not merkle.verify_consistency(size1, size, _flip(root1, bit), root2, proof)
    assert not merkle.verify_consistency(size1, size, root1, _flip(root2, bit), proof)
    k = data.draw(st.integers(0, len(proof) - 1))
    bad = [*proof[:k], _flip(proof[k], bit), *proof[k + 1 :]]
    assert not merkle.verify_consistency(size1, size, root1, root2, bad)


@given(bit=st.integers(0, 511), field=st.sampled_from(["size", "root", "signature"]))
def test_any_flipped_bit_in_a_signed_tree_head_fails(bit: int, field: str) -> None:
    head = SIGNER.sign_json({"log_id": SIGNER.key_id, "size": 8, "root": ROOTS[7]})
    assert verify_json(SIGNER.public_pem, head)
    if field == "size":
        head["signed"]["size"] ^= 1 << (bit % 16)
    elif field == "root":
        head["signed"]["root"] = _flip(bytes.fromhex(head["signed"]["root"]), bit).hex()
    else:
        signature = base64.b64decode(head["signature"])
        head["signature"] = base64.b64encode(_flip(signature, bit)).decode()
    assert not verify_json(SIGNER.public_pem, head)


SIGNER = Signer.load_or_create(Path(tempfile.mkdtemp()) / "test.key")
