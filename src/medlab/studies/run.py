"""Run a study over node stores: local steps in each node, combine steps over the aggregates.

Here both happen in one process; every local step's aggregates go through the release gate
on the node's side, and only the released payloads reach the combine steps, as they will
across the network.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import duckdb

from medlab import __version__
from medlab.analyses import (
    assessment,
    characterization,
    comparative,
    feasibility,
    incidence,
    utilization,
)
from medlab.analyses import comparative_release as comparative_out
from medlab.analyses.scope import Scope
from medlab.cdm.dq import run_checks
from medlab.cdm.fingerprint import record_snapshot, recorded_snapshot, snapshot_fingerprint
from medlab.cdm.store import META_SCHEMA, fetch_first, open_store, store_lock
from medlab.cohorts.engine import generate
from medlab.ledger import evidence, parties
from medlab.privacy import gate
from medlab.privacy.node_policy import node_policy
from medlab.privacy.node_release import NodeReleaser
from medlab.privacy.policy import ReleasePolicy, tighten
from medlab.privacy.release import Population, Released
from medlab.privacy.release import Release as ReleaseRequest
from medlab.studies.spec import (
    CharacterizationAnalysis,
    ComparativeAnalysis,
    FeasibilityAnalysis,
    IncidenceAnalysis,
    StudySpec,
    UtilizationAnalysis,
)

Progress = Callable[[str, int, int], None]


_CALIBRATED = (
    "calibrated_hr",
    "calibrated_ci_low",
    "calibrated_ci_high",
    "calibrated_p",
    "calibrated_log_hr",
    "calibrated_se",
    "ease",
)


def _estimate_row(e: dict[str, Any]) -> dict[str, Any]:
    """One comparative estimate as a flat CSV row with the same columns for every row."""
    row = {k: v for k, v in e.items() if not isinstance(v, dict | list)}
    for k in _CALIBRATED:
        row[k] = e.get(k)
    null = e.get("null") or {}
    row["null_mean"], row["null_sd"] = null.get("mean"), null.get("sd")
    for k in ("failing", "not_evaluated"):
        row[k] = ";".join(e.get(k, []))
    for name, check in (e.get("checks") or {}).items():
        row[f"{name}_value"], row[f"{name}_pass"] = check["value"], check["pass"]
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class _Node:
    """One node of a study run: its store, the policy it releases under, the data snapshot,
    the scope its populations are keyed by, and its releaser (gate, audit, journal)."""

    store: Path
    site: str
    policy: ReleasePolicy
    fingerprint: str
    scope: Scope
    releaser: NodeReleaser
    roots: dict[int, Population]  # each cohort's persons (node-internal)


Release = Callable[[_Node, Any, Callable[[], ReleaseRequest]], Released]


def _comparative(a: ComparativeAnalysis, nodes: list[_Node], release: Release) -> dict[str, Any]:
    parts = []
    for node in nodes:

        def local(node: _Node = node) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                site = comparative.local(
                    con, node.site, a.target, a.comparator, a.outcome, a.settings
                )
            return comparative_out.to_release(site, node.scope, a)

        parts.append(release(node, a, local))
    pooled = comparative_out.combine(parts)
    per_site = [comparative_out.released_site(p) for p in parts if "refused" not in p.values]
    for site in per_site:
        for e in site["estimates"]:
            e.update(assessment.assess(e, site["controls"], site["equipoise"]))
    estimates: list[dict[str, Any]] = []
    if len(parts) == 1:
        estimates = per_site[0]["estimates"] if per_site else []
    else:
        for adjustment in a.settings.adjustments:
            rows = [e for s in per_site for e in s["estimates"] if e["adjustment"] == adjustment]
            methods = pooled.get(adjustment)
            random = methods["random"] if methods else None
            estimates.append(
                {
                    "adjustment": adjustment,
                    "hr": random.hr if random else None,
                    "ci_low": random.ci_low if random else None,
                    "ci_high": random.ci_high if random else None,
                    "p": random.p if random else None,
                    "log_hr": random.log_hr if random else None,
                    "se": random.se if random else None,
                    "tau2": random.tau2 if random else None,
                    "method": "random effects (DL)",
                    "sites": random.sites if random else 0,
                    # Sums of the released counts; a count a site withheld adds nothing.
                    **{k: _total([e[k] for e in rows]) for k in comparative_out._COUNTS},
                }
            )
        for e in estimates:
            controls = assessment.pooled_controls(per_site, e["adjustment"])
            e.update(assessment.assess(e, controls, None))
            e["controls"] = controls
            failing_sites = [
                s["site"]
                for s in per_site
                for x in s["estimates"]
                if x["adjustment"] == e["adjustment"] and x["diagnostics"] == "fail"
            ]
            if failing_sites:
                e["diagnostics"] = "fail"
                e["failing"] = [*e["failing"], *(f"site {name}" for name in failing_sites)]
    return {
        "estimates": estimates,
        "meta_analysis": {k: {m: asdict(p) for m, p in v.items()} for k, v in pooled.items()},
        "per_site": per_site,
    }


def _total(values: list[int | None]) -> int | None:
    shown = [v for v in values if v is not None]
    return sum(shown) if shown else None


def _incidence(a: IncidenceAnalysis, nodes: list[_Node], release: Release) -> dict[str, Any]:
    parts = []
    for node in nodes:

        def local(node: _Node = node) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                counts = incidence.local(con, a.target, a.outcome, a.settings, node.scope.calendar)
            return incidence.to_release(
                counts, node.site, node.scope, a.target, a.outcome, a.settings
            )

        parts.append(release(node, a, local))
    return {"rates": [asdict(r) for r in incidence.combine(_released(parts))]}


def _released(parts: list[Released]) -> list[Released]:
    """The releases an analysis type refusal did not empty."""
    return [p for p in parts if "refused" not in p.values]


def _characterization(
    a: CharacterizationAnalysis, nodes: list[_Node], release: Release
) -> dict[str, Any]:
    combined = []
    for cohort in a.cohorts:
        parts = []
        for node in nodes:

            def local(node: _Node = node, cohort: int = cohort) -> ReleaseRequest:
                with open_store(node.store) as con:
                    found = characterization.local(con, cohort, a.settings, node.scope.calendar)
                return characterization.to_release(found, node.site, cohort, node.scope)

            parts.append(release(node, (a, cohort), local))
        combined.append(characterization.combine(_released(parts)))
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
    a: FeasibilityAnalysis, spec: StudySpec, nodes: list[_Node], release: Release
) -> dict[str, Any]:
    definition = next(c.definition for c in spec.cohorts if c.id == a.cohort)
    assert definition is not None
    parts = []
    for node in nodes:

        def local(node: _Node = node) -> ReleaseRequest:
            site = feasibility.local(
                node.store, node.site, definition, a.cohort, node.scope.calendar
            )
            return feasibility.to_release(site, node.scope, a.cohort)

        parts.append(release(node, a, local))
    total = feasibility.combine(_released(parts))
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


def _utilization(a: UtilizationAnalysis, nodes: list[_Node], release: Release) -> dict[str, Any]:
    parts = []
    for node in nodes:

        def local(node: _Node = node) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                found = utilization.local(con, a.cohort, a.drugs, a.max_lines, node.scope.calendar)
            return utilization.to_release(found, node.site, node.scope, a)

        parts.append(release(node, a, local))
    total = utilization.combine(_released(parts))
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
            if n
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


def _disclosure(nodes: list[_Node], released: list[Released]) -> dict[str, Any]:
    """What the gates did, in terms the released values show anyway (the reasons stay in
    each node's journal, ``medlab.release_log``)."""
    return {
        "policies": {
            n.site: {
                "version": n.policy.version,
                "digest": n.policy.digest(),
                "min_cell_count": n.policy.min_cell_count,
                "count_protection": n.policy.count_protection,
                "rounding": n.policy.rounding,
            }
            for n in nodes
        },
        "shown": sum(r.disclosure()["shown"] for r in released),
        "withheld": sum(r.disclosure()["withheld"] for r in released),
        "releases": [r.disclosure() for r in released],
    }


def _members(con: duckdb.DuckDBPyConnection, cohort_id: int) -> frozenset[int]:
    rows = con.execute(
        "SELECT DISTINCT subject_id FROM results.cohort WHERE cohort_definition_id = ?",
        [cohort_id],
    ).fetchall()
    return frozenset(int(r[0]) for r in rows)


def _cohorts_of(analysis: Any, cohort: int | None) -> list[int]:
    """The cohorts a release is about (a characterization release is about one of its)."""
    if cohort is not None:
        return [cohort]
    return [
        getattr(analysis, k)
        for k in ("target", "comparator", "outcome", "cohort")
        if hasattr(analysis, k)
    ]


def _policy_request(policy: ReleasePolicy | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(policy, ReleasePolicy):
        return policy.model_dump(mode="json")
    return policy


def _release_id(node: _Node, analysis: Any) -> str:
    """What makes two releases the same: the analysis (with its cohorts' definitions), the
    node, its data snapshot and the policy."""
    item, cohort = analysis if isinstance(analysis, tuple) else (analysis, None)
    return parties.digest(
        {
            "analysis": item.model_dump(mode="json"),
            "cohort": cohort,
            "cohorts": node.scope.cohorts,
            "calendar": node.scope.calendar.model_dump(),
            "site": node.site,
            "snapshot": node.fingerprint,
            "policy": node.policy.digest(),
        }
    )


def run_study(
    spec: StudySpec,
    nodes: list[Path],
    out: Path,
    progress: Progress | None = None,
    policy: ReleasePolicy | dict[str, Any] | None = None,
    hub_dir: Path | None = None,
    approved_by: str = "local steward (single-process run)",
) -> dict[str, Any]:
    """Generate the cohorts on every node, run every analysis's local step there and pass its
    aggregates through each node's release gate under the node's own policy (``policy``, a
    request, may only tighten it), combine the released payloads, and write results and the
    disclosure report into ``out``. Each node signs and logs what it releases; the hub logs
    the submission and approval and signs and logs the combined result (``evidence.json``).
    Every node is held (:func:`store_lock`) for the whole run, so concurrent runs on one
    store never read each other's cohorts."""
    request = _policy_request(policy)
    with ExitStack() as held:
        for store in sorted({n.resolve() for n in nodes}):
            held.enter_context(store_lock(store))
        return _run(spec, nodes, out, progress, request, hub_dir, approved_by)


def _run(
    spec: StudySpec,
    stores: list[Path],
    out: Path,
    progress: Progress | None,
    request: dict[str, Any] | None,
    hub_dir: Path | None,
    approved_by: str,
) -> dict[str, Any]:
    released: list[Released] = []
    signed: list[dict[str, Any]] = []
    hub = parties.hub(hub_dir)
    sites = {store.stem: parties.node(store) for store in stores}
    spec_hash = spec.digest()
    policies = {
        store.stem: tighten(node_policy(store).policy, request, "the policy given with the run")
        for store in stores
    }
    policy_digest = parties.digest({site: p.digest() for site, p in sorted(policies.items())})
    base = {"spec_hash": spec_hash, "code_version": __version__, "policy_hash": policy_digest}
    hub.log("study_submitted", study=spec.name, spec_hash=spec_hash)
    hub.log("study_approved", spec_hash=spec_hash, approved_by=approved_by)
    cohort_digests = {c.id: c.definition.digest() for c in spec.cohorts if c.definition}
    entries = {c.id: c.definition.max_entries_per_person for c in spec.cohorts if c.definition}

    def release(node: _Node, analysis: Any, local: Callable[[], ReleaseRequest]) -> Released:
        item = analysis[0] if isinstance(analysis, tuple) else analysis
        release_id = _release_id(node, analysis)
        admission = node.releaser.admit(item.type, release_id)
        if admission.refused:
            payload = gate.refusal(node.policy, item.type, node.site, admission.refused)
        elif admission.cached is not None:
            payload = admission.cached
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                request_ = local()
            cohorts = _cohorts_of(item, analysis[1] if isinstance(analysis, tuple) else None)
            request_ = replace(request_, roots=tuple(node.roots[c] for c in cohorts))
            # Warnings speak of the data; they go to the node's journal, for its steward.
            context = {
                "study": spec.name,
                "spec_hash": spec_hash,
                "analysis": item.name,
                "warnings": [str(w.message) for w in caught],
            }
            payload = node.releaser.release(request_, release_id, context)
        released.append(payload)
        statement = {
            **base,
            "policy_hash": node.policy.digest(),
            "fingerprint": node.fingerprint,
            "analysis": payload.analysis,
            "site": payload.site,
        }
        signed.append(evidence.sign_release(sites[payload.site], gate.payload(payload), statement))
        return payload

    out.mkdir(parents=True, exist_ok=True)
    node_runs: list[_Node] = []
    node_info = []
    quality: dict[str, dict[str, int]] = {}
    for i, store in enumerate(stores):
        if progress:
            progress(f"cohorts on {store.stem}", i, len(stores))
        for cohort in spec.cohorts:
            assert cohort.definition is not None
            generate(store, cohort.definition, cohort.id)
        with open_store(store) as con:
            fingerprint = snapshot_fingerprint(con)[0]
            if recorded_snapshot(con) != fingerprint:  # data changed behind medlab's back
                record_snapshot(con, fingerprint)
            quality[store.stem] = _quality(con, fingerprint)
            scope = Scope(fingerprint, cohort_digests, spec.calendar, entries)
            roots = {c.id: scope.cohort(c.id, _members(con, c.id)) for c in spec.cohorts}
        node_policy_ = policies[store.stem]
        node_runs.append(
            _Node(
                store,
                store.stem,
                node_policy_,
                fingerprint,
                scope,
                NodeReleaser(store, node_policy_, spec.project),
                roots,
            )
        )
        node_info.append(
            {
                "node": store.stem,
                "fingerprint": fingerprint,
                "policy": {"version": node_policy_.version, "digest": node_policy_.digest()},
            }
        )
        sites[store.stem].log("task_run", spec_hash=spec_hash, fingerprint=fingerprint)
    analyses = []
    for i, analysis in enumerate(spec.analyses):
        if progress:
            progress(analysis.name, i, len(spec.analyses))
        first = len(released)
        if isinstance(analysis, ComparativeAnalysis):
            body = _comparative(analysis, node_runs, release)
            _write_csv(
                out / f"{analysis.name}_estimates.csv",
                [_estimate_row(e) for e in body["estimates"]],
            )
        elif isinstance(analysis, IncidenceAnalysis):
            body = _incidence(analysis, node_runs, release)
            _write_csv(out / f"{analysis.name}_rates.csv", body["rates"])
        elif isinstance(analysis, FeasibilityAnalysis):
            body = _feasibility(analysis, spec, node_runs, release)
            _write_csv(out / f"{analysis.name}_funnel.csv", body["funnel"])
        elif isinstance(analysis, UtilizationAnalysis):
            body = _utilization(analysis, node_runs, release)
            _write_csv(out / f"{analysis.name}_by_year.csv", body["by_year"])
            _write_csv(
                out / f"{analysis.name}_pathways.csv",
                [
                    {"pathway": " > ".join(p["names"]), "persons": p["persons"]}
                    for p in body["pathways"]
                ],
            )
        else:
            body = _characterization(analysis, node_runs, release)
            for c in body["cohorts"]:
                _write_csv(out / f"{analysis.name}_cohort{c['cohort']}.csv", c["covariates"])
        refusals = {p.site: p.values["refused"] for p in released[first:] if "refused" in p.values}
        if refusals:
            body["refusals"] = refusals  # by node: a setting or a budget, never the data
            if len(refusals) == len(node_runs):
                body["refused"] = "; ".join(f"{k}: {v}" for k, v in sorted(refusals.items()))
        analyses.append({"name": analysis.name, "type": analysis.type, **body})
    results = {
        "study": spec.name,
        "spec_hash": spec_hash,
        "medlab_version": __version__,
        "nodes": node_info,
        "policy": {"digest": policy_digest, "requested": request is not None},
        "analyses": analyses,
        "disclosure": _disclosure(node_runs, released),
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
