"""Helpers shared by tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from medlab.cdm import schema
from medlab.cdm.store import open_store


def split_store(store: Path, parts: int, tmp: Path) -> list[Path]:
    """Copies of a store, each keeping the persons whose id falls in its share."""
    tmp.mkdir(parents=True, exist_ok=True)
    copies = []
    person_tables = [t for t in schema.tables().values() if "person_id" in t.column_names]
    for k in range(parts):
        copy = tmp / f"part{k}.duckdb"
        shutil.copy(store, copy)
        with open_store(copy) as con:
            for t in person_tables:
                con.execute(f"DELETE FROM {t.qualified} WHERE person_id % {parts} <> {k}")
            con.execute(f"DELETE FROM results.cohort WHERE subject_id % {parts} <> {k}")
        copies.append(copy)
    return copies
