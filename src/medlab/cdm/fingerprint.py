"""Snapshot fingerprints: one content hash of a node store's CDM data.

Scheme ``medlab-fp-v1``. Every row is written canonically (each value cast to text and
length-prefixed, NULL as ``-``, columns in DDL order) and hashed with SHA-256. A table's digest
is SHA-256 over its row hashes in sorted order, so the order rows were loaded in does not
matter while a repeated row still counts twice. The snapshot digest is SHA-256 over the
scheme name and, per table in name order, its name, column list, row count and digest. Any
changed value changes its row hash and so the fingerprint. Results tables (cohorts) and
medlab's own metadata are not data and are left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from medlab.cdm import schema

SCHEME = "medlab-fp-v1"
_BATCH_ROWS = 1 << 18
# Tables of up to this many rows are digested together in one query (the sorted row hashes
# of each concatenated in memory: 64 bytes a row, 16 MiB a table at most); larger ones are
# streamed, table by table.
_TOGETHER_ROWS = 1 << 18


@dataclass(frozen=True)
class TableDigest:
    """One table's contribution to a fingerprint."""

    table: str
    rows: int
    sha256: str


def _row_text(table: schema.Table) -> str:
    parts = []
    for col in table.columns:
        value = f'CAST("{col.name}" AS VARCHAR)'
        parts.append(f"coalesce(length({value})::VARCHAR || ':' || {value}, '-')")
    return "concat_ws('|', " + ", ".join(parts) + ")"


def _digests_together(
    con: duckdb.DuckDBPyConnection, tables: list[schema.Table]
) -> dict[str, TableDigest]:
    """The digests of several small tables, from one query: SHA-256 over each table's sorted
    row hashes concatenated is exactly what :func:`table_digest` streams into its hash."""
    if not tables:
        return {}
    query = " UNION ALL ".join(
        f"SELECT '{t.name}', count(*), sha256(coalesce(string_agg(h, '' ORDER BY h), '')) "
        f"FROM (SELECT sha256({_row_text(t)}) AS h FROM {t.qualified})"
        for t in tables
    )
    return {name: TableDigest(name, rows, sha) for name, rows, sha in con.execute(query).fetchall()}


def table_digest(con: duckdb.DuckDBPyConnection, table: schema.Table) -> TableDigest:
    """The order-independent digest of one table."""
    digest = hashlib.sha256()
    rows = 0
    relation = con.sql(f"SELECT sha256({_row_text(table)}) AS h FROM {table.qualified} ORDER BY h")
    # DuckDB 1.x calls the streaming reader fetch_arrow_reader; 2.x calls it to_arrow_reader.
    stream = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    reader = stream(_BATCH_ROWS)
    for batch in reader:
        column = batch.column(0)
        rows += len(column)
        # Each value is 64 hex characters, so the string buffer is an unambiguous concatenation.
        offsets = column.buffers()[1]
        data = column.buffers()[2]
        if data is None or offsets is None:
            continue
        start = int.from_bytes(offsets[column.offset * 4 : column.offset * 4 + 4], "little")
        end = start + 64 * len(column)
        digest.update(memoryview(data)[start:end])
    return TableDigest(table.name, rows, digest.hexdigest())


SNAPSHOT_KEY = "snapshot_fingerprint"


def record_snapshot(con: duckdb.DuckDBPyConnection, fingerprint: str) -> None:
    """Keep the fingerprint of the store's data as it now is (inside a load's transaction:
    CDM data change only by loads), so that requests need not recompute it."""
    con.execute("DELETE FROM medlab.store_info WHERE key = ?", [SNAPSHOT_KEY])
    con.execute("INSERT INTO medlab.store_info VALUES (?, ?)", [SNAPSHOT_KEY, fingerprint])


def recorded_snapshot(con: duckdb.DuckDBPyConnection) -> str | None:
    """The fingerprint the store's last load kept, if any."""
    row = con.execute(
        "SELECT value FROM medlab.store_info WHERE key = ?", [SNAPSHOT_KEY]
    ).fetchall()
    return str(row[0][0]) if row else None


def snapshot_id(con: duckdb.DuckDBPyConnection) -> str:
    """The fingerprint of the store's data: the one its last load kept, else computed."""
    return recorded_snapshot(con) or snapshot_fingerprint(con)[0]


def snapshot_fingerprint(
    con: duckdb.DuckDBPyConnection,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[str, list[TableDigest]]:
    """``sha256:<hex>`` over every CDM table, and the per-table digests it was made from."""
    tables = sorted(schema.cdm_tables(), key=lambda t: t.name)
    counts = dict(
        con.execute(
            " UNION ALL ".join(f"SELECT '{t.name}', count(*) FROM {t.qualified}" for t in tables)
        ).fetchall()
    )
    empty = hashlib.sha256().hexdigest()  # the digest of no row hashes: nothing to read
    together = {t.name: TableDigest(t.name, 0, empty) for t in tables if not counts[t.name]}
    together |= _digests_together(con, [t for t in tables if 0 < counts[t.name] <= _TOGETHER_ROWS])
    top = hashlib.sha256(SCHEME.encode())
    digests = []
    for i, table in enumerate(tables):
        if progress:
            progress(table.name, i, len(tables))
        d = together.get(table.name) or table_digest(con, table)
        digests.append(d)
        header = f"\n{table.name}({','.join(table.column_names)}):{d.rows}:{d.sha256}"
        top.update(header.encode())
    return "sha256:" + top.hexdigest(), digests
