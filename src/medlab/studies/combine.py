"""A study's combine steps at the hub: from the nodes' released payloads to its results.

The hub receives only :class:`~medlab.studies.local.NodeOutput`s. It checks every payload
against its node's signature, combines the released payloads analysis by analysis, writes
``results.json``, ``disclosure.json``, ``spec.json``, the CSVs and the report, and signs and
logs the combined result (``evidence.json``). ``medlab study run`` and the hub service call
the same function.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medlab import __version__
from medlab.analyses import (
    assessment,
    characterization,
    feasibility,
    federated_mean,
    incidence,
    utilization,
)
from medlab.analyses import comparative_release as comparative_out
from medlab.errors import VerificationFailed
from medlab.ledger import evidence, parties
from medlab.ledger.keys import key_id, verify_json
from medlab.privacy import gate
from medlab.privacy.release import Released
from medlab.studies import secure
from medlab.studies.local import NodeOutput
from medlab.studies.spec import (
    Analysis,
    CharacterizationAnalysis,
    ComparativeAnalysis,
    FeasibilityAnalysis,
    FederatedMeanAnalysis,
    FederatedModelAnalysis,
    IncidenceAnalysis,
    StudySpec,
    UtilizationAnalysis,
    on_secure_sums,
)

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


def _balance_rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Per site, adjustment and balance covariate, the SMD before and after adjustment (the
    long form of CohortMethod's ``cm_covariate_balance``)."""
    return [
        {
            "site": site["site"],
            "adjustment": adjustment,
            "covariate": row["covariate"],
            "covariate_name": row.get("name"),
            "std_diff_before": row["smd_before"],
            "std_diff_after": after,
        }
        for site in body.get("per_site", [])
        for row in site.get("covariate_balance", [])
        for adjustment, after in row["smd_after"].items()
    ]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _comparative(a: ComparativeAnalysis, parts: list[Released]) -> dict[str, Any]:
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


def _released(parts: list[Released]) -> list[Released]:
    """The releases an analysis type refusal did not empty."""
    return [p for p in parts if "refused" not in p.values]


def _characterization(
    a: CharacterizationAnalysis, parts: dict[int | None, list[Released]]
) -> dict[str, Any]:
    combined = [characterization.combine(_released(parts[cohort])) for cohort in a.cohorts]
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


def _feasibility(parts: list[Released]) -> dict[str, Any]:
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


def _utilization(parts: list[Released]) -> dict[str, Any]:
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


def _analysis(
    a: Analysis,
    parts: dict[int | None, list[Released]],
    rounds: dict[int, list[Released]],
    out: Path,
) -> dict[str, Any]:
    """One analysis combined over the nodes' releases (``rounds``: every round's, for a
    multi-round analysis), with its CSVs written into ``out``."""
    body: dict[str, Any]
    if isinstance(a, FederatedMeanAnalysis):
        body = {"age": federated_mean.combine(rounds)}
        _write_csv(out / f"{a.name}_age.csv", [body["age"]])
    elif isinstance(a, ComparativeAnalysis):
        body = _comparative(a, parts[None])
        _write_csv(out / f"{a.name}_estimates.csv", [_estimate_row(e) for e in body["estimates"]])
        _write_csv(out / f"{a.name}_balance.csv", _balance_rows(body))
    elif isinstance(a, IncidenceAnalysis):
        body = {"rates": [asdict(r) for r in incidence.combine(_released(parts[None]))]}
        _write_csv(out / f"{a.name}_rates.csv", body["rates"])
    elif isinstance(a, FeasibilityAnalysis):
        body = _feasibility(parts[None])
        _write_csv(out / f"{a.name}_funnel.csv", body["funnel"])
    elif isinstance(a, UtilizationAnalysis):
        body = _utilization(parts[None])
        _write_csv(out / f"{a.name}_by_year.csv", body["by_year"])
        _write_csv(
            out / f"{a.name}_pathways.csv",
            [
                {"pathway": " > ".join(p["names"]), "persons": p["persons"]}
                for p in body["pathways"]
            ],
        )
    else:
        assert isinstance(a, CharacterizationAnalysis)
        body = _characterization(a, parts)
        for c in body["cohorts"]:
            _write_csv(out / f"{a.name}_cohort{c['cohort']}.csv", c["covariates"])
    return body


def _disclosure(outputs: list[NodeOutput], released: list[Released]) -> dict[str, Any]:
    """What the gates did, in terms the released values show anyway (the reasons stay in
    each node's journal, ``medlab.release_log``)."""
    return {
        "policies": {o.site: dict(o.policy) for o in outputs},
        "shown": sum(r.disclosure()["shown"] for r in released),
        "withheld": sum(r.disclosure()["withheld"] for r in released),
        "releases": [r.disclosure() for r in released],
    }


def verify_output(output: NodeOutput, spec_hash: str) -> None:
    """Refuse a node's output whose payloads its key did not sign for this study, snapshot
    and policy (a tampered or misdirected upload)."""
    if key_id(output.public_key) != output.key_id:
        raise VerificationFailed(f"{output.site}: the output's key id is not its key's")
    for r in output.releases:
        body = r.signed.get("signed", {})
        ok = (
            verify_json(output.public_key, r.signed)
            and body.get("result_hash") == parties.digest(r.payload)
            and body.get("spec_hash") == spec_hash
            and body.get("fingerprint") == output.fingerprint
            and body.get("policy_hash") == output.policy.get("digest")
            and r.payload.get("site") == output.site
        )
        if not ok:
            raise VerificationFailed(
                f"{output.site} / {r.analysis}: the payload is not the one the node signed"
            )


def combine_study(
    spec: StudySpec,
    outputs: list[NodeOutput],
    out: Path,
    hub: parties.Party,
    requested: bool = False,
    extra: dict[str, Any] | None = None,
    history: list[NodeOutput] | None = None,
) -> dict[str, Any]:
    """Combine the nodes' outputs (in node order) into the study's results, write them into
    ``out`` and sign them as ``hub``. ``requested``: whether the run asked the nodes for a
    tighter policy than their own; ``extra``: more top-level results keys (the federation's
    ``sites`` summary); ``history``: every output of every round, of the nodes that dropped
    out too (a pooled model's secure sums hold them; default ``outputs``)."""
    spec_hash = spec.digest()
    for output in outputs:
        verify_output(output, spec_hash)
    policy_digest = parties.digest({o.site: o.policy["digest"] for o in outputs})
    base = {"spec_hash": spec_hash, "code_version": __version__, "policy_hash": policy_digest}
    out.mkdir(parents=True, exist_ok=True)
    released: list[Released] = []
    signed: list[dict[str, Any]] = []
    analyses = []
    sites = [o for o in outputs if o.round == 1]
    for analysis in spec.analyses:
        parts: dict[int | None, list[Released]] = {}
        rounds: dict[int, list[Released]] = {}
        first = len(released)
        for output in outputs:
            for r in output.releases:
                if r.analysis == analysis.name:
                    payload = gate.restore(r.payload)
                    if r.round == 1:
                        parts.setdefault(r.cohort, []).append(payload)
                    rounds.setdefault(r.round, []).append(payload)
                    released.append(payload)
                    signed.append(
                        {"payload": r.payload, "signed": r.signed, "log_index": r.log_index}
                    )
        for cohort in getattr(analysis, "cohorts", None) or [None]:
            parts.setdefault(cohort, [])
        every = history if history is not None else outputs
        last = max((o.round for o in every), default=1)
        summed: dict[str, Any] = {}
        if isinstance(analysis, IncidenceAnalysis | CharacterizationAnalysis):
            # Tables summed on secure aggregation (a node releases no site-level numbers):
            # the pooled releases stand for every site's.
            summed = secure.state(analysis, every, last).result
            pooled_parts = [gate.restore(p) for p in summed.get("parts", [])]
            if pooled_parts:
                by_cohort = isinstance(analysis, CharacterizationAnalysis)
                parts = {c: [] for c in getattr(analysis, "cohorts", None) or [None]}
                for p in pooled_parts:
                    parts.setdefault(p.labels.get("cohort") if by_cohort else None, []).append(p)
                released.extend(pooled_parts)
        if isinstance(analysis, FederatedModelAnalysis):
            body = secure.state(analysis, every, last).result
            _write_csv(out / f"{analysis.name}_terms.csv", body.get("terms", []))
        else:
            body = _analysis(analysis, parts, rounds, out)
        if summed.get("sites"):
            body["sites_pooled"] = summed["sites"]
        elif summed:
            body.update({f"pooled_{k}": v for k, v in summed.items()})
        if isinstance(analysis, ComparativeAnalysis) and analysis.settings.pooled:
            found = secure.state(analysis, every, last).result
            body["pooled"] = found.pop("estimates", [])
            body.update({f"pooled_{k}": v for k, v in found.items()})
            _write_csv(out / f"{analysis.name}_pooled.csv", body["pooled"])
        refusals = {p.site: p.values["refused"] for p in released[first:] if "refused" in p.values}
        if refusals:
            body["refusals"] = refusals  # by node: a setting or a budget, never the data
            if len(refusals) == len(sites):
                body["refused"] = "; ".join(f"{k}: {v}" for k, v in sorted(refusals.items()))
        analyses.append({"name": analysis.name, "type": analysis.type, **body})
    results = {
        "study": spec.name,
        "spec_hash": spec_hash,
        "medlab_version": __version__,
        "nodes": [
            {
                "node": o.site,
                "fingerprint": o.fingerprint,
                "policy": {"version": o.policy["version"], "digest": o.policy["digest"]},
            }
            for o in sites
        ],
        "policy": {"digest": policy_digest, "requested": requested},
        **(extra or {}),
        "analyses": analyses,
        "disclosure": _disclosure(sites, released),
    }
    (out / "disclosure.json").write_text(json.dumps(results["disclosure"], indent=2) + "\n")
    text = json.dumps(results, indent=2, default=str) + "\n"
    (out / "results.json").write_text(text)
    (out / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    # A node's last round carries its log entries of every round (with newer proofs).
    latest = {o.site: o for o in sorted(outputs, key=lambda o: o.round)}
    nodes = {
        o.site: {
            "key_id": o.key_id,
            "public_key": o.public_key,
            **({"log_dir": o.log_dir} if o.log_dir else {}),
            **({"log": latest[o.site].log} if latest[o.site].log else {}),
        }
        for o in sites
    }
    quality = {o.site: o.quality for o in sites}
    record = evidence.sign_combined(hub, nodes, json.loads(text), base, signed, quality)
    (out / "evidence.json").write_text(json.dumps(record, indent=2) + "\n")
    from medlab.studies.report import write_report

    write_report(results, out)
    return results


def next_round(spec: StudySpec, round_: int, outputs: list[NodeOutput]) -> dict[str, Any] | None:
    """The parameters of round ``round_ + 1`` by analysis name, from the released payloads
    of round ``round_`` (``outputs``: of every round so far, a pooled model reads them all;
    ``None``: no analysis needs another round)."""
    params = {}
    for analysis in spec.analyses:
        if isinstance(analysis, FederatedMeanAnalysis):
            parts = [
                gate.restore(r.payload)
                for o in outputs
                if o.round == round_
                for r in o.releases
                if r.analysis == analysis.name and "refused" not in r.payload["values"]
            ]
            found = federated_mean.next_params(round_, parts)
            if found is not None:
                params[analysis.name] = found
        elif on_secure_sums(analysis):
            asked = secure.state(analysis, outputs, round_).ask
            if asked is not None:
                params[analysis.name] = asked
    return params or None
