"""Pseudonymization at ingest: what a node stores of the identifiers in its source data.

The steward's ingest policy (YAML/JSON; the defaults below unless given) decides:

- ``pseudonymize_person_ids`` (default on): every ``person_id`` is replaced by a pseudonym
  derived from a keyed HMAC of the source id under the node's secret. The node keeps only
  ``HMAC(source id) → pseudonym`` (``medlab.pseudonyms``), so the same source id gets the same
  pseudonym in every later load, colliding pseudonyms are resolved deterministically, and
  without the secret the source ids cannot be recovered;
- ``drop_identifiers`` (default on): direct identifiers are not stored: the person's source
  value (often the MRN), address lines, precise coordinates and location source values; ZIP
  codes keep their first three digits; provider names, NPI and DEA numbers;
- ``keep_free_text`` (default off): free-text fields (note text and title, NLP snippets and
  lexical variants, observation ``value_as_string``) are emptied unless the steward opts in;
- ``date_shift_max_days`` (default 0, off): each person's event dates move by a keyed offset
  of 1 to that many days, earlier or later, the same for all of the person's dates, so
  intervals are kept. Dates of birth are not shifted (ages move by at most the shift). Date
  shifting is a pseudonymization aid, not HIPAA Safe Harbor de-identification, which removes
  all dates more precise than the year.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from medlab.cdm import schema
from medlab.cdm.store import META_SCHEMA
from medlab.privacy.policy import read_document, validate
from medlab.privacy.secret import keyed_hash, keyed_int, node_secret

IDENTIFIERS: dict[tuple[str, str], str] = {
    ("person", "person_source_value"): "NULL",
    ("location", "address_1"): "NULL",
    ("location", "address_2"): "NULL",
    ("location", "location_source_value"): "NULL",
    ("location", "latitude"): "NULL",
    ("location", "longitude"): "NULL",
    ("location", "zip"): "left({expr}, 3)",
    ("provider", "provider_name"): "NULL",
    ("provider", "npi"): "NULL",
    ("provider", "dea"): "NULL",
}
FREE_TEXT: frozenset[tuple[str, str]] = frozenset(
    {
        ("note", "note_text"),
        ("note", "note_title"),
        ("note_nlp", "snippet"),
        ("note_nlp", "lexical_variant"),
        ("observation", "value_as_string"),
    }
)
_MAP = f"{META_SCHEMA}.pseudonyms"
_PSEUDONYM_BITS = 31  # person_id is a 32-bit INTEGER in CDM v5.4


class IngestPolicy(BaseModel):
    """What a load keeps of identifiers; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pseudonymize_person_ids: bool = True
    drop_identifiers: bool = True
    keep_free_text: bool = False
    date_shift_max_days: Annotated[int, Field(ge=0, le=3650)] = 0


RAW = IngestPolicy(pseudonymize_person_ids=False, drop_identifiers=False, keep_free_text=True)


def load_ingest_policy(path: Path | None) -> IngestPolicy:
    """The ingest policy in ``path`` (YAML or JSON), or the defaults when None."""
    if path is None:
        return IngestPolicy()
    return validate(IngestPolicy, read_document(path, "ingest policy"), str(path), "ingest policy")


class Pseudonymizer:
    """Applies an ingest policy to one load, inside the loader's transaction."""

    def __init__(self, con: duckdb.DuckDBPyConnection, store: Path, policy: IngestPolicy) -> None:
        self.con = con
        self.store = store
        self.policy = policy
        self._secret: bytes | None = None

    @property
    def secret(self) -> bytes:
        """The node secret, read (or created) when a load first needs it."""
        if self._secret is None:
            self._secret = node_secret(self.store)
        return self._secret

    @property
    def _keyed(self) -> bool:
        return self.policy.pseudonymize_person_ids or self.policy.date_shift_max_days > 0

    def joins_persons(self, table: schema.Table) -> bool:
        """Whether rows of ``table`` need the per-person pseudonym and shift."""
        return self._keyed and "person_id" in table.column_names

    def prepare(self, person_expr: str) -> None:
        """Pseudonyms and shifts for the source person ids staged in ``temp.stage``."""
        ids = [
            int(r[0])
            for r in self.con.execute(
                f"SELECT DISTINCT {person_expr} FROM temp.stage WHERE {person_expr} IS NOT NULL"
            ).fetchall()
        ]
        rows = []
        assigned = self._pseudonyms(ids) if self.policy.pseudonymize_person_ids else {}
        span = self.policy.date_shift_max_days
        for source in ids:
            shift = 0
            if span:
                k = keyed_int(self.secret, "date-shift", str(source), 32) % (2 * span)
                shift = k - span if k < span else k - span + 1  # -span..-1, 1..span
            rows.append((source, assigned.get(source, source), shift))
        self.con.execute("DROP TABLE IF EXISTS temp.medlab_pseudonyms")
        self.con.execute(
            """CREATE TEMP TABLE medlab_pseudonyms (
                medlab_source_id BIGINT PRIMARY KEY, medlab_pseudonym INTEGER,
                medlab_shift INTEGER)"""
        )
        if rows:
            batch = pa.table(
                {
                    "medlab_source_id": pa.array([r[0] for r in rows], pa.int64()),
                    "medlab_pseudonym": pa.array([r[1] for r in rows], pa.int32()),
                    "medlab_shift": pa.array([r[2] for r in rows], pa.int32()),
                }
            )
            self.con.register("medlab_pseudonym_batch", batch)
            self.con.execute(
                "INSERT INTO temp.medlab_pseudonyms SELECT * FROM medlab_pseudonym_batch"
            )
            self.con.unregister("medlab_pseudonym_batch")

    def _pseudonyms(self, ids: list[int]) -> dict[int, int]:
        """The pseudonym of each source id: the stored one, or a new keyed one (probing past
        pseudonyms already taken)."""
        self.con.execute(
            f"""CREATE TABLE IF NOT EXISTS {_MAP} (
                source_hash VARCHAR PRIMARY KEY, pseudonym INTEGER NOT NULL UNIQUE)"""
        )
        hashes = {i: keyed_hash(self.secret, "person", str(i)).hex() for i in ids}
        self.con.register(
            "medlab_hash_batch", pa.table({"h": pa.array(list(hashes.values()), pa.string())})
        )
        known = dict(
            self.con.execute(
                f"SELECT m.source_hash, m.pseudonym FROM medlab_hash_batch b "
                f"JOIN {_MAP} m ON m.source_hash = b.h"
            ).fetchall()
        )
        self.con.unregister("medlab_hash_batch")
        out = {i: int(known[h]) for i, h in hashes.items() if h in known}
        fresh = [i for i in ids if i not in out]
        if not fresh:  # event tables of persons already loaded: the usual case
            return out
        taken = {int(p) for (p,) in self.con.execute(f"SELECT pseudonym FROM {_MAP}").fetchall()}
        new_hashes, new_ids = [], []
        for source in fresh:
            h = hashes[source]
            candidate = int(h[:16], 16) >> (64 - _PSEUDONYM_BITS) or 1
            while candidate in taken:
                candidate = candidate % (2**_PSEUDONYM_BITS - 1) + 1
            taken.add(candidate)
            out[source] = candidate
            new_hashes.append(h)
            new_ids.append(candidate)
        batch = pa.table(
            {
                "source_hash": pa.array(new_hashes, pa.string()),
                "pseudonym": pa.array(new_ids, pa.int32()),
            }
        )
        self.con.register("medlab_new_pseudonyms", batch)
        self.con.execute(f"INSERT INTO {_MAP} SELECT * FROM medlab_new_pseudonyms")
        self.con.unregister("medlab_new_pseudonyms")
        return out

    def column(self, table: schema.Table, column: schema.Column, expr: str) -> str:
        """The expression that stores ``column`` under the policy."""
        key = (table.name, column.name)
        if self.joins_persons(table):
            if column.name == "person_id" and self.policy.pseudonymize_person_ids:
                return "medlab_pseudonym"
            if (
                self.policy.date_shift_max_days
                and column.ddl_type in ("date", "timestamp")
                and table.name != "person"
            ):
                return f"CAST(({expr}) + to_days(medlab_shift) AS {column.duckdb_type})"
        if self.policy.drop_identifiers and key in IDENTIFIERS:
            return IDENTIFIERS[key].format(expr=expr)
        if not self.policy.keep_free_text and key in FREE_TEXT:
            return "''" if column.required else "NULL"
        return expr

    def source(self, person_expr: str | None) -> str:
        """The FROM clause of the insert."""
        if person_expr is None:
            return "temp.stage"
        return (
            "temp.stage LEFT JOIN temp.medlab_pseudonyms "
            f"ON medlab_pseudonyms.medlab_source_id = ({person_expr})"
        )
