"""``medlab node``: create, load, describe and check a node store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medlab.cdm import dq
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, load_history, open_store, row_counts, store_info
from medlab.cli.output import emit_json, progress_bar, stderr, stdout
from medlab.errors import QualityGateError
from medlab.ledger import parties
from medlab.privacy.ingest import load_ingest_policy

app = typer.Typer(help="Run a node store: init, load, info, dq.", no_args_is_help=True)

StoreArg = Annotated[Path, typer.Argument(help="Path of the node store (a DuckDB file).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@app.command("init")
def init(
    store: StoreArg,
    identity_dir: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            help="The hospital's identity directory (signing key, pseudonym secret, log), "
            "created or reused; default: beside the store.",
        ),
    ] = None,
) -> None:
    """Create an empty OMOP CDM v5.4 node store."""
    init_store(store, identity_dir)
    party = parties.node(store)
    signer = party.signer
    stdout.print(f"created node store {store} (OMOP CDM v5.4, empty)")
    stdout.print(f"node signing key {signer.key_id} ({party.key_path})", highlight=False)


@app.command("load")
def load(
    store: StoreArg,
    omop_csv: Annotated[
        Path, typer.Option("--omop-csv", help="Directory of OMOP CSV files, one per table.")
    ],
    as_json: JsonOpt = False,
    ingest_policy: Annotated[
        Path | None,
        typer.Option(
            "--ingest-policy",
            help="The steward's ingest policy (YAML/JSON): pseudonyms, identifiers, free text, "
            "date shifts. Default: pseudonymize ids, drop identifiers and free text.",
        ),
    ] = None,
) -> None:
    """Load OMOP CDM v5.3/v5.4 CSV files, all or nothing, pseudonymized at ingest."""
    policy = load_ingest_policy(ingest_policy)
    with progress_bar("loading") as update:
        report = load_omop_csv(store, omop_csv, progress=update, ingest=policy)
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(
        title=f"load {report.load_id} into {store} (source CDM v{report.source_cdm_version})"
    )
    table.add_column("file")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for f in report.files:
        table.add_row(f.file, f.table, f"{f.rows:,}")
    stdout.print(table)
    stdout.print(f"{report.rows_loaded:,} rows loaded from {len(report.files)} files")
    if report.warnings:
        stdout.print(f"[yellow]{len(report.warnings)} warnings:[/]")
        for w in report.warnings:
            stdout.print(f"  - {w}", highlight=False)


@app.command("info")
def info(store: StoreArg, as_json: JsonOpt = False) -> None:
    """Row counts per table and the snapshot fingerprint."""
    with open_store(store, read_only=True) as con:
        counts = row_counts(con)
        with progress_bar("fingerprint") as update:
            fingerprint, digests = snapshot_fingerprint(con, progress=update)
        meta = store_info(con)
        loads = load_history(con)
    if as_json:
        emit_json(
            {
                "store": str(store),
                "cdm_version": meta.get("cdm_version"),
                "fingerprint": fingerprint,
                "tables": counts,
                "table_digests": {d.table: f"sha256:{d.sha256}" for d in digests},
                "loads": loads,
            }
        )
        return
    table = Table(title=f"{store} (OMOP CDM v{meta.get('cdm_version')})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}", style=None if n else "dim")
    stdout.print(table)
    stdout.print(f"loads: {len(loads)}")
    stdout.print(f"fingerprint: {fingerprint}", highlight=False, soft_wrap=True)


@app.command("dq")
def quality(
    store: StoreArg,
    as_json: JsonOpt = False,
    fail_on_error: Annotated[
        bool, typer.Option("--fail-on-error", help="Exit non-zero if a check fails.")
    ] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every check, not only failures.")
    ] = False,
) -> None:
    """Run the data quality checks (conformance, completeness, plausibility)."""
    with open_store(store, read_only=True) as con, progress_bar("checks") as update:
        report = dq.run_checks(con, progress=update)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_quality(store, report, show_all)
    if fail_on_error and report.failed:
        raise QualityGateError(f"{len(report.failed)} data quality checks failed on {store}")


def _print_quality(store: Path, report: dq.QualityReport, show_all: bool) -> None:
    summary = Table(title=f"data quality of {store}")
    for col in ("category", "checks", "passed", "failed"):
        summary.add_column(col, justify="left" if col == "category" else "right")
    for category in ("conformance", "completeness", "plausibility"):
        rows = [r for r in report.results if r.check.category == category]
        failed = sum(not r.passed for r in rows)
        summary.add_row(category, str(len(rows)), str(len(rows) - failed), str(failed))
    stdout.print(summary)
    shown = report.results if show_all else report.failed
    if shown:
        detail = Table(title="all checks" if show_all else "failed checks")
        for col in ("check", "violations", "denominator", "% violated", "threshold %", ""):
            detail.add_column(col, justify="left" if col == "check" else "right")
        for r in shown:
            detail.add_row(
                r.check.name,
                f"{r.violations:,}",
                f"{r.denominator:,}",
                f"{r.pct_violated:.2f}",
                f"{r.check.threshold:g}",
                "[green]pass[/]" if r.passed else "[red]FAIL[/]",
            )
        stdout.print(detail)
    passed = len(report.results) - len(report.failed)
    stdout.print(f"{passed} passed, {len(report.failed)} failed")
    if not show_all and report.failed:
        stderr.print("use --all to list every check, --json for machine-readable output")
