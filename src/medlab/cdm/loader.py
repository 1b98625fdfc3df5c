"""Loading OMOP CDM CSV exports (v5.3 or v5.4) into a node store, all or nothing.

Every value is parsed and checked before anything is written: an unparsable value, a missing
required column or value, or a duplicate primary key is refused with the file, line and column,
and the whole load is rolled back so the store is exactly as it was. Referential gaps that real
data has (rows of persons absent from PERSON) load and come back as warnings.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import duckdb

from medlab.cdm import outbox, schema
from medlab.cdm.fingerprint import record_snapshot, snapshot_fingerprint
from medlab.cdm.store import fetch_first, fetch_one, record_load
from medlab.errors import LoadError
from medlab.inputs import check_utf8, regular_file
from medlab.privacy.ingest import IngestPolicy, Pseudonymizer

ProgressCallback = Callable[[str, int, int], None]

# Values a CDM v5.3 export cannot carry but v5.4 requires; filled so such exports still load.
# cdm_version_concept_id 0 is "No matching concept", the OMOP convention for an unknown value.
_V53_DEFAULTS: dict[tuple[str, str], str] = {
    ("cdm_source", "cdm_version_concept_id"): "0",
    ("metadata", "metadata_id"): (
        "row_number() OVER (ORDER BY rowid) "
        "+ (SELECT coalesce(max(metadata_id), 0) FROM main.metadata)"
    ),
}


@dataclass
class FileReport:
    """What one CSV file contributed to a load."""

    file: str
    table: str
    rows: int
    bytes: int
    sha256: str
    renamed_columns: dict[str, str] = field(default_factory=dict)
    absent_columns: list[str] = field(default_factory=list)


@dataclass
class LoadReport:
    """The outcome of a successful load: files, rows and warnings."""

    load_id: int
    source: str
    source_cdm_version: str
    files: list[FileReport]
    warnings: list[str]

    @property
    def rows_loaded(self) -> int:
        """Rows inserted across all tables."""
        return sum(f.rows for f in self.files)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view of the report."""
        return {
            "load_id": self.load_id,
            "source": self.source,
            "source_cdm_version": self.source_cdm_version,
            "rows_loaded": self.rows_loaded,
            "files": [asdict(f) for f in self.files],
            "warnings": self.warnings,
        }


def _parse_expr(col: schema.Column, src: str) -> str:
    """SQL that turns the raw text ``src`` into the column's type, NULL when it cannot."""
    v = f'trim("{src}")'
    if col.ddl_type in ("integer", "bigint"):
        # TRY_CAST('1.5' AS INTEGER) rounds to 2, so only whole numbers (R writes "3.0") pass.
        return (
            f"CASE WHEN regexp_full_match({v}, '[+-]?[0-9]+(\\.0*)?') "
            f"THEN TRY_CAST(regexp_replace({v}, '\\.0*$', '') AS {col.duckdb_type}) END"
        )
    if col.ddl_type == "numeric":
        return f"CASE WHEN isfinite(TRY_CAST({v} AS DOUBLE)) THEN TRY_CAST({v} AS DOUBLE) END"
    if col.ddl_type == "date":
        return f"COALESCE(TRY_CAST({v} AS DATE), TRY_STRPTIME({v}, '%Y%m%d')::DATE)"
    if col.ddl_type == "timestamp":
        # Offsets such as 'Z' or '+02:00' are honoured; the session time zone is UTC.
        return f"TRY_CAST({v} AS TIMESTAMPTZ)::TIMESTAMP"
    return f'"{src}"'


_TYPE_WORDS = {
    "integer": "a whole number (32-bit)",
    "bigint": "a whole number",
    "numeric": "a number",
    "date": "a date (YYYY-MM-DD)",
    "timestamp": "a date-time (ISO 8601)",
}


@dataclass(frozen=True)
class _Dialect:
    """How a file is delimited: OHDSI exports are quoted CSV; Athena vocabulary downloads
    are tab-separated without quoting (concept names may contain a bare ``"``)."""

    delimiter: str
    quoted: bool

    def reader(self, handle: TextIO) -> Iterator[list[str]]:
        """A csv reader for this dialect."""
        if self.quoted:
            return csv.reader(handle, delimiter=self.delimiter)
        return csv.reader(handle, delimiter=self.delimiter, quoting=csv.QUOTE_NONE)

    @property
    def duckdb_options(self) -> str:
        """The read_csv options that parse this dialect."""
        if self.quoted:
            return f"delim = '{self.delimiter}', quote = '\"', escape = '\"'"
        return "delim = '\t', quote = '', escape = ''"


def _dialect(path: Path) -> _Dialect:
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        first = handle.readline()
    if "\t" in first and "," not in first:
        return _Dialect("\t", quoted=False)
    return _Dialect(",", quoted=True)


def _physical_line(path: Path, dialect: _Dialect, record_index: int) -> int:
    """The 1-based line on which data record ``record_index`` (0-based) ends."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = dialect.reader(handle)
        next(reader, None)
        for i, _ in enumerate(reader):
            if i == record_index:
                return reader.line_num  # type: ignore[attr-defined]
    return record_index + 2


def _read_header(path: Path, dialect: _Dialect) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(dialect.reader(handle), None)
    if not header:
        raise LoadError("the file is empty; expected a header row", file=path.name, line=1)
    return [h.strip().strip('"').lower() for h in header]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def discover(directory: Path) -> tuple[list[tuple[Path, schema.Table]], list[str]]:
    """The CSV files in ``directory`` that name a CDM table, and a warning per other file."""
    if not directory.is_dir():
        raise LoadError(f"{directory}: not a directory of OMOP CSV files")
    known = schema.tables()
    found: list[tuple[Path, schema.Table]] = []
    skipped: list[str] = []
    for path in sorted(directory.iterdir()):
        name = path.name.lower()
        if not name.endswith(".csv"):
            continue
        regular_file(path, "CSV file", LoadError)  # not a FIFO, a device or a link loop
        stem = name.removesuffix(".csv")
        if stem in known:
            twin = next((p for p, t in found if t.name == stem), None)
            if twin is not None:
                raise LoadError(
                    f"{directory}: both {twin.name} and {path.name} hold table {stem}",
                    hint="keep one file per table",
                )
            found.append((path, known[stem]))
        else:
            skipped.append(f"{path.name}: not a CDM v5.4 table medlab stores; skipped")
    if not found:
        raise LoadError(
            f"{directory}: no OMOP CSV files found",
            hint="expect one file per table named like PERSON.csv or person.csv",
        )
    return found, skipped


class _FileLoader:
    """Stages, checks and inserts one CSV file inside the caller's transaction."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        path: Path,
        table: schema.Table,
        pseudonymizer: Pseudonymizer,
    ) -> None:
        self.con = con
        self.path = path
        self.table = table
        self.pseudo = pseudonymizer
        self.person_expr: str | None = None  # the staged person id, when pseudonyms apply
        self.dialect = _dialect(path)
        self.warnings: list[str] = []
        self.rows = 0
        self.base = 0
        self.source_of: dict[str, str] = {}  # CDM column -> staged text column
        self.renamed: dict[str, str] = {}
        self.absent: list[str] = []

    def _error(
        self,
        message: str,
        *,
        record: int | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> LoadError:
        """A LoadError at a staged record (its rowid) or at a given line."""
        if record is not None:
            line = _physical_line(self.path, self.dialect, record - self.base)
        return LoadError(message, file=self.path.name, line=line, column=column, hint=hint)

    def _map_header(self, header: list[str]) -> dict[str, str]:
        """Source column -> CDM column name, applying the v5.3 renames."""
        for i, name in enumerate(header):
            if name in header[:i]:
                raise self._error("the header names this column twice", line=1, column=name)
        renames = schema.V53_RENAMES.get(self.table.name, {})
        mapping: dict[str, str] = {}
        for name in header:
            target = renames.get(name)
            if name not in self.table.column_names and target and target not in header:
                self.renamed[name] = target
                mapping[name] = target
            else:
                mapping[name] = name
        return mapping

    def _stage_file(self, width: int) -> None:
        columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width))
        try:
            self.con.execute("DROP TABLE IF EXISTS temp.stage")
            self.con.execute(
                f"""CREATE TEMP TABLE stage AS SELECT * FROM read_csv(?, header = true,
                    {self.dialect.duckdb_options}, auto_detect = false,
                    columns = {{{columns}}})""",
                [str(self.path)],
            )
        except duckdb.Error as exc:
            text = str(exc)
            found = re.search(r"Line: (\d+)", text)
            first = text.splitlines()[0] if text else "unreadable CSV"
            raise LoadError(
                f"malformed CSV ({first})",
                file=self.path.name,
                line=int(found.group(1)) if found else None,
                hint='expected a header row, then comma-separated values with " quoting '
                "(or tab-separated without quoting, as Athena writes vocabulary files)",
            ) from None

    def stage(self) -> None:
        """Read the file into a temporary table of text and check its header."""
        header = _read_header(self.path, self.dialect)
        mapping = self._map_header(header)
        self._stage_file(len(header))
        rows, base = fetch_one(self.con, "SELECT count(*), coalesce(min(rowid), 0) FROM temp.stage")
        # Inside a transaction DuckDB numbers new rows from a large offset, in file order.
        self.rows, self.base = int(rows), int(base)
        self.source_of = {mapping[name]: f"c{i}" for i, name in enumerate(header)}
        self.absent = [c.name for c in self.table.columns if c.name not in self.source_of]
        for name in header:
            if mapping[name] in self.table.column_names:
                continue
            staged = self.source_of[mapping[name]]
            (first,) = fetch_one(
                self.con, f'SELECT min(rowid) FROM temp.stage WHERE "{staged}" IS NOT NULL'
            )
            if first is not None:
                raise self._error(
                    f"not a column of CDM v5.4 table {self.table.name}, and it holds values",
                    record=first,
                    column=name,
                    hint="remove or rename the column; medlab does not drop data silently",
                )
            self.warnings.append(
                f"{self.path.name}: column {name} is not in CDM v5.4 {self.table.name} "
                "and is empty; ignored"
            )

    def check_columns(self) -> None:
        """Refuse a missing required column; note the ones a v5.3 export cannot have."""
        for name in self.absent:
            if not self.table.column(name).required:
                continue
            default = _V53_DEFAULTS.get((self.table.name, name))
            if default is not None:
                if self.rows:
                    self.warnings.append(
                        f"{self.path.name}: {name} is absent (a CDM v5.3 export); "
                        f"filled as {default}"
                    )
            elif self.rows:
                raise self._error(
                    f"required column {name} of {self.table.name} is missing from the header",
                    line=1,
                    column=name,
                )
            else:
                self.warnings.append(
                    f"{self.path.name}: no data rows, and the header lacks required column {name}"
                )

    def check_values(self) -> None:
        """Refuse unparsable values and required values left empty (the first, by line)."""
        probes: list[str] = []
        labels: list[tuple[str, str]] = []
        for col in self.table.columns:
            src = self.source_of.get(col.name)
            if src is None:
                continue
            if col.ddl_type in _TYPE_WORDS:
                parsed = _parse_expr(col, src)
                probes.append(
                    f'min(rowid) FILTER (WHERE "{src}" IS NOT NULL AND ({parsed}) IS NULL)'
                )
                labels.append(("type", col.name))
            if col.required:
                probes.append(f'min(rowid) FILTER (WHERE "{src}" IS NULL)')
                labels.append(("null", col.name))
        if not probes or not self.rows:
            return
        found = fetch_one(self.con, f"SELECT {', '.join(probes)} FROM temp.stage")
        failures = [(r, kind, name) for r, (kind, name) in zip(found, labels) if r is not None]
        if not failures:
            return
        record, kind, name = min(failures)
        if kind == "null":
            raise self._error(f"required value of {name} is empty", record=record, column=name)
        (value,) = fetch_one(
            self.con, f'SELECT "{self.source_of[name]}" FROM temp.stage WHERE rowid = ?', [record]
        )
        kind_words = _TYPE_WORDS[self.table.column(name).ddl_type]
        raise self._error(f"cannot read {value!r} as {kind_words}", record=record, column=name)

    def check_keys(self) -> None:
        """Refuse a primary key that would make rows ambiguous.

        A key repeated in the file is refused when the table's rows are referenced by others
        (a person, a visit, a concept) or when the repeat is an exact copy of an earlier row,
        which would count one event twice. Distinct event rows that share an id, as Eunomia's
        DRUG_EXPOSURE, MEASUREMENT and OBSERVATION do, load with a warning and fail the data
        quality check ``is_primary_key``, as in OHDSI's DataQualityDashboard. A key already in
        the store is always refused: that is the same data loaded twice.
        """
        pk = self.table.primary_key
        if not self.rows or not pk or any(k not in self.source_of for k in pk):
            return
        parsed = [_parse_expr(self.table.column(k), self.source_of[k]) for k in pk]
        everything = ", ".join(f'"{c}"' for c in self.source_of.values())
        first, repeats, first_copy = fetch_one(
            self.con,
            f"""SELECT min(rowid), count(*), min(rowid) FILTER (WHERE copies > 1) FROM (
                  SELECT rowid, row_number() OVER (PARTITION BY {", ".join(parsed)}
                                                   ORDER BY rowid) AS n,
                         count(*) OVER (PARTITION BY {everything}) AS copies
                  FROM temp.stage) WHERE n > 1""",
        )
        key_name = ", ".join(pk)
        if first_copy is not None:
            raise self._error(
                f"duplicate primary key ({key_name}): this line repeats an earlier line exactly",
                record=first_copy,
                column=key_name,
            )
        if first is not None:
            if self.table.name in schema.referenced_tables():
                raise self._error(
                    f"duplicate primary key ({key_name}): an earlier line has the same value, "
                    f"and other tables refer to {self.table.name} rows by this key",
                    record=first,
                    column=key_name,
                )
            line = _physical_line(self.path, self.dialect, first - self.base)
            self.warnings.append(
                f"{self.path.name}: {repeats} rows reuse a {key_name} of another row "
                f"(first at line {line}); loaded, and flagged by data quality check "
                "is_primary_key"
            )
        if self.person_expr is not None and list(pk) == ["person_id"]:
            # The store holds pseudonyms: compare the pseudonyms of the staged ids.
            parsed = [
                "(SELECT medlab_pseudonym FROM temp.medlab_pseudonyms "
                f"WHERE medlab_source_id = ({parsed[0]}))"
            ]
        join = " AND ".join(f'({p}) = t."{k}"' for p, k in zip(parsed, pk))
        (clash,) = fetch_one(
            self.con,
            f"""SELECT min(s.rowid) FROM temp.stage s
                WHERE EXISTS (SELECT 1 FROM {self.table.qualified} t WHERE {join})""",
        )
        if clash is not None:
            raise self._error(
                f"primary key ({key_name}) is already in the store",
                record=clash,
                column=key_name,
                hint="load into a new store, or remove the rows already loaded",
            )

    def insert(self) -> None:
        """Insert the parsed rows into the CDM table, in file order."""
        if not self.rows:
            return
        names: list[str] = []
        exprs: list[str] = []
        for col in self.table.columns:
            if col.name in self.source_of:
                exprs.append(_parse_expr(col, self.source_of[col.name]))
            elif (self.table.name, col.name) in _V53_DEFAULTS:
                exprs.append(_V53_DEFAULTS[(self.table.name, col.name)])
            else:
                continue
            exprs[-1] = self.pseudo.column(self.table, col, exprs[-1])
            names.append(f'"{col.name}"')
        self.con.execute(
            f"INSERT INTO {self.table.qualified} ({', '.join(names)}) "
            f"SELECT {', '.join(exprs)} FROM {self.pseudo.source(self.person_expr)} "
            "ORDER BY stage.rowid"
        )

    def load(self) -> FileReport:
        """Stage, check and insert; returns what the file contributed."""
        check_utf8(self.path, "CSV file", LoadError)
        self.stage()
        self.check_columns()
        self.check_values()
        if self.rows and self.pseudo.joins_persons(self.table) and "person_id" in self.source_of:
            self.person_expr = _parse_expr(
                self.table.column("person_id"), self.source_of["person_id"]
            )
            self.pseudo.prepare(self.person_expr)
        self.check_keys()
        self.insert()
        return FileReport(
            self.path.name,
            self.table.name,
            self.rows,
            self.path.stat().st_size,
            _sha256(self.path),
            self.renamed,
            self.absent,
        )


def _referential_warnings(con: duckdb.DuckDBPyConnection, tables: set[str]) -> list[str]:
    warnings = []
    for fk in schema.foreign_keys():
        if fk.table not in tables and fk.ref_table not in tables:
            continue
        src, ref = schema.table(fk.table), schema.table(fk.ref_table)
        orphans, total = fetch_one(
            con,
            f"""SELECT count(*) FILTER (WHERE r."{fk.ref_column}" IS NULL
                       AND {schema.reference_present(f's."{fk.column}"', fk.column)}),
                       count(*)
                FROM {src.qualified} s LEFT JOIN {ref.qualified} r
                  ON s."{fk.column}" = r."{fk.ref_column}" """,
        )
        if orphans:
            warnings.append(
                f"{fk.table}.{fk.column}: {orphans} of {total} rows refer to a "
                f"{fk.ref_table} not in {fk.ref_table}.{fk.ref_column}"
            )
    return warnings


def _source_version(con: duckdb.DuckDBPyConnection, renamed_any: bool) -> str:
    row = fetch_first(
        con, "SELECT cdm_version FROM main.cdm_source WHERE cdm_version IS NOT NULL LIMIT 1"
    )
    if row:
        return str(row[0]).lstrip("vV")
    return "5.3" if renamed_any else "5.4"


def load_omop_csv(
    store: Path,
    directory: Path,
    *,
    progress: ProgressCallback | None = None,
    ingest: IngestPolicy | None = None,
    log_event: bool = True,
) -> LoadReport:
    """Load every OMOP CSV file in ``directory`` into ``store`` in one transaction, applying
    the ingest policy (pseudonyms, identifiers, free text, date shifts; strict by default),
    then record the load (file hashes, snapshot fingerprint) in the node's transparency log."""
    files, warnings = discover(directory)
    policy = ingest or IngestPolicy()
    with outbox.logged_transaction(store) as con:
        pseudonymizer = Pseudonymizer(con, store, policy)
        reports: list[FileReport] = []
        for i, (path, table) in enumerate(files):
            if progress:
                progress(path.name, i, len(files))
            loader = _FileLoader(con, path, table, pseudonymizer)
            reports.append(loader.load())
            warnings.extend(loader.warnings)
        con.execute("DROP TABLE IF EXISTS temp.stage")
        con.execute("DROP TABLE IF EXISTS temp.medlab_pseudonyms")
        if progress:
            progress("referential checks", len(files), len(files))
        warnings.extend(_referential_warnings(con, {r.table for r in reports if r.rows}))
        version = _source_version(con, any(r.renamed_columns for r in reports))
        load_id = record_load(
            con,
            source=str(directory.resolve()),
            source_cdm_version=version,
            files=[asdict(f) for f in reports],
            rows=sum(f.rows for f in reports),
            warnings=warnings,
        )
        con.execute(
            "INSERT INTO medlab.store_info VALUES (?, ?)",
            [f"ingest_policy.load{load_id}", policy.model_dump_json()],
        )
        report = LoadReport(load_id, str(directory), version, reports, warnings)
        fingerprint = snapshot_fingerprint(con)[0]
        record_snapshot(con, fingerprint)
        if log_event:
            # Staged in the load's own transaction: logged exactly when the load commits.
            outbox.stage(
                con,
                "data_loaded",
                load_id=report.load_id,
                files={f.file: f.sha256 for f in reports},
                rows=sum(f.rows for f in reports),
                fingerprint=fingerprint,
                ingest_policy=policy.model_dump(mode="json"),
            )
    return report
