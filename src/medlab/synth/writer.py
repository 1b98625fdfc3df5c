"""Bulk-insert column arrays into node store tables through Arrow (never row by row)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from medlab.cdm import schema

_MICROS_PER_DAY = 86_400_000_000
_ARROW_TYPES = {
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "numeric": pa.float64(),
    "varchar": pa.string(),
    "text": pa.string(),
}


def _arrow(values: np.ndarray, col: schema.Column) -> pa.Array:
    """Arrow array of a column's type; dates arrive as days since 1970-01-01."""
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    data = np.ma.getdata(values)
    if col.ddl_type == "date":
        return pa.array(data.astype(np.int32), mask=mask).cast(pa.date32())
    if col.ddl_type == "timestamp":
        micros = data.astype(np.int64) * _MICROS_PER_DAY
        return pa.array(micros, mask=mask).cast(pa.timestamp("us"))
    if col.ddl_type in ("varchar", "text"):
        return pa.array(data.astype(object), type=pa.string(), mask=mask)
    return pa.array(data, mask=mask).cast(_ARROW_TYPES[col.ddl_type])


def to_arrow(table: schema.Table, parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """One Arrow table from column-array parts, each holding some of the table's columns."""
    tables = []
    for part in parts:
        n = len(next(iter(part.values())))
        if n == 0:
            continue
        arrays = [
            _arrow(part[col.name], col)
            if col.name in part
            else pa.nulls(n, type=_ARROW_TYPES[col.ddl_type])
            for col in table.columns
        ]
        tables.append(pa.table(arrays, names=list(table.column_names)))
    if not tables:
        return pa.table(
            {
                name: pa.array([], type=_ARROW_TYPES[col.ddl_type])
                for name, col in zip(table.column_names, table.columns)
            }
        )
    return pa.concat_tables(tables)


def insert(con: duckdb.DuckDBPyConnection, table: schema.Table, data: pa.Table) -> int:
    """Append ``data`` to ``table``; returns the number of rows written."""
    if data.num_rows == 0:
        return 0
    con.register("medlab_chunk", data)
    try:
        con.execute(f"INSERT INTO {table.qualified} BY NAME SELECT * FROM medlab_chunk")
    finally:
        con.unregister("medlab_chunk")
    return data.num_rows
