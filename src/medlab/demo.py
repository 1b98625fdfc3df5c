"""``make demo``: three synthetic hospitals and the real Eunomia sample as four nodes.

Synthesizes 3 sites (30,000 patients, seed 7), loads Eunomia GiBleed as a fourth node
(pseudonymized at ingest), runs the data quality checks on each, generates cohorts, then runs
the Eunomia reference study as a federation: a hub process and one node-agent process per
node on 127.0.0.1, the study submitted through the client, each node's task states shown as
they change, Eunomia's steward approving through the node's CLI; the results are fetched and
printed (hazard ratios, disclosure report), the evidence bundle verified, every process
stopped. Last, a differentially private query, showing the budget left. Output goes to
``demo-output/`` (replaced on each run).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from medlab import synth
from medlab.analyses.comparative import PooledSettings
from medlab.cdm import dq
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, open_store, row_counts
from medlab.cli.output import progress_bar, stdout
from medlab.cohorts.engine import generate
from medlab.cohorts.model import example, load_definition
from medlab.errors import PolicyError
from medlab.federation import launch
from medlab.federation.client.sdk import Client
from medlab.federation.hub import vocabulary
from medlab.federation.hub.service import init_hub
from medlab.federation.node.inbox import Inbox
from medlab.ledger import parties
from medlab.ledger.evidence import export_bundle, verify_bundle
from medlab.privacy import budget as budgets
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import DifferentialPrivacy, FederationPolicy, ReleasePolicy
from medlab.privacy.query import DPQuery, answer
from medlab.screens import Screens
from medlab.studies.spec import ComparativeAnalysis, StudySpec, load_spec
from medlab.synth.generate import records, synthesize

OUT = Path("demo-output")
EUNOMIA = Path(os.environ.get("MEDLAB_EUNOMIA_DIR", "../shared/data/eunomia-gibleed"))
STUDY = Path(__file__).resolve().parents[2] / "examples/studies/eunomia_celecoxib_diclofenac.yaml"
EVENT_TABLES = (
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
)


def main(out: Path = OUT, patients: int = 30000, eunomia_dir: Path = EUNOMIA) -> int:
    """Run the demo end to end into ``out``; returns the process exit status."""
    if out.exists():
        shutil.rmtree(out)
    stdout.rule("medlab demo: four nodes")
    with progress_bar("synthesizing 3 hospitals") as update:
        truth = synthesize(out / "synthetic", sites=3, patients=patients, seed=7, progress=update)
    stores = [
        (out / "synthetic" / s["store"], f"synthetic ({s['profile']})")
        for s in records(truth, "sites")
    ]
    if (eunomia_dir / "PERSON.csv").exists():
        eunomia = out / "eunomia.duckdb"
        init_store(eunomia)
        with progress_bar("loading Eunomia GiBleed") as update:
            report = load_omop_csv(eunomia, eunomia_dir, progress=update)
        stores.append((eunomia, f"Eunomia GiBleed (CDM v{report.source_cdm_version})"))
        stdout.print(f"Eunomia loaded with {len(report.warnings)} warnings, e.g.:")
        for warning in report.warnings[:3]:
            stdout.print(f"  - {warning}", highlight=False)
    else:
        stdout.print(f"[yellow]Eunomia sample not found at {eunomia_dir}; showing 3 nodes[/]")

    table = Table(title="nodes")
    for col in ("node", "source", "persons", "event rows", "fingerprint", "dq passed", "dq failed"):
        table.add_column(
            col,
            justify="right"
            if col in ("persons", "event rows", "dq passed", "dq failed")
            else "left",
        )
    failures: dict[str, list[str]] = {}
    for store, source in stores:
        with (
            open_store(store, read_only=True) as con,
            progress_bar(f"checking {store.name}") as update,
        ):
            counts = row_counts(con)
            fingerprint, _ = snapshot_fingerprint(con)
            report_dq = dq.run_checks(con, progress=update)
        failed = report_dq.failed
        failures[store.stem] = [r.check.name for r in failed]
        table.add_row(
            store.stem,
            source,
            f"{counts['person']:,}",
            f"{sum(counts[t] for t in EVENT_TABLES):,}",
            fingerprint[:19] + "…",
            str(len(report_dq.results) - len(failed)),
            str(len(failed)),
        )
    stdout.print(table)
    for node, names in failures.items():
        if names:
            shown = ", ".join(names[:4]) + (" …" if len(names) > 4 else "")
            stdout.print(f"{node}: failed checks include {shown}", highlight=False)
    for effect in records(truth, "effects"):
        if effect["kind"] == "hazard_ratio":
            stdout.print(
                f"planted truth: {effect['target']['name']} vs {effect['comparator']['name']}"
                f" → {effect['outcome']['name']}, HR {effect['true_hazard_ratio']}",
                highlight=False,
            )
    _cohorts(stores, eunomia_dir.parent / "eunomia-cohorts")
    _study([store for store, _ in stores], out / "study")
    _dp_query(stores[-1][0])
    stdout.print(f"stores and truth.json are in {out}/")
    return 0


def _study(nodes: list[Path], out: Path) -> None:
    """Run the shipped celecoxib-vs-diclofenac study across every node as separate parties:
    a hub process and one agent process per node on 127.0.0.1, the study submitted through
    the client, one node's steward approving it through the node's CLI."""
    spec = _pooled(load_spec(STUDY))
    results = _federated(spec, nodes, out)
    comparative = next(a for a in results["analyses"] if a["type"] == "comparative")
    table = Table(
        title=f"study {spec.name} across {len(nodes)} nodes: hazard ratios "
        "(random-effects meta-analysis when several nodes)"
    )
    for col in ("adjustment", "HR", "95% CI", "target events", "comparator events"):
        table.add_column(col, justify="left" if col == "adjustment" else "right")
    for e in comparative["estimates"]:
        table.add_row(
            e["adjustment"],
            _fmt(e["hr"]),
            f"{_fmt(e['ci_low'])}-{_fmt(e['ci_high'])}",
            "suppressed" if e["target_events"] is None else str(e["target_events"]),
            "suppressed" if e["comparator_events"] is None else str(e["comparator_events"]),
        )
    stdout.print(table)
    _print_pooled(comparative)
    disclosure = results["disclosure"]
    report = Table(
        title="disclosure report: what each node's release gate let out (the reasons stay "
        "with each node's steward)"
    )
    for col in ("analysis", "node", "policy", "values shown", "withheld"):
        report.add_column(col, justify="right" if col in ("values shown", "withheld") else "left")
    for r in disclosure["releases"]:
        report.add_row(
            r["analysis"], r["site"], r["policy_version"], str(r["shown"]), str(r["withheld"])
        )
    stdout.print(report)
    stdout.print(f"study report: {out / 'report.html'} (disclosure: {out / 'disclosure.json'})")
    bundle = out.parent / "evidence.zip"
    export_bundle(out, bundle)
    checks = verify_bundle(bundle)
    passed = sum(c.ok for c in checks)
    stdout.print(
        f"evidence bundle {bundle}: signed by {len(nodes)} nodes and the hub, "
        f"{passed} of {len(checks)} offline checks pass (medlab verify {bundle})",
        highlight=False,
        soft_wrap=True,
    )


def _pooled(spec: StudySpec) -> StudySpec:
    """The study with pooled estimates on secure sums asked of its comparative analysis."""
    analyses = [
        a.model_copy(
            update={"settings": a.settings.model_copy(update={"pooled": PooledSettings()})}
        )
        if isinstance(a, ComparativeAnalysis)
        else a
        for a in spec.analyses
    ]
    return StudySpec.model_validate({**spec.model_dump(), "analyses": analyses})


def _print_pooled(comparative: dict[str, Any]) -> None:
    """The pooled estimates next to the meta-analysis, and which sites each one holds."""
    meta = {e["adjustment"]: e for e in comparative["estimates"]}
    left = comparative.get("pooled_withheld_by", {})
    if not comparative.get("pooled"):
        reason = comparative.get("pooled_withheld", "no pooled estimate")
        stdout.print(f"pooled estimates withheld: {reason}", highlight=False, soft_wrap=True)
        for site, why in sorted(left.items()):
            stdout.print(f"  {site} not pooled: {why}", highlight=False, soft_wrap=True)
        return
    table = Table(
        title="pooled on secure sums (one PS model across the sites, site-stratified Cox) "
        "vs the meta-analysis of the sites' own models"
    )
    for col in ("adjustment", "pooled HR", "95% CI", "sites pooled", "meta HR", "sites in meta"):
        table.add_column(col, justify="left" if col == "adjustment" else "right")
    for e in comparative["pooled"]:
        m = meta.get(e["adjustment"], {})
        table.add_row(
            e["adjustment"],
            _fmt(e["hr"]) if e["hr"] is not None else f"withheld ({e.get('withheld')})",
            f"{_fmt(e['ci_low'])}-{_fmt(e['ci_high'])}",
            str(len(e["sites"])),
            _fmt(m.get("hr")),
            str(m.get("sites", 0)),
        )
    stdout.print(table)
    for site, reason in sorted(left.items()):
        stdout.print(f"  {site} not pooled: {reason}", highlight=False, soft_wrap=True)


def _federated(spec: StudySpec, nodes: list[Path], out: Path) -> dict[str, Any]:
    hub_dir, logs = out.parent / "hub", out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    hub = init_hub(hub_dir)  # governed: projects, agreements, two approvals
    operator = hub.bootstrap("olga")
    # The vocabulary the study builder searches: the public one the nodes share (the
    # synthetic nodes' holds every concept of Eunomia's).
    vocabulary.load(hub.sessions, [Path(synth.__file__).parent / "vocabulary"])
    for store in nodes:  # every node takes tasks under an agreement its steward signed only
        federation = FederationPolicy(  # Eunomia's steward approves each task
            approval="each_task" if store.stem == "eunomia" else "none", require_agreement=True
        )
        set_policy(store, ReleasePolicy(version="demo-1", federation=federation), "demo")
    port = launch.free_port()
    url = f"http://{launch.LOOPBACK}:{port}"
    processes = [launch.start_hub(hub_dir, port, logs / "hub.log")]
    stdout.print(f"hub serving on {url} (its own process); node agents dial out to it")
    screens: Screens | None = None
    try:
        users, tokens = _onboard(Client(url, operator), url, nodes, spec)
        tokens["olga"] = operator
        _write_tokens(out.parent / "tokens.json", tokens)
        screens = Screens(url, tokens, out.parent / "screenshots")
        for store in nodes:
            processes.append(launch.start_agent(store, url, logs / f"{store.stem}.log"))
        study = users["alan"].submit(spec, project=PROJECT, min_sites=len(nodes))
        stdout.print(
            f"alan (pharma analyst) submitted {spec.name} as {study.id} in {PROJECT}: "
            f"{study.status().state}; nothing is dispatched before two approvals",
            highlight=False,
        )
        for who, role in (("rita", "project lead"), ("olga", "operator's reviewer")):
            status = users[who].approve(study.id)
            stdout.print(f"  {who} ({role}) approves: {status.state}", highlight=False)
        seen: dict[str, str] = {}
        shown = 1  # later rounds (the secure sums of the pooled estimates): one line per 10
        while (status := study.status()).state == "running":
            for t in status.tasks:
                if t.round == 1 and seen.get(t.node) != t.state:
                    seen[t.node] = t.state
                    stdout.print(f"  {t.node}: {t.state}", highlight=False)
                    if t.state == "awaiting_approval":
                        screens.shot(
                            "sam", f"/steward/{t.node}", "steward-waiting-task", "section.task"
                        )
                        _approve(nodes, t.node, logs)
            latest = max((t.round for t in status.tasks), default=1)
            if latest >= shown + 10:
                shown = latest // 10 * 10
                stdout.print(f"  secure-aggregation round {shown}", highlight=False)
            time.sleep(0.3)
        for t in status.tasks:
            if t.round == 1 and seen.get(t.node) != t.state:
                stdout.print(f"  {t.node}: {t.state}", highlight=False)
        rounds = max((t.round for t in status.tasks), default=1)
        stdout.print(f"  {rounds} rounds", highlight=False)
        stdout.print(f"study {status.state}: {status.reason}", highlight=False, soft_wrap=True)
        if status.state != "completed":
            raise SystemExit(1)
        study.fetch(out)
        _usage_and_audit(users, study.id)
        _screenshots(screens, study.id, nodes, out)
        return study.results()
    finally:
        if screens is not None:
            screens.close()
        for process in reversed(processes):
            launch.stop(process)


def _write_tokens(path: Path, tokens: dict[str, str]) -> None:
    """The demo users' tokens (owner-only), to sign in to the web app after the demo."""
    path.touch(mode=0o600)
    path.write_text(json.dumps(tokens, indent=2) + "\n")


def _screenshots(screens: Screens, study_id: str, nodes: list[Path], out: Path) -> None:
    """Each workspace as its user sees it, while the hub still serves."""
    if screens.missing:
        stdout.print(f"no screenshots: {screens.missing}", highlight=False)
        return
    bundle = out.parent / "evidence.zip"
    export_bundle(out, bundle)
    synthetic = next(s.stem for s in nodes if s.stem != "eunomia")
    screens.shot(
        "alan",
        f"/studies/{study_id}?adjustment=matching",
        "researcher-covariate-balance",
        element="figure.chart:has([id$='-covariates'])",
    )
    for user, path, name, upload in (
        ("alan", f"/studies/{study_id}", "researcher-study", None),
        ("rita", f"/projects/{PROJECT}", "researcher-project", None),
        ("alan", "/build", "researcher-builder", None),
        ("alan", "/build/cohort?q=celecoxib", "researcher-cohort-editor", None),
        ("sam", "/steward/eunomia", "steward-node", None),
        ("sue", f"/steward/{synthetic}", "steward-synthetic-node", None),
        ("aude", "/audit", "auditor-log", None),
        ("aude", f"/studies/{study_id}/evidence", "auditor-evidence", None),
        ("aude", "/verify", "auditor-verify", bundle),
        ("olga", "/operator", "operator", None),
        ("alan", f"/studies/{study_id}?lang=zh", "researcher-study-zh", None),  # remembered
    ):
        screens.shot(user, path, name, upload=upload)
    names = ", ".join(p.name for p in screens.saved)
    stdout.print(
        f"screenshots of each workspace in {screens.out}/: {names}",
        highlight=False,
        soft_wrap=True,
    )
    stdout.print(
        f"the web app: medlab hub serve {out.parent / 'hub'}, then http://127.0.0.1:8400/ "
        f"(sign in with a token of {out.parent / 'tokens.json'})",
        highlight=False,
        soft_wrap=True,
    )


PROJECT = "nsaid-gi-safety"


def _onboard(
    op: Client, url: str, nodes: list[Path], spec: StudySpec
) -> tuple[dict[str, Client], dict[str, str]]:
    """The operator onboards two hospitals with their stewards, a pharma company with a
    project lead and an analyst, and a regulator's auditor; the project gets an agreement
    at every node, signed at the node by its steward and countersigned by the operator."""
    from medlab.federation.node import agreements

    users = {"olga": op}
    hospitals = {"eunomia": "eunomia-hospital"}
    orgs = [("eunomia-hospital", "hospital"), ("synthetic-health", "hospital")]
    orgs += [("pharma-co", "pharma"), ("regulator", "regulator")]
    for name, kind in orgs:
        op.add_organisation(name, kind)
    people = [("sam", "steward", "eunomia-hospital"), ("sue", "steward", "synthetic-health")]
    people += [("rita", "researcher", "pharma-co"), ("alan", "researcher", "pharma-co")]
    people += [("aude", "auditor", "regulator")]
    tokens = {}
    for name, role, org in people:
        tokens[name] = op.add_user(name, role, org)["token"]
        users[name] = Client(url, tokens[name])
    for store in nodes:
        org = hospitals.get(store.stem, "synthetic-health")
        op.add_node(store.stem, parties.node(store).signer.public_pem, org)
    ends = time.time() + 365 * 86400
    end = dt.datetime.fromtimestamp(ends, dt.UTC)
    op.add_project(PROJECT, "pharma-co", "GI bleeding on celecoxib vs diclofenac", "rita", end)
    users["rita"].add_member(PROJECT, "alan", "analyst")
    types: list[str] = sorted({a.type for a in spec.analyses})
    synthetic = sum(store.stem != "eunomia" for store in nodes)
    for store in nodes:
        steward = "sam" if store.stem == "eunomia" else "sue"
        drafted = users["rita"].add_agreement(
            PROJECT, store.stem, types, sorted(spec.domains()), "demo-1", end - dt.timedelta(1)
        )
        signature = agreements.sign(store, users[steward].agreement(drafted["agreement"]), steward)
        users[steward].move_agreement(drafted["agreement"], "signed", signature)
        op.move_agreement(drafted["agreement"], "active")
    stdout.print(
        f"onboarded: operator olga; stewards sam (eunomia) and sue ({synthetic} synthetic "
        f"nodes); pharma lead rita and analyst alan; auditor aude; project {PROJECT} with an "
        f"active agreement at each of {len(nodes)} nodes ({', '.join(types)})",
        highlight=False,
        soft_wrap=True,
    )
    return users, tokens


def _usage_and_audit(users: dict[str, Client], study_id: str) -> None:
    """The project's usage report (its lead's view) and the study's audit trail (the
    auditor's)."""
    usage = users["rita"].usage(PROJECT)
    table = Table(title=f"usage of {PROJECT} (medlab hub usage {PROJECT})")
    for col in ("node", "tasks", "node-seconds", "releases", "epsilon spent"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for node, kinds in usage["nodes"].items():
        table.add_row(
            node,
            f"{kinds['tasks']:g}",
            f"{kinds['node_seconds']:.1f}",
            f"{kinds['releases']:g}",
            f"{kinds['epsilon']:g}",
        )
    stdout.print(table)
    trail = users["aude"].audit(study=study_id)
    table = Table(
        title=f"audit trail of {study_id} (medlab hub audit DIR --study {study_id}; "
        "repeated calls in a row shown once, with their count)"
    )
    for col in ("time", "event", "who", "operation", "outcome", "calls"):
        table.add_column(col, justify="right" if col == "calls" else "left")
    rows: list[list[str]] = []
    for e in trail:
        who = e.get("user") or e.get("approved_by") or e.get("researcher") or e.get("by") or ""
        outcome = str(e.get("status", e.get("kind", "")))
        row = [e["time"][11:23], e["type"], str(who), e.get("operation") or "", outcome, "1"]
        if rows and rows[-1][1:5] == row[1:5]:
            rows[-1][5] = str(int(rows[-1][5]) + 1)
        else:
            rows.append(row)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def _approve(nodes: list[Path], name: str, logs: Path) -> None:
    """The node's steward looks at the waiting task and approves it with the node's CLI."""
    store = next(s for s in nodes if s.stem == name)
    (task,) = [t for t in Inbox(store).all() if t.state == "awaiting_approval"]
    stdout.print(
        f"  steward of {name}: medlab node approve {store} {task.task_id} --by 'demo steward'",
        highlight=False,
        soft_wrap=True,
    )
    approver = launch.medlab(
        "node",
        "approve",
        str(store),
        task.task_id,
        "--by",
        "demo steward",
        log=logs / "approve.log",
    )
    if approver.wait(timeout=60) != 0:
        raise RuntimeError(f"node approve failed (see {logs / 'approve.log'})")


def _dp_query(store: Path) -> None:
    """A differentially private histogram on one node, paid from a project's budget."""
    policy = ReleasePolicy(
        version="demo-dp", differential_privacy=DifferentialPrivacy(enabled=True)
    )
    # The steward turns DP queries on in the node's own policy, and grants a budget.
    set_policy(store, policy, by="demo steward")
    budgets.grant(store, "demo-project", epsilon=3.0, by="demo steward")
    # The study's celecoxib cohort: the same definition on the same data is the same
    # population, so the differencing audit lets it through.
    celecoxib = next(c for c in load_spec(STUDY).cohorts if c.id == 1).definition
    assert celecoxib is not None
    query = DPQuery(project="demo-project", cohort=celecoxib, statistic="histogram", field="sex")
    try:
        first = answer(store, query, policy)
    except PolicyError as exc:
        stdout.print(f"differentially private query on {store.stem} refused: {exc.message}")
        return
    again = answer(store, query, policy)
    table = Table(
        title=f"differentially private query on {store.stem}: celecoxib users by sex "
        f"({first.release.mechanism}, epsilon {first.release.epsilon:g}, "
        f"noise scale {first.release.scale:.2g})"
    )
    for col in ("sex", "noisy count", "95% noise interval"):
        table.add_column(col, justify="left" if col == "sex" else "right")
    for key, value in first.release.values.items():
        low, high = first.release.intervals[key]
        table.add_row(key, f"{value:.0f}", f"{low:.0f} – {high:.0f}")
    stdout.print(table)
    left = again.budget
    stdout.print(
        f"privacy budget of demo-project on {store.stem}: epsilon {left.epsilon_spent:g} spent, "
        f"{left.epsilon_remaining:g} of {left.epsilon_granted:g} left "
        f"(the repeated query was answered from the cache: {again.cached})",
        highlight=False,
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _cohorts(stores: list[tuple[Path, str]], circe_dir: Path) -> None:
    """Generate a new-user cohort on the synthetic nodes and the ATLAS cohorts on Eunomia."""
    example_cohort = example("warfarin_af_new_users")
    table = Table(title=f"cohort: {example_cohort.name} (local counts per node)")
    table.add_column("node")
    for header in ("qualifying", *(r.name for r in example_cohort.inclusion_rules), "persons"):
        table.add_column(header, justify="right")
    atlas = Table(title=f"ATLAS (Circe) cohorts from {circe_dir} on Eunomia")
    for header in ("definition", "persons", "entries"):
        atlas.add_column(header, justify="left" if header == "definition" else "right")
    for store, _source in stores:
        if store.stem == "eunomia":
            for cohort_id, path in enumerate(sorted(circe_dir.rglob("*.json")), start=10):
                result = generate(store, load_definition(path), cohort_id)
                atlas.add_row(
                    f"{path.parent.name}/{path.name}", f"{result.persons:,}", f"{result.entries:,}"
                )
            continue
        result = generate(store, example_cohort, 1)
        table.add_row(
            store.stem, *(f"{a.persons:,}" for a in result.attrition), f"{result.persons:,}"
        )
    stdout.print(table)
    if atlas.row_count:
        stdout.print(atlas)


if __name__ == "__main__":
    sys.exit(main())
