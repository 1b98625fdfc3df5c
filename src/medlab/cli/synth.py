"""``medlab synth``: synthetic hospitals with planted effects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medlab.cli.output import emit_json, progress_bar, stdout
from medlab.synth.generate import records, synthesize


def synth(
    outdir: Annotated[Path, typer.Argument(help="Directory for <site>.duckdb and truth.json.")],
    sites: Annotated[int, typer.Option("--sites", help="Number of hospitals.")] = 3,
    patients: Annotated[
        int, typer.Option("--patients", help="Patients in total, split across the sites.")
    ] = 30000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same data.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print truth.json on stdout.")] = False,
) -> None:
    """Write one OMOP node store per synthetic hospital and truth.json with planted effects."""
    with progress_bar("synthesizing") as update:
        truth = synthesize(outdir, sites=sites, patients=patients, seed=seed, progress=update)
    if as_json:
        emit_json(truth)
        return
    table = Table(title=f"synthetic hospitals in {outdir} (seed {seed})")
    for col in ("site", "profile", "persons", "visits", "conditions", "drugs", "measurements"):
        table.add_column(col, justify="left" if col in ("site", "profile") else "right")
    for site in records(truth, "sites"):
        rows = site["rows"]
        table.add_row(
            site["store"],
            site["profile"],
            f"{site['persons']:,}",
            f"{rows.get('visit_occurrence', 0):,}",
            f"{rows.get('condition_occurrence', 0):,}",
            f"{rows.get('drug_exposure', 0):,}",
            f"{rows.get('measurement', 0):,}",
        )
    stdout.print(table)
    for effect in records(truth, "effects"):
        if effect["kind"] == "hazard_ratio":
            stdout.print(
                f"planted: {effect['target']['name']} vs {effect['comparator']['name']} → "
                f"{effect['outcome']['name']}: true HR {effect['true_hazard_ratio']}"
            )
        else:
            stdout.print(
                f"planted: {effect['outcome']['name']} incidence "
                f"{effect['rate_per_1000_person_years']} per 1,000 person-years"
            )
    stdout.print(f"truth: {outdir / 'truth.json'}")
