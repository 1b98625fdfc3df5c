"""Run a study over node stores: local steps in each node, combine steps over the aggregates.

Here both happen in one process; every local step's aggregates go through the release gate
on the node's side, and only the released payloads reach the combine steps, as they will
across the network.
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

import duckdb

from medlab import __version__
from medlab.analyses import characterization, comparative, feasibility, incidence, utilization
from medlab.cdm.dq import run_checks
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.store import META_SCHEMA, fetch_first, open_store
from medlab.cohorts.engine import generate
from medlab.ledger import evidence, parties
from medlab.privacy import gate
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import Release as ReleaseRequest
from medlab.privacy.release import Released
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


Release = Callable[[ReleaseRequest], Released]


def _comparative(a: ComparativeAnalysis, nodes: list[Path], release: Release) -> dict[str, Any]:
    parts = []
    for store in nodes:
        with open_store(store, read_only=True) as con, warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            site = comparative.local(con, store.stem, a.target, a.comparator, a.outcome, a.settings)
            site_warnings = [str(x.message) for x in w]
        parts.append(release(comparative.to_release(site, site_warnings)))
    pooled = comparative.combine(parts)
    per_site = [comparative.released_site(p) for p in parts]
    estimates: list[dict[str, Any]] = []
    if len(parts) == 1:
        estimates = per_site[0]["estimates"]
    else:
        for adjustment, methods in pooled.items():
            rows = [e for s in per_site for e in s["estimates"] if e["adjustment"] == adjustment]
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
                    "sites": random.sites,
                    # Sums of the released counts; a count a site suppressed adds nothing.
                    **{k: sum(e[k] or 0 for e in rows) for k in comparative._COUNTS},
                }
            )
    return {
        "estimates": estimates,
        "meta_analysis": {k: {m: asdict(p) for m, p in v.items()} for k, v in pooled.items()},
        "per_site": per_site,
    }


def _incidence(a: IncidenceAnalysis, nodes: list[Path], release: Release) -> dict[str, Any]:
    parts = []
    for store in nodes:
        with open_store(store, read_only=True) as con:
            counts = incidence.local(con, a.target, a.outcome, a.settings)
        parts.append(release(incidence.to_release(counts, store.stem)))
    return {"rates": [asdict(r) for r in incidence.combine(parts)]}


def _characterization(
    a: CharacterizationAnalysis, nodes: list[Path], release: Release
) -> dict[str, Any]:
    combined = []
    for cohort in a.cohorts:
        parts = []
        for store in nodes:
            with open_store(store) as con:
                local = characterization.local(con, cohort, a.settings)
            parts.append(release(characterization.to_release(local, store.stem, cohort)))
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


def _feasibility(
    a: FeasibilityAnalysis, spec: StudySpec, nodes: list[Path], release: Release
) -> dict[str, Any]:
    definition = next(c.definition for c in spec.cohorts if c.id == a.cohort)
    assert definition is not None
    parts = [
        release(feasibility.to_release(feasibility.local(store, store.stem, definition, a.cohort)))
        for store in nodes
    ]
    total = feasibility.combine(parts)
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


def _utilization(a: UtilizationAnalysis, nodes: list[Path], release: Release) -> dict[str, Any]:
    parts = []
    for store in nodes:
        with open_store(store, read_only=True) as con:
            local = utilization.local(con, a.cohort, a.drugs, a.max_lines)
        parts.append(release(utilization.to_release(local, store.stem)))
    total = utilization.combine(parts)
    return {
        "by_year": [
            {
                "year": year,
                "drug": drug,
                "drug_name": total.names.get(drug, str(drug)),
                "persons": n,
                "cohort_persons": total.persons_by_year.get(year),
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


def _quality(con: duckdb.DuckDBPyConnection, fingerprint: str) -> dict[str, int]:
    """The data quality summary of this snapshot, computed once per fingerprint and kept in
    the store's metadata (the checks take long on large nodes; the data only change by loads)."""
    key = f"dq_summary.{fingerprint}"
    found = fetch_first(con, f"SELECT value FROM {META_SCHEMA}.store_info WHERE key = ?", [key])
    if found is not None:
        summary: dict[str, int] = json.loads(found[0])
        return summary
    report = run_checks(con)
    summary = {"passed": len(report.results) - len(report.failed), "failed": len(report.failed)}
    con.execute(f"INSERT INTO {META_SCHEMA}.store_info VALUES (?, ?)", [key, json.dumps(summary)])
    return summary


def _payload(released: Released) -> dict[str, Any]:
    """A released payload as JSON, as signed and as shipped in evidence bundles."""
    data = {
        "analysis": released.analysis,
        "site": released.site,
        "policy_version": released.policy_version,
        "policy_digest": released.policy_digest,
        "values": released.values,
        "labels": released.labels,
        "decisions": [d.to_dict() for d in released.decisions],
    }
    parsed: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return parsed


def _disclosure(policy: ReleasePolicy, released: list[Released]) -> dict[str, Any]:
    summary: dict[str, int] = {}
    for r in released:
        for rule, n in r.disclosure()["summary"].items():
            summary[rule] = summary.get(rule, 0) + n
    return {
        "policy_version": policy.version,
        "policy_digest": policy.digest(),
        "min_cell_count": policy.min_cell_count,
        "rounding": policy.rounding,
        "summary": dict(sorted(summary.items())),
        "releases": [r.disclosure() for r in released],
    }


def run_study(
    spec: StudySpec,
    nodes: list[Path],
    out: Path,
    progress: Progress | None = None,
    policy: ReleasePolicy | None = None,
    hub_dir: Path | None = None,
    approved_by: str = "local steward (single-process run)",
) -> dict[str, Any]:
    """Generate the cohorts on every node, run every analysis's local step there and pass its
    aggregates through the release gate under ``policy`` (the defaults when None), combine the
    released payloads, and write results and the disclosure report into ``out``. Each node
    signs and logs what it releases; the hub logs the submission and approval and signs and
    logs the combined result (``evidence.json``)."""
    policy = policy or ReleasePolicy()
    released: list[Released] = []
    signed: list[dict[str, Any]] = []
    hub = parties.hub(hub_dir)
    sites = {store.stem: parties.node(store) for store in nodes}
    spec_hash = spec.digest()
    base = {"spec_hash": spec_hash, "code_version": __version__, "policy_hash": policy.digest()}
    hub.log("study_submitted", study=spec.name, spec_hash=spec_hash)
    hub.log("study_approved", spec_hash=spec_hash, approved_by=approved_by)
    fingerprints: dict[str, str] = {}

    def release(request: ReleaseRequest) -> Released:
        payload = gate.apply(policy, request)
        released.append(payload)
        if payload.site in fingerprints:  # a refusal of a whole analysis type has no node
            statement = {
                **base,
                "fingerprint": fingerprints[payload.site],
                "analysis": payload.analysis,
                "site": payload.site,
            }
            signed.append(evidence.sign_release(sites[payload.site], _payload(payload), statement))
        return payload

    out.mkdir(parents=True, exist_ok=True)
    node_info = []
    quality: dict[str, dict[str, int]] = {}
    for i, store in enumerate(nodes):
        if progress:
            progress(f"cohorts on {store.stem}", i, len(nodes))
        for cohort in spec.cohorts:
            assert cohort.definition is not None
            generate(store, cohort.definition, cohort.id)
        with open_store(store) as con:
            fingerprint = snapshot_fingerprint(con)[0]
            quality[store.stem] = _quality(con, fingerprint)
        fingerprints[store.stem] = fingerprint
        node_info.append({"node": store.stem, "fingerprint": fingerprint})
        sites[store.stem].log("task_run", spec_hash=spec_hash, fingerprint=fingerprint)
    analyses = []
    for i, analysis in enumerate(spec.analyses):
        if progress:
            progress(analysis.name, i, len(spec.analyses))
        if analysis.type not in policy.allowed_analyses:
            release(ReleaseRequest(analysis.type, "*", ()))  # records the refusal
            body: dict[str, Any] = {"refused": "analysis type not allowed by the policy"}
        elif isinstance(analysis, ComparativeAnalysis):
            body = _comparative(analysis, nodes, release)
            _write_csv(out / f"{analysis.name}_estimates.csv", body["estimates"])
        elif isinstance(analysis, IncidenceAnalysis):
            body = _incidence(analysis, nodes, release)
            _write_csv(out / f"{analysis.name}_rates.csv", body["rates"])
        elif isinstance(analysis, FeasibilityAnalysis):
            body = _feasibility(analysis, spec, nodes, release)
            _write_csv(out / f"{analysis.name}_funnel.csv", body["funnel"])
        elif isinstance(analysis, UtilizationAnalysis):
            body = _utilization(analysis, nodes, release)
            _write_csv(out / f"{analysis.name}_by_year.csv", body["by_year"])
            _write_csv(
                out / f"{analysis.name}_pathways.csv",
                [
                    {"pathway": " > ".join(p["names"]), "persons": p["persons"]}
                    for p in body["pathways"]
                ],
            )
        else:
            body = _characterization(analysis, nodes, release)
            for c in body["cohorts"]:
                _write_csv(out / f"{analysis.name}_cohort{c['cohort']}.csv", c["covariates"])
        analyses.append({"name": analysis.name, "type": analysis.type, **body})
    results = {
        "study": spec.name,
        "spec_hash": spec_hash,
        "medlab_version": __version__,
        "nodes": node_info,
        "policy": {"version": policy.version, "digest": policy.digest()},
        "analyses": analyses,
        "disclosure": _disclosure(policy, released),
    }
    (out / "disclosure.json").write_text(json.dumps(results["disclosure"], indent=2) + "\n")
    text = json.dumps(results, indent=2, default=str) + "\n"
    (out / "results.json").write_text(text)
    (out / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    record = evidence.sign_combined(hub, sites, json.loads(text), base, signed, quality)
    (out / "evidence.json").write_text(json.dumps(record, indent=2) + "\n")
    from medlab.studies.report import write_report

    write_report(results, out)
    return results
