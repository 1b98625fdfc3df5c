"""A node's identity: its signing key, its pseudonym secret and its transparency log.

They belong to the hospital, not to one store file. ``medlab node init STORE --identity DIR``
keeps them in ``DIR`` (``node.key``, ``node.secret``, ``ledger/``; the directory mode 0700)
and leaves a pointer beside the store (``STORE.identity``, the directory's absolute path), so
that a store rebuilt from the same export under the same identity gets the same pseudonyms,
the same snapshot fingerprint and continues the same log. A store without a pointer keeps
its identity beside itself (``STORE.key``, ``STORE.secret``, ``STORE.ledger/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medlab.errors import StoreError

_MAX_POINTER = 4096


@dataclass(frozen=True)
class Identity:
    """Where a node's key, secret and log live (``directory`` None: beside the store)."""

    directory: Path | None
    key: Path
    secret: Path
    ledger: Path


def pointer(store: Path) -> Path:
    """The file beside ``store`` that names its identity directory."""
    return store.with_suffix(".identity")


def in_directory(directory: Path) -> Identity:
    """The identity kept in ``directory``."""
    return Identity(
        directory, directory / "node.key", directory / "node.secret", directory / "ledger"
    )


def identity(store: Path) -> Identity:
    """The identity of ``store``: the directory its pointer names, else beside the store."""
    link = pointer(store)
    if link.is_file():
        if link.stat().st_size > _MAX_POINTER:
            raise StoreError(f"{link}: not a medlab identity pointer (too large)")
        try:
            text = link.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise StoreError(f"{link}: not a medlab identity pointer (not UTF-8)") from None
        directory = Path(text)
        if not text or not directory.is_absolute():
            raise StoreError(f"{link}: not a medlab identity pointer (an absolute path)")
        if not directory.is_dir():
            raise StoreError(f"{link}: the identity directory {directory} is missing")
        return in_directory(directory)
    return Identity(
        None, store.with_suffix(".key"), store.with_suffix(".secret"), store.with_suffix(".ledger")
    )


def attach(store: Path, directory: Path) -> Identity:
    """Make ``directory`` the identity of ``store`` (created, mode 0700, when missing; an
    existing one is reused as it is). A store that already has another identity, or key or
    secret files of its own, is refused: two identities for one store would split its
    pseudonyms and its log."""
    directory = directory.resolve()
    current = identity(store)
    if current.directory == directory:
        return current
    if current.directory is not None:
        raise StoreError(f"{store}: already uses the identity {current.directory}")
    own = [p for p in (current.key, current.secret, current.ledger) if p.exists()]
    if own:
        raise StoreError(
            f"{store}: has an identity of its own beside it ({own[0].name}); "
            "move it into the identity directory first"
        )
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"{directory}: not a directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    link = pointer(store)
    staged = link.with_name(link.name + ".tmp")
    staged.write_text(str(directory) + "\n", encoding="utf-8")
    os.replace(staged, link)
    return in_directory(directory)
