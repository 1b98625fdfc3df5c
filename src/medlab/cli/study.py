"""``medlab study``: validate and run studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medlab.cli.output import emit_json, progress_bar, stdout
from medlab.errors import UsageError
from medlab.privacy.policy import read_document
from medlab.studies.run import run_study
from medlab.studies.spec import load_spec

app = typer.Typer(help="Studies: validate, run.", no_args_is_help=True)

SpecArg = Annotated[Path, typer.Argument(help="Study spec (JSON or YAML).")]


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _count(value: int | None) -> str:
    return "suppressed" if value is None else str(value)


@app.command("validate")
def validate(spec: SpecArg) -> None:
    """Check a study spec; every problem is reported with its path."""
    parsed = load_spec(spec)
    stdout.print(
        f"valid: {parsed.name}: {len(parsed.cohorts)} cohorts, {len(parsed.analyses)} analyses; "
        f"spec {parsed.digest()}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("run")
def run(
    spec: SpecArg,
    node: Annotated[list[Path], typer.Option("--node", help="A node store; repeat for more.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for results and report.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json on stdout.")] = False,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="A policy stricter than the nodes' own (YAML/JSON); it may only tighten them.",
        ),
    ] = None,
    hub: Annotated[
        Path | None,
        typer.Option(
            "--hub", help="The hub's key and log (default $MEDLAB_HUB_DIR, ~/.medlab/hub)."
        ),
    ] = None,
    approved_by: Annotated[
        str, typer.Option("--approved-by", help="Who approved the study (logged).")
    ] = "local steward (single-process run)",
) -> None:
    """Run the study over the nodes through the release gate: results.json (with the disclosure
    report), CSV tables, plots and report.html."""
    if not node:
        raise UsageError("give at least one --node STORE")
    parsed = load_spec(spec)
    request = None if policy is None else read_document(policy, "release policy")
    with progress_bar("study") as update:
        results = run_study(
            parsed,
            node,
            out,
            progress=update,
            policy=request,
            hub_dir=hub,
            approved_by=approved_by,
        )
    if as_json:
        emit_json(results)
        return
    for analysis in results["analyses"]:
        if analysis["type"] != "comparative":
            continue
        table = Table(title=f"{analysis['name']}: hazard ratios")
        for col in (
            "adjustment",
            "HR",
            "95% CI",
            "p",
            "T persons",
            "C persons",
            "T events",
            "C events",
            "calibrated HR (95% CI)",
            "diagnostics",
        ):
            table.add_column(
                col, justify="left" if col in ("adjustment", "diagnostics") else "right"
            )
        for e in analysis["estimates"]:
            table.add_row(
                e["adjustment"],
                _num(e["hr"], ".2f"),
                f"{_num(e['ci_low'], '.2f')}-{_num(e['ci_high'], '.2f')}",
                _num(e["p"], ".3g"),
                *(
                    _count(e[k])
                    for k in (
                        "target_persons",
                        "comparator_persons",
                        "target_events",
                        "comparator_events",
                    )
                ),
                f"{_num(e.get('calibrated_hr'), '.2f')} ({_num(e.get('calibrated_ci_low'), '.2f')}"
                f"-{_num(e.get('calibrated_ci_high'), '.2f')})",
                e["diagnostics"] + (f": {', '.join(e['failing'])}" if e["failing"] else ""),
            )
        for site in analysis["per_site"]:
            steps = Table(title=f"{analysis['name']}: {site['site']} attrition")
            for col in ("step", "target persons", "comparator persons"):
                steps.add_column(col, justify="left" if col == "step" else "right")
            for step in site["attrition"]:
                steps.add_row(
                    step["step"],
                    _count(step["target_persons"]),
                    _count(step["comparator_persons"]),
                )
            stdout.print(steps)
        stdout.print(table)
    disclosure = results["disclosure"]
    policies = ", ".join(
        f"{site} {p['version']} ({p['digest'][:19]}…)" for site, p in disclosure["policies"].items()
    )
    stdout.print(
        f"release policies: {policies}; {disclosure['shown']} values shown, "
        f"{disclosure['withheld']} withheld across {len(disclosure['releases'])} releases; "
        f"see {out}/disclosure.json",
        highlight=False,
        soft_wrap=True,
    )
    stdout.print(
        f"signed by every node and the hub, logged; evidence in {out}/evidence.json "
        f"(medlab evidence export {out} --out bundle.zip)",
        highlight=False,
        soft_wrap=True,
    )
    stdout.print(
        f"spec {results['spec_hash']}; results in {out}/results.json, report in {out}/report.html",
        highlight=False,
        soft_wrap=True,
    )
