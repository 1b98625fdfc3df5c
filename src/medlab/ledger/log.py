"""An append-only, crash-safe transparency log on disk, with signed tree heads.

Files in the log's directory:

- ``entries.bin``: one record per entry: ``MLOG`` | payload length (4 bytes) | payload (the
  entry's canonical JSON) | leaf hash (32) | Ed25519 signature (64) by the log's key over
  ``medlab-log-v1`` | index (8 bytes) | leaf hash. A record someone adds, edits or moves
  without the key fails its signature.
- ``index.bin``: the offset (8 bytes) of each record. An entry is in the log once its offset is
  written and synced (after its record); on opening, a torn record or offset past the last
  complete one is cut away, so the log holds exactly the entries whose append returned (and
  possibly the one in flight, complete).
- ``level-L.bin``: the hashes of the perfect subtrees of 2^L leaves, in order (level 0 are the
  leaf hashes). They make an append O(log n) and any range hash O(log n); they are derived data,
  rebuilt from the records when behind after a crash.
- ``heads.jsonl``: every signed tree head (size, root, timestamp, log key id), one per line.
- ``public.pem``: the log's public key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medlab.errors import StoreError
from medlab.ledger import merkle
from medlab.ledger.keys import Signer, canonical, key_id, verify, verify_json

MAGIC = b"MLOG"
DOMAIN = b"medlab-log-v1"
_HEADER = struct.Struct(">4sI")
_OFFSET = struct.Struct(">Q")
_TAIL = 32 + 64


def record_message(index: int, leaf: bytes) -> bytes:
    """What a record's signature signs: the domain, its position and its leaf hash."""
    return DOMAIN + _OFFSET.pack(index) + leaf


def _sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class TransparencyLog:
    """A Merkle log in ``directory`` whose records and tree heads ``signer`` signs."""

    def __init__(self, directory: Path, signer: Signer | None) -> None:
        """Open (or create) the log; without a signer it is opened read-only, as found."""
        self.directory = directory
        self._signer = signer
        self._mode = "a+b" if signer else "rb"
        public = directory / "public.pem"
        if signer is None:
            if not public.exists():
                raise StoreError(f"{directory}: not a medlab log (no public.pem)")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            if not public.exists():
                public.write_text(signer.public_pem)
            elif key_id(public.read_text()) != signer.key_id:
                raise StoreError(f"{directory}: the log belongs to another key")
            genesis = directory / "genesis.pem"
            if not genesis.exists():  # the key that signed entry 0; rotations follow in the log
                genesis.write_text(public.read_text())
        self._entries = open(directory / "entries.bin", self._mode)  # noqa: SIM115
        self._index = open(directory / "index.bin", self._mode)  # noqa: SIM115
        self._levels: list[Any] = []
        if signer is None:
            self._size = os.path.getsize(directory / "index.bin") // _OFFSET.size
            self._end = os.path.getsize(directory / "entries.bin")
            leaves = directory / "level-0.bin"
            if self._size and (not leaves.exists() or leaves.stat().st_size < 32 * self._size):
                raise StoreError(
                    f"{directory}: the log was interrupted; open it with its key to recover"
                )
        else:
            self._recover()

    @property
    def signer(self) -> Signer:
        """The log's signing key (only for a log opened with one)."""
        if self._signer is None:
            raise StoreError(f"{self.directory}: the log is open read-only")
        return self._signer

    # -- opening ---------------------------------------------------------------------------

    def _level(self, level: int) -> Any:
        while len(self._levels) <= level:
            path = self.directory / f"level-{len(self._levels)}.bin"
            self._levels.append(open(path, self._mode))  # noqa: SIM115
        return self._levels[level]

    def _read_record(self, offset: int) -> tuple[bytes, bytes, bytes, int] | None:
        """(payload, leaf hash, signature, end offset) of the record at ``offset``, or None
        when it is torn or corrupt."""
        self._entries.seek(offset)
        head = self._entries.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return None
        magic, length = _HEADER.unpack(head)
        body = self._entries.read(length + _TAIL)
        if magic != MAGIC or len(body) < length + _TAIL:
            return None
        payload, leaf, signature = body[:length], body[length : length + 32], body[length + 32 :]
        if merkle.leaf_hash(payload) != leaf:
            return None
        return payload, leaf, signature, offset + _HEADER.size + length + _TAIL

    def _recover(self) -> None:
        size = os.path.getsize(self._index.name) // _OFFSET.size
        end = 0
        while size:
            self._index.seek((size - 1) * _OFFSET.size)
            (offset,) = _OFFSET.unpack(self._index.read(_OFFSET.size))
            record = self._read_record(offset)
            if record is not None:
                end = record[3]
                break
            size -= 1
        self._index.truncate(size * _OFFSET.size)
        self._entries.truncate(end)
        self._size = size
        self._end = end
        # Derived levels: cut what is ahead, rebuild what is behind.
        count, level = size, 0
        while True:
            handle = self._level(level)
            have = os.path.getsize(handle.name) // 32
            if have > count:
                handle.truncate(count * 32)
                have = count
            for i in range(have, count):
                if level == 0:
                    value = self._leaf_from_record(i)
                else:
                    value = merkle.node_hash(
                        self._hash(level - 1, 2 * i), self._hash(level - 1, 2 * i + 1)
                    )
                handle.seek(0, os.SEEK_END)
                handle.write(value)
            handle.flush()
            if count < 2:
                break
            count //= 2
            level += 1
        heads = self.directory / "heads.jsonl"
        if heads.exists():
            text = heads.read_bytes()
            if text and not text.endswith(b"\n"):  # a head torn by a crash: never returned
                with open(heads, "r+b") as handle:
                    handle.truncate(text.rfind(b"\n") + 1)
        last = self._last_head()
        if self._size and (last is None or last["signed"]["size"] != self._size):
            self._sign_head()

    def _offset(self, index: int) -> int:
        self._index.seek(index * _OFFSET.size)
        (offset,) = _OFFSET.unpack(self._index.read(_OFFSET.size))
        return int(offset)

    def _leaf_from_record(self, index: int) -> bytes:
        record = self._read_record(self._offset(index))
        if record is None:
            raise StoreError(f"{self.directory}: record {index} is corrupt")
        return record[1]

    def _hash(self, level: int, index: int) -> bytes:
        handle = self._level(level)
        handle.seek(index * 32)
        return bytes(handle.read(32))

    # -- reading ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries in the log."""
        return self._size

    def entry(self, index: int) -> bytes:
        """The canonical JSON of entry ``index``."""
        record = self._read_record(self._offset(index))
        if record is None:
            raise StoreError(f"{self.directory}: record {index} is corrupt")
        return record[0]

    def record_signature(self, index: int) -> bytes:
        """The log key's signature of record ``index``."""
        record = self._read_record(self._offset(index))
        if record is None:
            raise StoreError(f"{self.directory}: record {index} is corrupt")
        return record[2]

    def genesis_key(self) -> str:
        """The key that signed the first entry (PEM)."""
        genesis = self.directory / "genesis.pem"
        return (genesis if genesis.exists() else self.directory / "public.pem").read_text()

    def leaf(self, index: int) -> bytes:
        """The leaf hash of entry ``index``."""
        return self._hash(0, index)

    def range_hash(self, start: int, end: int) -> bytes:
        """MTH of leaves ``start`` to ``end`` (exclusive), from the stored perfect subtrees."""
        n = end - start
        if n == 1:
            return self._hash(0, start)
        if n & (n - 1) == 0 and start % n == 0:
            return self._hash(n.bit_length() - 1, start // n)
        k = merkle.split(n)
        return merkle.node_hash(self.range_hash(start, start + k), self.range_hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The tree hash of the first ``size`` entries (all by default)."""
        size = self._size if size is None else size
        return merkle.EMPTY_ROOT if size == 0 else self.range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of entry ``index`` in the tree of ``size`` entries."""
        return merkle.inclusion_proof(self.range_hash, index, self._size if size is None else size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Proof that the tree of ``size1`` entries is a prefix of the tree of ``size2``."""
        return merkle.consistency_proof(
            self.range_hash, size1, self._size if size2 is None else size2
        )

    def heads(self) -> list[dict[str, Any]]:
        """Every signed tree head, oldest first."""
        path = self.directory / "heads.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # -- writing ---------------------------------------------------------------------------

    def append(self, entry: dict[str, Any]) -> int:
        """Append one entry (durably), sign a new tree head; returns the entry's index."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[dict[str, Any]]) -> list[int]:
        """Append entries with one sync for the batch, then sign one new tree head."""
        indices: list[int] = []
        offsets: list[tuple[int, bytes]] = []
        self._entries.seek(0, os.SEEK_END)
        for entry in entries:
            payload = canonical(entry)
            leaf = merkle.leaf_hash(payload)
            index = self._size + len(indices)
            signature = self.signer.private.sign(record_message(index, leaf))
            offsets.append((self._end, leaf))
            record = _HEADER.pack(MAGIC, len(payload)) + payload + leaf + signature
            self._entries.write(record)
            self._end += len(record)
            indices.append(index)
        if not indices:
            return []
        _sync(self._entries)
        self._index.seek(0, os.SEEK_END)
        self._index.write(b"".join(_OFFSET.pack(o) for o, _ in offsets))
        _sync(self._index)
        for _, leaf in offsets:
            self._add_leaf(leaf)
        for handle in self._levels:
            handle.flush()
        self._sign_head()
        return indices

    def rotate(self, new: Signer, event: dict[str, Any]) -> int:
        """Hand the log to a new key: a ``key_rotated`` entry naming it, signed by the old key;
        every later record and tree head is signed by the new one. Returns the entry's index."""
        entry = {
            **event,
            "type": "key_rotated",
            "old_key_id": self.signer.key_id,
            "new_key_id": new.key_id,
            "new_public_key": new.public_pem,
        }
        index = self.append(entry)  # durable, with a tree head still signed by the old key
        self._signer = new
        staged = self.directory / "public.pem.new"
        staged.write_text(new.public_pem)
        os.replace(staged, self.directory / "public.pem")
        return index

    def last_entry(self) -> dict[str, Any] | None:
        """The newest entry, parsed (None for an empty log)."""
        if not self._size:
            return None
        value: dict[str, Any] = json.loads(self.entry(self._size - 1))
        return value

    def _add_leaf(self, leaf: bytes) -> None:
        index = self._size
        self._level(0).seek(0, os.SEEK_END)
        self._level(0).write(leaf)
        level, value = 0, leaf
        while index & 1:  # the new leaf completes a perfect subtree of 2^(level+1)
            value = merkle.node_hash(self._hash(level, index - 1), value)
            index //= 2
            level += 1
            handle = self._level(level)
            handle.seek(0, os.SEEK_END)
            handle.write(value)
        self._size += 1

    def _sign_head(self) -> dict[str, Any]:
        head = {
            "log_id": self.signer.key_id,
            "size": self._size,
            "root": self.root().hex(),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        signed = self.signer.sign_json(head)
        with open(self.directory / "heads.jsonl", "ab") as handle:
            handle.write(canonical(signed) + b"\n")
            _sync(handle)
        return signed

    def _last_head(self) -> dict[str, Any] | None:
        path = self.directory / "heads.jsonl"
        if not path.exists() or path.stat().st_size == 0:
            return None
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 4096))
            tail = handle.read().splitlines()
        complete = [line for line in tail if line.strip()]
        for line in reversed(complete):
            try:
                head: dict[str, Any] = json.loads(line)
                return head
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
        return None

    def latest_head(self) -> dict[str, Any]:
        """The newest signed tree head (signing one for an empty log)."""
        return self._last_head() or self._sign_head()

    def close(self) -> None:
        """Close the files."""
        for handle in [self._entries, self._index, *self._levels]:
            handle.close()

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_log(directory: Path, against: list[dict[str, Any]] | None = None) -> list[str]:
    """Re-check a whole log from its records alone: every record's hash and signature by the
    log's key, the order, every stored tree head's signature and root, and consistency with
    earlier signed tree heads given by an auditor. Returns the problems (none: it verifies)."""
    problems: list[str] = []
    public_path = directory / "public.pem"
    if not public_path.exists():
        return [f"{directory}: not a medlab log (no public.pem)"]
    genesis_path = directory / "genesis.pem"
    public = (genesis_path if genesis_path.exists() else public_path).read_text()
    keys = {key_id(public): public}  # every key the log has been signed by
    active = [(0, public)]  # (first entry it signs, key)
    leaves: list[bytes] = []
    data = (directory / "entries.bin").read_bytes() if (directory / "entries.bin").exists() else b""
    index_bytes = (
        (directory / "index.bin").read_bytes() if (directory / "index.bin").exists() else b""
    )
    offsets = [o for (o,) in struct.iter_unpack(">Q", index_bytes[: len(index_bytes) // 8 * 8])]
    position = 0
    while position < len(data):
        i = len(leaves)
        if i < len(offsets) and offsets[i] != position:
            problems.append(f"entry {i}: the index points elsewhere (offset {offsets[i]})")
        if data[position : position + 4] != MAGIC or position + _HEADER.size > len(data):
            problems.append(f"entry {i}: no record at byte {position}")
            break
        _, length = _HEADER.unpack_from(data, position)
        start = position + _HEADER.size
        payload = data[start : start + length]
        leaf = data[start + length : start + length + 32]
        signature = data[start + length + 32 : start + length + _TAIL]
        if merkle.leaf_hash(payload) != leaf:
            problems.append(f"entry {i}: its content does not match its hash (edited)")
        if not verify(public, record_message(i, leaf), base64.b64encode(signature).decode()):
            problems.append(
                f"entry {i}: not signed by the log's key for this position "
                "(added, moved or edited behind the log's back)"
            )
        leaves.append(merkle.leaf_hash(payload))
        position = start + length + _TAIL
        rotated = _rotation(payload, public)
        if rotated is not None:  # a rotation signed by the key active here hands over
            public = rotated
            keys[key_id(public)] = public
            active.append((i + 1, public))
    if len(offsets) != len(leaves):
        problems.append(f"the index lists {len(offsets)} entries, the records hold {len(leaves)}")
    heads = []
    path = directory / "heads.jsonl"
    if path.exists():
        heads = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    sizes = set()
    for head in [*heads, *(against or [])]:
        try:
            sizes.add(int(head["signed"]["size"]))
        except (KeyError, TypeError, ValueError):
            continue
    roots = merkle.prefix_roots(leaves, {s for s in sizes if s <= len(leaves)})
    for source, group in (("stored", heads), ("given", against or [])):
        for head in group:
            problems += _check_head(head, active, roots, len(leaves), source)
    if key_id(public_path.read_text()) != key_id(public):
        problems.append("public.pem is not the key the log's rotations lead to")
    if heads and heads[-1]["signed"]["size"] != len(leaves):
        problems.append(
            f"the newest signed tree head covers {heads[-1]['signed']['size']} entries, "
            f"the log holds {len(leaves)}"
        )
    return problems


def _rotation(payload: bytes, current: str) -> str | None:
    """The new key a ``key_rotated`` entry hands over to, if it is one from ``current``."""
    if b'"key_rotated"' not in payload:
        return None
    try:
        entry = json.loads(payload)
        if entry.get("type") != "key_rotated" or entry.get("old_key_id") != key_id(current):
            return None
        new = str(entry["new_public_key"])
        return new if key_id(new) == entry.get("new_key_id") else None
    except (ValueError, KeyError, TypeError):
        return None


def key_at(active: list[tuple[int, str]], size: int) -> str:
    """The key that signs the tree head of ``size`` entries: the one that signed its last
    entry (a rotation entry and the head after it are still the old key's)."""
    return [key for start, key in active if start <= max(size - 1, 0)][-1]


def _check_head(
    head: dict[str, Any],
    active: list[tuple[int, str]],
    roots: dict[int, bytes],
    entries: int,
    source: str,
) -> list[str]:
    try:
        signed = head["signed"]
        size, root_hex = int(signed["size"]), str(signed["root"])
    except (KeyError, TypeError, ValueError):
        return [f"a {source} tree head is malformed"]
    label = f"{source} tree head of size {size}"
    public = key_at(active, size)
    if signed.get("log_id") != key_id(public) or not verify_json(public, head):
        return [f"{label}: its signature is not the log key's"]
    if size > entries:
        return [f"{label}: the log holds only {entries} entries (entries deleted)"]
    if roots[size].hex() != root_hex:
        return [f"{label}: the log's first {size} entries hash to another root (changed)"]
    return []
