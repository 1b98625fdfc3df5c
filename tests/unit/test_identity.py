"""A node's identity directory: created or reused, never two for one store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from medlab.cdm import identity
from medlab.cdm.store import init_store
from medlab.errors import StoreError
from medlab.ledger import parties
from medlab.privacy.secret import node_secret, secret_path


def test_init_with_an_identity_keeps_key_secret_and_log_there(tmp_path: Path) -> None:
    hospital = tmp_path / "hospital"
    store = tmp_path / "a.duckdb"
    init_store(store, hospital)
    assert secret_path(store) == hospital / "node.secret"
    assert stat.S_IMODE(hospital.stat().st_mode) == 0o700
    assert stat.S_IMODE((hospital / "node.secret").stat().st_mode) == 0o600
    key = parties.node(store).signer.key_id
    assert (hospital / "node.key").exists() and not store.with_suffix(".key").exists()
    # A second store of the same hospital reuses it: the same secret, the same key.
    other = tmp_path / "b.duckdb"
    init_store(other, hospital)
    assert node_secret(other) == node_secret(store)
    assert parties.node(other).signer.key_id == key


def test_a_store_keeps_its_own_identity_when_none_is_named(tmp_path: Path) -> None:
    store = tmp_path / "a.duckdb"
    init_store(store)
    assert identity.identity(store).directory is None
    assert secret_path(store) == store.with_suffix(".secret")


def test_two_identities_for_one_store_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "a.duckdb"
    init_store(store, tmp_path / "one")
    with pytest.raises(StoreError, match="already uses the identity"):
        identity.attach(store, tmp_path / "two")
    own = tmp_path / "b.duckdb"
    init_store(own)
    with pytest.raises(StoreError, match="identity of its own"):
        identity.attach(own, tmp_path / "one")
    assert not identity.pointer(own).exists()


def test_a_refused_init_leaves_no_pointer(tmp_path: Path) -> None:
    store = tmp_path / "missing" / "a.duckdb"
    with pytest.raises(StoreError, match="does not exist"):
        init_store(store, tmp_path / "hospital")
    assert not identity.pointer(store).exists()
    taken = tmp_path / "taken.duckdb"
    taken.write_text("not a store")
    with pytest.raises(StoreError, match="already exists"):
        init_store(taken, tmp_path / "hospital")
    assert not identity.pointer(taken).exists()


def test_a_broken_pointer_is_a_clear_error(tmp_path: Path) -> None:
    store = tmp_path / "a.duckdb"
    identity.pointer(store).write_text("relative/path\n")
    with pytest.raises(StoreError, match="absolute path"):
        identity.identity(store)
    identity.pointer(store).write_text(str(tmp_path / "gone") + "\n")
    with pytest.raises(StoreError, match="is missing"):
        identity.identity(store)
