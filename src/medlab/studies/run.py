"""Run a study over node stores: local steps in each node, combine steps over the aggregates.

Here both happen in one process; only the aggregates each local step returns are passed to
the combine steps, as they will be across the network.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medlab import __version__
from medlab.analyses import characterization, comparative, feasibility, incidence, utilization
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.studies.spec import (
    CharacterizationAnalysis,
    ComparativeAnalysis,
    FeasibilityAnalysis,
    IncidenceAnalysis,
    StudySpec,
    UtilizationAnalysis,
)

Progress = Callable[[str, int, int], None]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _comparative(a: ComparativeAnalysis, nodes: list[Path]) -> dict[str, Any]:
    sites = []
    for store in nodes:
        with open_store(store, read_only=True) as con, warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            site = comparative.local(con, store.stem, a.target, a.comparator, a.outcome, a.settings)
            site_warnings = [str(x.message) for x in w]
        sites.append((site, site_warnings))
    pooled = comparative.combine([s for s, _ in sites])
    per_site = [
        {
            "site": s.site,
            "estimates": [e.to_dict() for e in s.estimates],
            "attrition": [asdict(step) for step in s.attrition],
            "max_abs_smd_before": _finite(s.balance_before),
            "equipoise": _finite(s.equipoise),
            "warnings": ws,
            "km": s.km,
            "preference_histogram": s.preference_histogram,
        }
        for s, ws in sites
    ]
    if len(sites) == 1:
        estimates = [e.to_dict() for e in sites[0][0].estimates]
    else:
        estimates = []
        for adjustment, methods in pooled.items():
            rows = [e for s, _ in sites for e in s.estimates if e.adjustment == adjustment]
            random = methods["random"]
            estimates.append(
                {
                    "adjustment": adjustment,
                    "hr": random.hr,
                    "ci_low": random.ci_low,
                    "ci_high": random.ci_high,
                    "p": random.p,
                    "log_hr": random.log_hr,
                    "se": random.se,
                    "tau2": random.tau2,
                    "method": "random effects (DL)",
                    "target_persons": sum(e.target_persons for e in rows),
                    "comparator_persons": sum(e.comparator_persons for e in rows),
                    "target_events": sum(e.target_events for e in rows),
                    "comparator_events": sum(e.comparator_events for e in rows),
                }
            )
    return {
        "estimates": estimates,
        "meta_analysis": {k: {m: asdict(p) for m, p in v.items()} for k, v in pooled.items()},
        "per_site": per_site,
    }


def _incidence(a: IncidenceAnalysis, nodes: list[Path]) -> dict[str, Any]:
    parts = []
    for store in nodes:
        with open_store(store, read_only=True) as con:
            parts.append(incidence.local(con, a.target, a.outcome, a.settings))
    return {"rates": [asdict(r) for r in incidence.combine(parts)]}


def _characterization(a: CharacterizationAnalysis, nodes: list[Path]) -> dict[str, Any]:
    combined = []
    for cohort in a.cohorts:
        parts = []
        for store in nodes:
            with open_store(store) as con:
                parts.append(characterization.local(con, cohort, a.settings))
        combined.append(characterization.combine(parts))
    result: dict[str, Any] = {
        "cohorts": [
            {"cohort": c, "entries": entries, "covariates": [asdict(v) for v in covariates]}
            for c, (entries, covariates) in zip(a.cohorts, combined, strict=True)
        ]
    }
    if len(combined) == 2:
        smd = characterization.standardized_differences(combined[0][1], combined[1][1])
        result["standardized_differences"] = smd
    return result


def _feasibility(a: FeasibilityAnalysis, spec: StudySpec, nodes: list[Path]) -> dict[str, Any]:
    definition = next(c.definition for c in spec.cohorts if c.id == a.cohort)
    assert definition is not None
    sites = [feasibility.local(store, store.stem, definition, a.cohort) for store in nodes]
    total = feasibility.combine(sites)
    return {
        "funnel": [asdict(step) for step in total.funnel],
        "eligible": total.eligible,
        "by_year": total.by_year,
        "sites": [
            {
                "site": s.site,
                "eligible": s.eligible,
                "funnel": [asdict(step) for step in s.funnel],
                "by_year": s.by_year,
            }
            for s in total.sites
        ],
    }


def _utilization(a: UtilizationAnalysis, nodes: list[Path]) -> dict[str, Any]:
    parts = []
    for store in nodes:
        with open_store(store, read_only=True) as con:
            parts.append(utilization.local(con, a.cohort, a.drugs, a.max_lines))
    total = utilization.combine(parts)
    return {
        "by_year": [
            {
                "year": year,
                "drug": drug,
                "drug_name": total.names.get(drug, str(drug)),
                "persons": n,
                "cohort_persons": total.persons_by_year.get(year, 0),
                "share": total.share(year, drug),
            }
            for (year, drug), n in total.treated_by_year.items()
        ],
        "pathways": [
            {
                "path": list(path),
                "names": [total.names.get(d, str(d)) for d in path],
                "persons": n,
            }
            for path, n in total.pathways.items()
        ],
    }


def run_study(
    spec: StudySpec, nodes: list[Path], out: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Generate the cohorts on every node, run every analysis, write results into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    node_info = []
    for i, store in enumerate(nodes):
        if progress:
            progress(f"cohorts on {store.stem}", i, len(nodes))
        for cohort in spec.cohorts:
            assert cohort.definition is not None
            generate(store, cohort.definition, cohort.id)
        with open_store(store, read_only=True) as con:
            node_info.append({"node": store.stem, "fingerprint": snapshot_fingerprint(con)[0]})
    analyses = []
    for i, analysis in enumerate(spec.analyses):
        if progress:
            progress(analysis.name, i, len(spec.analyses))
        if isinstance(analysis, ComparativeAnalysis):
            body = _comparative(analysis, nodes)
            _write_csv(out / f"{analysis.name}_estimates.csv", body["estimates"])
        elif isinstance(analysis, IncidenceAnalysis):
            body = _incidence(analysis, nodes)
            _write_csv(out / f"{analysis.name}_rates.csv", body["rates"])
        elif isinstance(analysis, FeasibilityAnalysis):
            body = _feasibility(analysis, spec, nodes)
            _write_csv(out / f"{analysis.name}_funnel.csv", body["funnel"])
        elif isinstance(analysis, UtilizationAnalysis):
            body = _utilization(analysis, nodes)
            _write_csv(out / f"{analysis.name}_by_year.csv", body["by_year"])
            _write_csv(
                out / f"{analysis.name}_pathways.csv",
                [
                    {"pathway": " > ".join(p["names"]), "persons": p["persons"]}
                    for p in body["pathways"]
                ],
            )
        else:
            body = _characterization(analysis, nodes)
            for c in body["cohorts"]:
                _write_csv(out / f"{analysis.name}_cohort{c['cohort']}.csv", c["covariates"])
        analyses.append({"name": analysis.name, "type": analysis.type, **body})
    results = {
        "study": spec.name,
        "spec_hash": spec.digest(),
        "medlab_version": __version__,
        "nodes": node_info,
        "analyses": analyses,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    from medlab.studies.report import write_report

    write_report(results, out)
    return results
