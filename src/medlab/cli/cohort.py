"""``medlab cohort``: import ATLAS definitions, show their SQL, generate cohorts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table
from sqlglot import exp

from medlab.cli.output import emit_json, progress_bar, stdout
from medlab.cohorts.circe import from_circe
from medlab.cohorts.compiler import compile_cohort
from medlab.cohorts.engine import RESULTS, generate
from medlab.cohorts.model import load_definition
from medlab.cohorts.sqltree import render
from medlab.errors import DefinitionError
from medlab.fields import INT32_MAX
from medlab.inputs import parse_document, read_text

app = typer.Typer(help="Cohorts: import, sql, generate.", no_args_is_help=True)

DefinitionArg = Annotated[
    Path, typer.Argument(help="A medlab definition (JSON/YAML) or an ATLAS/Circe JSON export.")
]


@app.command("import")
def import_circe(
    file: Annotated[Path, typer.Argument(help="ATLAS/Circe cohort JSON.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="YAML instead of JSON.")] = False,
) -> None:
    """Translate an ATLAS (Circe) cohort definition into medlab's cohort language."""
    data = parse_document(
        read_text(file, "ATLAS cohort definition", DefinitionError),
        str(file),
        yaml_syntax=False,
        error=DefinitionError,
    )
    definition = from_circe(data, source=str(file))
    text = definition.to_yaml() if as_yaml else definition.to_json() + "\n"
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
        stdout.print(f"wrote {out}")


@app.command("sql")
def show_sql(
    definition: DefinitionArg,
    dialect: Annotated[
        Literal["duckdb", "postgres", "spark"], typer.Option("--dialect", help="SQL dialect.")
    ] = "duckdb",
    cohort_id: Annotated[
        int,
        typer.Option("--id", help="cohort_definition_id (1 .. 2^31 - 1).", min=1, max=INT32_MAX),
    ] = 1,
    cdm_schema: Annotated[
        str | None, typer.Option("--cdm-schema", help="Schema holding the CDM tables.")
    ] = None,
    cohort_table: Annotated[
        str, typer.Option("--cohort-table", help="Table the cohort rows go to.")
    ] = f"{RESULTS}.cohort",
    attrition: Annotated[
        bool, typer.Option("--attrition", help="Print the attrition query instead.")
    ] = False,
) -> None:
    """Print the SQL that generates the cohort, for DuckDB, PostgreSQL or Spark."""
    compiled = compile_cohort(load_definition(definition), cohort_id)
    if attrition:
        tree = compiled.with_steps(compiled.attrition, cdm_schema)
    else:
        tree = exp.insert(compiled.with_steps(compiled.cohort_rows, cdm_schema), cohort_table)
    print(render(tree, dialect) + ";")


@app.command("generate")
def generate_cohort(
    store: Annotated[Path, typer.Argument(help="Node store (DuckDB file).")],
    definition: Annotated[
        Path, typer.Option("--definition", help="medlab or ATLAS/Circe definition file.")
    ],
    cohort_id: Annotated[
        int,
        typer.Option("--id", help="cohort_definition_id (1 .. 2^31 - 1).", min=1, max=INT32_MAX),
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Generate a cohort into results.cohort, with its attrition (counts local to this node)."""
    parsed = load_definition(definition)
    with progress_bar("generating") as update:
        update(definition.name, 0, 1)
        result = generate(store, parsed, cohort_id)
    if as_json:
        emit_json(result.to_dict())
        return
    table = Table(title=f"cohort {cohort_id}: {parsed.name or definition.name} (local counts)")
    for col in ("rule", "persons", "entries", "persons (rule alone)", "entries (rule alone)"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for row in result.attrition:
        table.add_row(
            row.rule,
            f"{row.persons:,}",
            f"{row.entries:,}",
            f"{row.independent_persons:,}",
            f"{row.independent_entries:,}",
        )
    stdout.print(table)
    stdout.print(
        f"{result.persons:,} persons, {result.entries:,} entries in {RESULTS}.cohort "
        f"(cohort_definition_id {cohort_id}); SQL {result.sql_ms:.0f} ms"
    )
