"""The stored transparency log: proofs against naive recomputation, tampering, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlab.ledger import merkle
from medlab.ledger.keys import Signer
from medlab.ledger.log import TransparencyLog, verify_log


def _log(tmp_path: Path, entries: int) -> tuple[Path, Signer]:
    signer = Signer.load_or_create(tmp_path / "log.key")
    with TransparencyLog(tmp_path / "log", signer) as log:
        for i in range(entries):
            log.append({"type": "test", "i": i, "text": f"entry {i}"})
    return tmp_path / "log", signer


@settings(max_examples=15, deadline=None)
@given(size=st.integers(1, 70), data=st.data())
def test_stored_proofs_verify_against_naive_roots(
    tmp_path_factory: pytest.TempPathFactory, size: int, data: st.DataObject
) -> None:
    directory, signer = _log(tmp_path_factory.mktemp("log"), size)
    with TransparencyLog(directory, signer) as log:
        leaves = [merkle.leaf_hash(log.entry(i)) for i in range(size)]
        n = data.draw(st.integers(1, size))
        i = data.draw(st.integers(0, n - 1))
        m = data.draw(st.integers(1, n))
        assert log.root(n) == merkle.root(leaves[:n])
        assert merkle.verify_inclusion(leaves[i], i, n, log.inclusion_proof(i, n), log.root(n))
        assert merkle.verify_consistency(
            m, n, log.root(m), log.root(n), log.consistency_proof(m, n)
        )
    assert verify_log(directory) == []


def _records(directory: Path) -> tuple[bytes, list[int]]:
    data = (directory / "entries.bin").read_bytes()
    index = (directory / "index.bin").read_bytes()
    return data, [o for (o,) in struct.iter_unpack(">Q", index)]


def test_an_edited_entry_is_detected(tmp_path: Path) -> None:
    directory, _ = _log(tmp_path, 10)
    data, offsets = _records(directory)
    at = data.index(b"entry 4", offsets[4])
    (directory / "entries.bin").write_bytes(data[:at] + b"entry 5" + data[at + 7 :])
    problems = verify_log(directory)
    assert any("entry 4: its content does not match its hash" in p for p in problems)


def test_an_edited_entry_with_a_recomputed_hash_is_detected(tmp_path: Path) -> None:
    directory, _ = _log(tmp_path, 10)
    data, offsets = _records(directory)
    _, length = struct.unpack_from(">4sI", data, offsets[4])
    start = offsets[4] + 8
    payload = data[start : start + length].replace(b"entry 4", b"entry X")
    forged = data[:start] + payload + merkle.leaf_hash(payload) + data[start + length + 32 :]
    (directory / "entries.bin").write_bytes(forged)
    problems = verify_log(directory)
    assert any("entry 4: not signed by the log's key" in p for p in problems)
    assert any("hash to another root" in p for p in problems)


def test_deleting_the_last_entry_is_detected(tmp_path: Path) -> None:
    directory, _ = _log(tmp_path, 10)
    data, offsets = _records(directory)
    (directory / "entries.bin").write_bytes(data[: offsets[9]])
    (directory / "index.bin").write_bytes(b"".join(struct.pack(">Q", o) for o in offsets[:9]))
    problems = verify_log(directory)
    assert any("entries deleted" in p for p in problems)


def test_deleting_or_reordering_entries_in_the_middle_is_detected(tmp_path: Path) -> None:
    directory, _ = _log(tmp_path, 10)
    data, offsets = _records(directory)
    ends = [*offsets[1:], len(data)]
    pieces = [data[a:b] for a, b in zip(offsets, ends, strict=True)]
    for name, order in (("deleted", [0, 1, 2, 4, 5, 6, 7, 8, 9]), ("swapped", [0, 1, 3, 2, 4])):
        kept = [pieces[i] for i in order]
        (directory / "entries.bin").write_bytes(b"".join(kept))
        starts = [sum(len(p) for p in kept[:i]) for i in range(len(kept))]
        (directory / "index.bin").write_bytes(b"".join(struct.pack(">Q", o) for o in starts))
        problems = verify_log(directory)
        assert any("not signed by the log's key for this position" in p for p in problems), name


def test_an_entry_appended_behind_the_logs_back_is_detected(tmp_path: Path) -> None:
    directory, _ = _log(tmp_path, 5)
    intruder = Signer.load_or_create(tmp_path / "intruder.key")
    # The intruder writes a well-formed record signed with another key, and its offset.
    other = tmp_path / "other"
    with TransparencyLog(other, intruder) as log:
        for i in range(6):
            log.append({"type": "test", "i": i, "text": "forged" if i == 5 else f"entry {i}"})
    data, offsets = _records(other)
    forged = data[offsets[5] :]
    size = (directory / "entries.bin").stat().st_size
    with open(directory / "entries.bin", "ab") as handle:
        handle.write(forged)
    with open(directory / "index.bin", "ab") as handle:
        handle.write(struct.pack(">Q", size))
    problems = verify_log(directory)
    assert any("entry 5: not signed by the log's key" in p for p in problems)
    assert any("newest signed tree head covers 5 entries" in p for p in problems)


def test_consistency_with_an_auditors_earlier_tree_head(tmp_path: Path) -> None:
    directory, signer = _log(tmp_path, 8)
    with TransparencyLog(directory, signer) as log:
        earlier = log.latest_head()
        log.append({"type": "test", "i": 8})
    assert verify_log(directory, against=[earlier]) == []
    tampered = json.loads(json.dumps(earlier))
    tampered["signed"]["root"] = "00" * 32
    problems = verify_log(directory, against=[tampered])
    assert any("given tree head of size 8: its signature" in p for p in problems)


CRASHER = """
import sys
from pathlib import Path
from medlab.ledger.keys import Signer
from medlab.ledger.log import TransparencyLog
directory = Path(sys.argv[1])
signer = Signer.load_or_create(directory.parent / "log.key")
with TransparencyLog(directory, signer) as log:
    i = log.size
    while True:
        log.append({"type": "crash-test", "i": i, "pad": "x" * (i % 700)})
        print(i, flush=True)
        i += 1
"""


def test_a_process_killed_while_appending_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    rng = random.Random(20261129)
    returned: set[int] = set()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for _round in range(6):
        process = subprocess.Popen(
            [sys.executable, "-c", CRASHER, str(directory)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        started = time.monotonic()
        # Let it append for a random while, reading what it reports as returned.
        deadline = started + rng.uniform(0.4, 1.2)
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if line:
                returned.add(int(line))
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate()
        returned |= {int(x) for x in rest.split()}
        assert verify_log(directory) == [] or _recovered_then_verifies(directory, tmp_path)
    signer = Signer.load_or_create(tmp_path / "log.key")
    with TransparencyLog(directory, signer) as log:
        present = [json.loads(log.entry(i))["i"] for i in range(log.size)]
    assert verify_log(directory) == []
    assert present == list(range(len(present)))  # in order, no gaps, no duplicates
    assert returned <= set(present) and len(returned) > 20


def _recovered_then_verifies(directory: Path, tmp_path: Path) -> bool:
    """A kill can land between a record and its tree head; opening the log recovers that."""
    signer = Signer.load_or_create(tmp_path / "log.key")
    with TransparencyLog(directory, signer):
        pass
    return verify_log(directory) == []


def test_a_rotated_key_continues_the_log(tmp_path: Path) -> None:
    from medlab.ledger.parties import Party

    party = Party("node", tmp_path / "node.key", tmp_path / "node.ledger")
    party.log("data_loaded", fingerprint="sha256:aa")
    first = party.signer.key_id
    old, new = party.rotate()
    assert old == first and new == party.signer.key_id != first
    party.log("budget_spent", project="p", epsilon=0.5)
    assert verify_log(party.log_dir) == []
    with TransparencyLog(party.log_dir, None) as log:
        rotation = json.loads(log.entry(1))
        assert rotation["type"] == "key_rotated" and rotation["old_key_id"] == first
        heads = log.heads()
    assert heads[-1]["signed"]["log_id"] == new
    # The old key can no longer write: the log now belongs to the new one.
    with pytest.raises(Exception, match="another key"):
        TransparencyLog(party.log_dir, Signer(Signer.load_or_create(tmp_path / "x.key").private))
    # A forged hand-over to an intruder's key, appended behind the log's back, is caught.
    intruder = Signer.load_or_create(tmp_path / "intruder.key")
    other = Party("other", tmp_path / "intruder.key", tmp_path / "other.ledger")
    other.log("x")
    other.log("key_rotated", old_key_id=new, new_key_id=intruder.key_id)
    data, offsets = _records(other.log_dir)
    size = (party.log_dir / "entries.bin").stat().st_size
    with open(party.log_dir / "entries.bin", "ab") as handle:
        handle.write(data[offsets[1] :])
    with open(party.log_dir / "index.bin", "ab") as handle:
        handle.write(struct.pack(">Q", size))
    assert any("entry 3: not signed" in p for p in verify_log(party.log_dir))


def test_an_interrupted_rotation_is_completed_or_abandoned(tmp_path: Path) -> None:
    from medlab.ledger.parties import Party

    party = Party("node", tmp_path / "node.key", tmp_path / "node.ledger")
    party.log("data_loaded", fingerprint="sha256:aa")
    before = party.signer.key_id
    # Crashed after staging the new key, before the log heard of it: abandoned.
    Signer.load_or_create(tmp_path / "node.key.new")
    assert party.signer.key_id == before and not (tmp_path / "node.key.new").exists()
    # Crashed after the hand-over entry was durable, before the key files moved: completed.
    current = party.signer
    staged = Signer.load_or_create(tmp_path / "node.key.new")
    with TransparencyLog(party.log_dir, current) as log:
        log.append(
            {
                "type": "key_rotated",
                "old_key_id": before,
                "new_key_id": staged.key_id,
                "new_public_key": staged.public_pem,
            }
        )
    assert party.signer.key_id == staged.key_id
    party.log("after", n=1)
    assert verify_log(party.log_dir) == []
