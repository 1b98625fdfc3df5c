"""Node stores: one DuckDB file holding a site's OMOP CDM v5.4 data and medlab's own metadata."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from medlab import __version__
from medlab.cdm import identity, schema
from medlab.errors import StoreBusy, StoreError
from medlab.inputs import regular_file

STORE_FORMAT = 1
Row = tuple[Any, ...]
META_SCHEMA = "medlab"


def _create_statements() -> list[str]:
    statements = [
        f"CREATE SCHEMA {schema.RESULTS_SCHEMA}",
        f"CREATE SCHEMA {META_SCHEMA}",
        f"CREATE TABLE {META_SCHEMA}.store_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        f"""CREATE TABLE {META_SCHEMA}.load_log (
            load_id INTEGER PRIMARY KEY, loaded_at TIMESTAMP NOT NULL, source VARCHAR NOT NULL,
            source_cdm_version VARCHAR, files JSON NOT NULL, rows_loaded BIGINT NOT NULL,
            warnings JSON NOT NULL, medlab_version VARCHAR NOT NULL)""",
    ]
    for table in schema.tables().values():
        cols = ",\n  ".join(
            f'"{c.name}" {c.duckdb_type}{" NOT NULL" if c.required else ""}' for c in table.columns
        )
        statements.append(f"CREATE TABLE {table.qualified} (\n  {cols}\n)")
    return statements


def fetch_first(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> Row | None:
    """The first row of a query, or None when it returns none, consuming the whole result.

    DuckDB 2 refuses new work on a connection whose previous result was not read to the end.
    """
    rows = con.execute(sql, params or []).fetchall()
    return tuple(rows[0]) if rows else None


def rows_if_recorded(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[Row]:
    """The rows of a query over one of medlab's bookkeeping tables, or none when the table
    was never made (nothing was recorded yet: reading must not create it)."""
    try:
        return [tuple(r) for r in con.execute(sql, params or []).fetchall()]
    except duckdb.CatalogException:
        return []


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Row:
    """The first row of a query that always returns one (an aggregate, say)."""
    row = fetch_first(con, sql, params)
    if row is None:
        raise LookupError(f"query returned no rows: {sql[:80]}")
    return row


def init_store(path: Path, identity_dir: Path | None = None) -> None:
    """Create an empty node store at ``path``; refuse to overwrite an existing file.
    ``identity_dir``: the hospital's identity (key, pseudonym secret, log) to create or
    reuse (:mod:`medlab.cdm.identity`); else the store keeps its own beside it."""
    if path.exists():
        raise StoreError(
            f"{path}: a file already exists here; a node store is never overwritten",
            hint="choose a new path, or remove the old store yourself if you mean to",
        )
    if not path.parent.exists():
        raise StoreError(f"{path.parent}: the directory does not exist")
    linked = False
    if identity_dir is not None:
        linked = not identity.pointer(path).exists()
        identity.attach(path, identity_dir)
    try:
        _create(path)
    except BaseException:
        if linked:
            identity.pointer(path).unlink(missing_ok=True)
        raise
    from medlab.privacy.secret import node_secret

    node_secret(path)  # made with the store: a refused first load then changes nothing


def _create(path: Path) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN TRANSACTION")
        for statement in _create_statements():
            con.execute(statement)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        info = {
            "store_format": str(STORE_FORMAT),
            "cdm_version": schema.CDM_VERSION,
            "created_at": now,
            "created_by": f"medlab {__version__}",
        }
        con.executemany(f"INSERT INTO {META_SCHEMA}.store_info VALUES (?, ?)", list(info.items()))
        con.execute("COMMIT")
    except BaseException:
        con.close()
        path.unlink(missing_ok=True)
        raise
    con.close()


class _StoreLock:
    """One store's lock: a re-entrant lock among this process's threads, held together with
    an exclusive ``flock`` on ``STORE.lock`` among processes (taken on the outermost entry).

    While a hold encloses the opens inside it (a study run holds its nodes, a node run its
    store), the lock keeps one connection open until the outermost release: DuckDB then
    reuses the open database for every connection to the file instead of reading it again
    (about 25 ms for Eunomia's store, 0.03 ms reused). The kept connection has the
    configuration of the first open; a read-only open under a read-write one shares the
    read-write database (the hold is exclusive, so nobody else reads or writes meanwhile)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = threading.RLock()
        self.depth = 0
        self.fd: int | None = None
        self.kept: duckdb.DuckDBPyConnection | None = None
        self.kept_read_only = False
        self.users = 0  # connections open_store has handed out and not yet closed

    def connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A connection to the store (the caller holds this lock)."""
        path = str(self.path)
        if self.kept is not None and self.kept_read_only and not read_only and not self.users:
            self._release_kept()  # a read-write open after read-only ones: reopen
        if self.kept is not None and (read_only or not self.kept_read_only):
            return duckdb.connect(path, read_only=self.kept_read_only)
        con = duckdb.connect(path, read_only=read_only)
        if self.depth > 1 and self.kept is None:  # an enclosing hold: keep the database
            self.kept, self.kept_read_only = duckdb.connect(path, read_only=read_only), read_only
        return con

    def _release_kept(self) -> None:
        if self.kept is not None:
            self.kept.close()
            self.kept = None

    def __enter__(self) -> None:
        self.acquire()

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (None: ``$MEDLAB_LOCK_TIMEOUT``;
        :class:`StoreBusy` past it)."""
        if not self.local.acquire(timeout=-1 if timeout is None else timeout):
            raise StoreBusy(f"{self.path}: the store is busy (another thread holds it)")
        try:
            if self.depth == 0:
                self.fd = self._flock(timeout)
            self.depth += 1
        except BaseException:
            self.local.release()
            raise

    def _flock(self, timeout: float | None) -> int:
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"{lock}: cannot create the store's lock ({exc.strerror})") from None
        wait = float(os.environ.get("MEDLAB_LOCK_TIMEOUT", "600")) if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreBusy(
                        f"{self.path}: the store is busy: another medlab process has held "
                        f"{lock.name} for more than {wait:g} s",
                        hint="wait for it to finish, or raise MEDLAB_LOCK_TIMEOUT",
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Let go of one hold (the outermost one frees the store for others)."""
        self.depth -= 1
        if self.depth == 0:
            self._release_kept()  # DuckDB checkpoints before another process opens it
        if self.depth == 0 and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        self.local.release()


_LOCKS: dict[str, _StoreLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def store_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the store exclusively: other threads and processes wait (up to ``timeout``
    seconds, else ``$MEDLAB_LOCK_TIMEOUT``, default 600; :class:`StoreBusy` past it).
    Re-entrant within a thread, so a study run holds its nodes from first cohort to last
    release while the steps inside open them."""
    lock = _lock_of(path)
    lock.acquire(timeout)
    try:
        yield
    finally:
        lock.release()


def _lock_of(path: Path) -> _StoreLock:
    resolved = path.resolve()
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(resolved), _StoreLock(resolved))


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Everything inside commits together, or rolls back together on any error."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@contextmanager
def open_store(path: Path, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open an existing node store, checking that it is one."""
    if not path.exists():
        raise StoreError(
            f"{path}: no node store here", hint=f"create one with: medlab node init {path}"
        )
    regular_file(path, "node store", StoreError)
    lock = _lock_of(path)
    with lock:
        try:
            con = lock.connect(read_only)
        except duckdb.Error as exc:
            raise StoreError(f"{path}: cannot open as a DuckDB node store ({exc})") from None
        lock.users += 1
        try:
            _check(path, con)
            if not read_only:
                from medlab.cdm.outbox import flush

                flush(con, path)
            yield con
        finally:
            lock.users -= 1
            con.close()


def _check(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Refuse a file that is not a medlab store; set the session up."""
    try:
        fmt = fetch_first(
            con, f"SELECT value FROM {META_SCHEMA}.store_info WHERE key = 'store_format'"
        )
    except duckdb.Error:
        fmt = None
    if fmt is None:
        raise StoreError(
            f"{path}: a DuckDB file, but not a medlab node store",
            hint="create one with: medlab node init NEW_PATH, then load into it",
        )
    if int(fmt[0]) != STORE_FORMAT:
        raise StoreError(f"{path}: store format {fmt[0]}, this medlab reads {STORE_FORMAT}")
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB's own progress bar would write into our stdout (and into --json output).
    con.execute("SET enable_progress_bar = false")
    # A bounded working set; DuckDB spills larger sorts and joins to disk.
    con.execute("SET memory_limit = ?", [os.environ.get("MEDLAB_MEMORY_LIMIT", "4GB")])


def record_load(
    con: duckdb.DuckDBPyConnection,
    *,
    source: str,
    source_cdm_version: str,
    files: list[dict[str, Any]],
    rows: int,
    warnings: list[str],
) -> int:
    """Append an entry to the store's load log (inside the caller's transaction); its id."""
    (load_id,) = fetch_one(con, f"SELECT coalesce(max(load_id), 0) + 1 FROM {META_SCHEMA}.load_log")
    con.execute(
        f"INSERT INTO {META_SCHEMA}.load_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            load_id,
            dt.datetime.now(dt.UTC).replace(tzinfo=None),
            source,
            source_cdm_version,
            json.dumps(files),
            rows,
            json.dumps(warnings),
            __version__,
        ],
    )
    return int(load_id)


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows in every CDM and results table, by table name."""
    counts: dict[str, int] = {}
    for table in schema.tables().values():
        (n,) = fetch_one(con, f"SELECT count(*) FROM {table.qualified}")
        counts[table.name] = int(n)
    return counts


def store_info(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The store's own metadata (format, CDM version, creation time)."""
    return dict(con.execute(f"SELECT key, value FROM {META_SCHEMA}.store_info").fetchall())


def load_history(con: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    """Every load into the store, oldest first."""
    rows = con.execute(
        f"""SELECT load_id, loaded_at, source, source_cdm_version, rows_loaded, warnings
            FROM {META_SCHEMA}.load_log ORDER BY load_id"""
    ).fetchall()
    return [
        {
            "load_id": r[0],
            "loaded_at": r[1].isoformat(),
            "source": r[2],
            "source_cdm_version": r[3],
            "rows_loaded": r[4],
            "warnings": len(json.loads(r[5])),
        }
        for r in rows
    ]
