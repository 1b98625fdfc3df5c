"""Loading OMOP CDM CSV exports (v5.3 or v5.4) into a node store, all or nothing.

Every value is parsed and checked before anything is written: an unparsable value, a missing
required column or value, or a duplicate primary key is refused with the file, line and column,
and the whole load is rolled back so the store is exactly as it was. Referential gaps that real
data has (rows of persons absent from PERSON) load and come back as warnings.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from medlab import __version__
from medlab.cdm import schema
from medlab.cdm.store import META_SCHEMA, fetch_first, fetch_one, open_store
from medlab.errors import LoadError

ProgressCallback = Callable[[str, int, int], None]

# Values a CDM v5.3 export cannot carry but v5.4 requires; filled so such exports still load.
# cdm_version_concept_id 0 is "No matching concept", the OMOP convention for an unknown value.
_V53_DEFAULTS: dict[tuple[str, str], str] = {
    ("cdm_source", "cdm_version_concept_id"): "0",
    ("metadata", "metadata_id"): "rowid + 1",
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


def _physical_line(path: Path, record_index: int) -> int:
    """The 1-based line on which data record ``record_index`` (0-based) ends."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for i, _ in enumerate(reader):
            if i == record_index:
                return reader.line_num
    return record_index + 2


def _read_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
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
        stem = name.removesuffix(".csv")
        if stem in known:
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

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, table: schema.Table) -> None:
        self.con = con
        self.path = path
        self.table = table
        self.warnings: list[str] = []

    def _error(
        self,
        message: str,
        *,
        record: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> LoadError:
        line = None if record is None else _physical_line(self.path, record - self.base)
        return LoadError(message, file=self.path.name, line=line, column=column, hint=hint)

    def _map_header(self, header: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """Source column → CDM column, and the v5.3 renames applied."""
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise self._error("the header names this column twice", record=None, column=name)
            seen.add(name)
        renames = schema.V53_RENAMES.get(self.table.name, {})
        targets = set(self.table.column_names)
        mapping: dict[str, str] = {}
        renamed: dict[str, str] = {}
        for name in header:
            target = name
            if name not in targets and renames.get(name) and renames[name] not in header:
                target = renames[name]
                renamed[name] = target
            mapping[name] = target
        return mapping, renamed

    def stage(self) -> tuple[int, dict[str, str], list[str]]:
        """Read the file into a temporary table of text and check its header."""
        header = _read_header(self.path)
        mapping, renamed = self._map_header(header)
        staged = {f"c{i}": name for i, name in enumerate(header)}
        columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header)))
        try:
            self.con.execute("DROP TABLE IF EXISTS temp.stage")
            self.con.execute(
                f"""CREATE TEMP TABLE stage AS SELECT * FROM read_csv(?, header = true,
                    delim = ',', quote = '"', escape = '"', auto_detect = false,
                    columns = {{{columns}}})""",
                [str(self.path)],
            )
        except duckdb.Error as exc:
            text = str(exc)
            line = None
            if "Line: " in text:
                try:
                    line = int(text.split("Line: ", 1)[1].split()[0].rstrip(",.:"))
                except ValueError:
                    line = None
            first = text.splitlines()[0] if text else "unreadable CSV"
            raise LoadError(
                f"malformed CSV ({first})",
                file=self.path.name,
                line=line,
                hint='files must be comma-separated with a header row and " quoting',
            ) from None
        rows, base = fetch_one(
            self.con,  # type: ignore[misc]
            "SELECT count(*), coalesce(min(rowid), 0) FROM temp.stage",
        )
        # Inside a transaction DuckDB numbers new rows from a large offset, in file order.
        self.base = int(base)
        # Rename staged columns to their CDM names so checks and inserts read naturally.
        self.source_of = {mapping[name]: f"c{i}" for i, name in enumerate(header)}
        self.header = header
        absent = [c.name for c in self.table.columns if c.name not in self.source_of]
        for name, target in mapping.items():
            if target in self.table.column_names:
                continue
            stage_col = self.source_of[target]
            (filled,) = fetch_one(
                self.con,  # type: ignore[misc]
                f'SELECT count("{stage_col}") FROM temp.stage',
            )
            if filled:
                raise self._error(
                    f"not a column of CDM v5.4 table {self.table.name}, and it holds values",
                    column=name,
                    hint="remove or rename the column; medlab does not drop data silently",
                )
            self.warnings.append(
                f"{self.path.name}: column {name} is not in CDM v5.4 {self.table.name} "
                "and is empty; ignored"
            )
        del staged
        return int(rows), renamed, absent

    def check_values(self, rows: int, absent: list[str]) -> None:
        """Refuse missing required columns, unparsable values and required values left empty."""
        for name in absent:
            col = self.table.column(name)
            if col.required and rows and (self.table.name, name) not in _V53_DEFAULTS:
                raise self._error(
                    f"required column {name} of {self.table.name} is missing from the header",
                    column=name,
                )
        probes: list[str] = []
        labels: list[tuple[str, str]] = []
        for col in self.table.columns:
            src = self.source_of.get(col.name)
            if src is None:
                continue
            parsed = _parse_expr(col, src)
            if col.ddl_type in _TYPE_WORDS:
                probes.append(
                    f'min(rowid) FILTER (WHERE "{src}" IS NOT NULL AND ({parsed}) IS NULL)'
                )
                labels.append(("type", col.name))
            if col.required:
                probes.append(f'min(rowid) FILTER (WHERE "{src}" IS NULL)')
                labels.append(("null", col.name))
        if not probes or not rows:
            return
        found = fetch_one(self.con, f"SELECT {', '.join(probes)} FROM temp.stage")
        assert found is not None
        failures = [(r, kind, name) for r, (kind, name) in zip(found, labels) if r is not None]
        if not failures:
            return
        record, kind, name = min(failures)
        src = self.source_of[name]
        col = self.table.column(name)
        if kind == "null":
            raise self._error(f"required value of {name} is empty", record=record, column=name)
        (value,) = fetch_one(
            self.con,  # type: ignore[misc]
            f'SELECT "{src}" FROM temp.stage WHERE rowid = ?',
            [record],
        )
        raise self._error(
            f"cannot read {value!r} as {_TYPE_WORDS[col.ddl_type]}", record=record, column=name
        )

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
        if not pk or any(k not in self.source_of for k in pk):
            return
        parsed = [f"{_parse_expr(self.table.column(k), self.source_of[k])}" for k in pk]
        keys = ", ".join(parsed)
        everything = ", ".join(f'"{c}"' for c in self.source_of.values())
        dup = fetch_one(
            self.con,
            f"""SELECT min(rowid), count(*), min(rowid) FILTER (WHERE copies > 1) FROM (
                  SELECT rowid, row_number() OVER (PARTITION BY {keys} ORDER BY rowid) AS n,
                         count(*) OVER (PARTITION BY {everything}) AS copies
                  FROM temp.stage) WHERE n > 1""",
        )
        assert dup is not None
        first, repeats, first_copy = dup
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
            line = _physical_line(self.path, first - self.base)
            self.warnings.append(
                f"{self.path.name}: {repeats} rows reuse a {key_name} of another row "
                f"(first at line {line}); loaded, and flagged by data quality check "
                "is_primary_key"
            )
        join = " AND ".join(f'({p}) = t."{k}"' for p, k in zip(parsed, pk))
        clash = fetch_one(
            self.con,
            f"""SELECT min(s.rowid) FROM temp.stage s
                WHERE EXISTS (SELECT 1 FROM {self.table.qualified} t WHERE {join})""",
        )
        if clash is not None and clash[0] is not None:
            raise self._error(
                f"primary key ({key_name}) is already in the store",
                record=clash[0],
                column=key_name,
                hint="load into a new store, or remove the rows already loaded",
            )

    def insert(self, absent: list[str]) -> None:
        """Insert the parsed rows into the CDM table."""
        names: list[str] = []
        exprs: list[str] = []
        for col in self.table.columns:
            if col.name in self.source_of:
                exprs.append(_parse_expr(col, self.source_of[col.name]))
            elif (self.table.name, col.name) in _V53_DEFAULTS:
                default = _V53_DEFAULTS[(self.table.name, col.name)]
                if col.name == self.table.primary_key[:1][0] if self.table.primary_key else False:
                    default = (
                        f'{default} + (SELECT coalesce(max("{col.name}"), 0) '
                        f"FROM {self.table.qualified})"
                    )
                exprs.append(default)
            else:
                continue
            names.append(f'"{col.name}"')
        self.con.execute(
            f"INSERT INTO {self.table.qualified} ({', '.join(names)}) "
            f"SELECT {', '.join(exprs)} FROM temp.stage ORDER BY rowid"
        )
        del absent


def _referential_warnings(con: duckdb.DuckDBPyConnection, tables: set[str]) -> list[str]:
    warnings = []
    for fk in schema.foreign_keys():
        if fk.table not in tables and fk.ref_table not in tables:
            continue
        src, ref = schema.table(fk.table), schema.table(fk.ref_table)
        orphans, total = fetch_one(
            con,  # type: ignore[misc]
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
    store: Path, directory: Path, *, progress: ProgressCallback | None = None
) -> LoadReport:
    """Load every OMOP CSV file in ``directory`` into ``store`` in one transaction."""
    files, warnings = discover(directory)
    with open_store(store) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            reports: list[FileReport] = []
            for i, (path, table) in enumerate(files):
                if progress:
                    progress(path.name, i, len(files))
                loader = _FileLoader(con, path, table)
                rows, renamed, absent = loader.stage()
                loader.check_values(rows, absent)
                if rows:
                    loader.check_keys()
                    loader.insert(absent)
                warnings.extend(loader.warnings)
                if rows and absent:
                    missing_required = [a for a in absent if table.column(a).required]
                    for name in missing_required:
                        warnings.append(
                            f"{path.name}: {name} is absent (a CDM v5.3 export); filled as "
                            f"{_V53_DEFAULTS[(table.name, name)]}"
                        )
                elif not rows:
                    required_absent = [
                        a
                        for a in absent
                        if table.column(a).required and (table.name, a) not in _V53_DEFAULTS
                    ]
                    if required_absent:
                        warnings.append(
                            f"{path.name}: no data rows, and the header lacks required "
                            f"column(s) {', '.join(required_absent)}"
                        )
                reports.append(
                    FileReport(
                        path.name,
                        table.name,
                        rows,
                        path.stat().st_size,
                        _sha256(path),
                        renamed,
                        absent,
                    )
                )
            con.execute("DROP TABLE IF EXISTS temp.stage")
            if progress:
                progress("referential checks", len(files), len(files))
            warnings.extend(_referential_warnings(con, {r.table for r in reports if r.rows}))
            version = _source_version(con, any(r.renamed_columns for r in reports))
            (load_id,) = fetch_one(
                con,  # type: ignore[misc]
                f"SELECT coalesce(max(load_id), 0) + 1 FROM {META_SCHEMA}.load_log",
            )
            report = LoadReport(int(load_id), str(directory), version, reports, warnings)
            con.execute(
                f"INSERT INTO {META_SCHEMA}.load_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    report.load_id,
                    dt.datetime.now(dt.UTC).replace(tzinfo=None),
                    str(directory.resolve()),
                    version,
                    json.dumps([asdict(f) for f in reports]),
                    report.rows_loaded,
                    json.dumps(warnings),
                    __version__,
                ],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return report
