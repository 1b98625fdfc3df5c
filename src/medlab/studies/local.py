"""A study's steps at one node: cohorts, local steps, the release gate, signatures and the log.

This is everything a node does for a study, whether ``medlab study run`` calls it in one
process or a node agent runs it for a task from the hub (:func:`run_node`): it generates the
spec's cohorts in the store, runs every analysis's local step, passes the aggregates through
the release gate under the node's own policy, signs and logs each released payload, and
returns only those (:class:`NodeOutput`), with the node's snapshot fingerprint, policy and
data quality summary. Nothing else of the store leaves.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from medlab import __version__
from medlab.analyses import (
    characterization,
    comparative,
    feasibility,
    federated_mean,
    incidence,
    utilization,
)
from medlab.analyses import comparative_release as comparative_out
from medlab.analyses.scope import Scope
from medlab.cdm.dq import kept
from medlab.cdm.fingerprint import record_snapshot, recorded_snapshot, snapshot_fingerprint
from medlab.cdm.store import META_SCHEMA, fetch_first, open_store, store_lock
from medlab.cohorts.engine import generate
from medlab.ledger import evidence, parties
from medlab.privacy import gate
from medlab.privacy.node_policy import node_policy
from medlab.privacy.node_release import Charge, NodeReleaser
from medlab.privacy.policy import ReleasePolicy, tighten
from medlab.privacy.release import Population
from medlab.privacy.release import Release as ReleaseRequest
from medlab.studies.secure_node import node_step
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


class NodeRelease(BaseModel):
    """One released payload of a study at a node, as the node signed and logged it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    analysis: str  # the analysis's name in the spec
    cohort: int | None = None  # a characterization's releases are one per cohort
    round: int = 1
    payload: dict[str, Any]
    signed: dict[str, Any]
    log_index: int


class NodeOutput(BaseModel):
    """All that leaves a node for one study: released payloads and what describes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    round: int = 1  # the round of a multi-round study this output answers
    fingerprint: str
    policy: dict[str, Any]  # version, digest and the disclosure settings the report names
    quality: dict[str, int]  # data quality checks passed / failed on this snapshot
    key_id: str
    public_key: str
    releases: list[NodeRelease]
    log_dir: str | None = None  # single process: the hub reads the node's log at export
    log: dict[str, Any] | None = None  # federated: the node's log entries with their proofs
    # Pooled models on secure sums, by analysis: readiness (round 1), then each round's
    # secure-aggregation message (never a site's own numbers).
    secure: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The privacy budget this run charged to the project at the node (epsilon, rho).
    spent: dict[str, float] = Field(default_factory=dict)


@dataclass
class _Node:
    """One node during a study: its store, the policy it releases under, the data snapshot,
    the scope its populations are keyed by, and its releaser (gate, audit, journal)."""

    store: Path
    site: str
    policy: ReleasePolicy
    fingerprint: str
    scope: Scope
    releaser: NodeReleaser
    roots: dict[int, Population]  # each cohort's persons (node-internal)


Local = Callable[[], ReleaseRequest]


def _steps(
    a: Analysis, spec: StudySpec, node: _Node, round_: int, params: dict[str, Any]
) -> list[tuple[int | None, Local]]:
    """The local steps of one analysis at one node in ``round_``, each a release (per cohort,
    for a characterization). After round 1 only multi-round analyses given parameters run."""
    if isinstance(a, FederatedModelAnalysis):
        return []  # secure sums, not releases (secure_node)
    if isinstance(a, FederatedMeanAnalysis):
        if round_ > 1 and a.name not in params:
            return []

        def moments(a: FederatedMeanAnalysis = a) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                found = federated_mean.local(con, a.cohort, round_, params.get(a.name, {}))
            return federated_mean.to_release(found, node.site, node.scope, a.cohort, round_)

        return [(None, moments)]
    if round_ > 1:
        return []
    if isinstance(a, ComparativeAnalysis):

        def compare(a: ComparativeAnalysis = a) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                site = comparative.local(
                    con, node.site, a.target, a.comparator, a.outcome, a.settings
                )
            return comparative_out.to_release(site, node.scope, a)

        return [(None, compare)]
    if isinstance(a, IncidenceAnalysis):

        def rates(a: IncidenceAnalysis = a) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                counts = incidence.local(con, a.target, a.outcome, a.settings, node.scope.calendar)
            return incidence.to_release(
                counts, node.site, node.scope, a.target, a.outcome, a.settings
            )

        return [(None, rates)]
    if isinstance(a, FeasibilityAnalysis):
        definition = next(c.definition for c in spec.cohorts if c.id == a.cohort)
        assert definition is not None

        def funnel(a: FeasibilityAnalysis = a) -> ReleaseRequest:
            site = feasibility.local(
                node.store, node.site, definition, a.cohort, node.scope.calendar
            )
            return feasibility.to_release(site, node.scope, a.cohort)

        return [(None, funnel)]
    if isinstance(a, UtilizationAnalysis):

        def pathways(a: UtilizationAnalysis = a) -> ReleaseRequest:
            with open_store(node.store, read_only=True) as con:
                found = utilization.local(con, a.cohort, a.drugs, a.max_lines, node.scope.calendar)
            return utilization.to_release(found, node.site, node.scope, a)

        return [(None, pathways)]
    assert isinstance(a, CharacterizationAnalysis)

    def describe(cohort: int, a: CharacterizationAnalysis = a) -> Local:
        def step() -> ReleaseRequest:
            with open_store(node.store) as con:
                found = characterization.local(con, cohort, a.settings, node.scope.calendar)
            return characterization.to_release(found, node.site, cohort, node.scope)

        return step

    return [(cohort, describe(cohort)) for cohort in a.cohorts]


def _quality(con: duckdb.DuckDBPyConnection, fingerprint: str) -> dict[str, int]:
    """The data quality summary of this snapshot, computed once per fingerprint and kept in
    the store's metadata (the checks take long on large nodes; the data only change by loads)."""
    key = f"dq_summary.{fingerprint}"
    found = fetch_first(con, f"SELECT value FROM {META_SCHEMA}.store_info WHERE key = ?", [key])
    if found is not None:
        summary: dict[str, int] = json.loads(found[0])
        return summary
    checks: Any = kept(con, fingerprint)["checks"]
    failed = sum(not c["passed"] for c in checks)
    summary = {"passed": len(checks) - failed, "failed": failed}
    con.execute(f"INSERT INTO {META_SCHEMA}.store_info VALUES (?, ?)", [key, json.dumps(summary)])
    return summary


def _members(con: duckdb.DuckDBPyConnection, cohort_id: int) -> frozenset[int]:
    rows = con.execute(
        "SELECT DISTINCT subject_id FROM results.cohort WHERE cohort_definition_id = ?",
        [cohort_id],
    ).fetchall()
    return frozenset(int(r[0]) for r in rows)


def _cohorts_of(analysis: Analysis, cohort: int | None) -> list[int]:
    """The cohorts a release is about (a characterization release is about one of its)."""
    if cohort is not None:
        return [cohort]
    return [
        getattr(analysis, k)
        for k in ("target", "comparator", "outcome", "cohort")
        if hasattr(analysis, k)
    ]


def _release_id(
    node: _Node, analysis: Analysis, cohort: int | None, round_: int, params: Any
) -> str:
    """What makes two releases the same: the analysis (with its cohorts' definitions), its
    round and parameters, the node, its data snapshot and the policy."""
    return parties.digest(
        {
            "analysis": analysis.model_dump(mode="json"),
            "cohort": cohort,
            "round": round_,
            "params": params,
            "cohorts": node.scope.cohorts,
            "calendar": node.scope.calendar.model_dump(),
            "site": node.site,
            "snapshot": node.fingerprint,
            "policy": node.policy.digest(),
        }
    )


def policy_summary(policy: ReleasePolicy) -> dict[str, Any]:
    """What a study's results say of a node's policy."""
    return {
        "version": policy.version,
        "digest": policy.digest(),
        "min_cell_count": policy.min_cell_count,
        "count_protection": policy.count_protection,
        "rounding": policy.rounding,
        "min_sites": policy.federation.min_sites,
        "min_events_per_parameter": policy.min_events_per_parameter,
        "ratio_digits": None if policy.precision == "none" else policy.precision.ratio,
        "p_value_digits": None if policy.precision == "none" else policy.precision.p_value,
        "proportion_digits": None if policy.precision == "none" else policy.precision.proportion,
        "release_site_level": policy.federation.release_site_level,
        "event_bin_days": policy.event_bin_days,
        "precision": policy.precision
        if policy.precision == "none"
        else policy.precision.model_dump(mode="json"),
        "allow_zeros": policy.allow_zeros,
        "min_group_size": policy.min_group_size,
    }


def _prepare(
    spec: StudySpec,
    store: Path,
    policy: ReleasePolicy,
    round_: int = 1,
    charge: Charge | None = None,
) -> tuple[_Node, dict[str, int]]:
    """Generate the spec's cohorts and key their populations; the node and its DQ summary.
    Round 1 fingerprints the data anew (and records it when the data changed behind
    medlab's back); a later round of the same study takes the recorded fingerprint (a load
    records its own, so the hub sees a load between rounds) and generates only the cohorts
    not generated from the same definitions already."""
    done = set() if round_ == 1 else _generated(store, spec)
    for cohort in (c for c in spec.cohorts if c.id not in done):
        assert cohort.definition is not None
        generate(store, cohort.definition, cohort.id)
    cohort_digests = {c.id: c.definition.digest() for c in spec.cohorts if c.definition}
    entries = {c.id: c.definition.max_entries_per_person for c in spec.cohorts if c.definition}
    with open_store(store) as con:
        fingerprint = (None if round_ == 1 else recorded_snapshot(con)) or ""
        if not fingerprint:
            fingerprint = snapshot_fingerprint(con)[0]
            if recorded_snapshot(con) != fingerprint:  # data changed behind medlab's back
                record_snapshot(con, fingerprint)
        quality = _quality(con, fingerprint)
        scope = Scope(fingerprint, cohort_digests, spec.calendar, entries)
        roots = {c.id: scope.cohort(c.id, _members(con, c.id)) for c in spec.cohorts}
    charge = charge or Charge(spec.project)
    releaser = NodeReleaser(store, policy, charge.project, (charge.epsilon, charge.rho))
    return _Node(store, store.stem, policy, fingerprint, scope, releaser, roots), quality


def _secure(
    spec: StudySpec,
    node: _Node,
    party: parties.Party,
    round_: int,
    params: dict[str, Any],
    computed: dict[str, list[ReleaseRequest]],
) -> dict[str, dict[str, Any]]:
    """This node's messages for the analyses on secure sums (pooled models and estimates;
    incidence and characterization tables, summed when a node releases no site-level
    numbers)."""
    secure = {}
    for analysis in spec.analyses:
        if not on_secure_sums(analysis):
            continue

        def tables(a: Analysis = analysis) -> list[ReleaseRequest]:
            steps = _steps(a, spec, node, 1, {})
            if len(computed.get(a.name, [])) == len(steps):  # the release path made them
                return computed[a.name]
            return [
                replace(local(), roots=tuple(node.roots[c] for c in _cohorts_of(a, cohort)))
                for cohort, local in steps
            ]

        found = node_step(
            analysis,
            node.store,
            node.site,
            node.policy,
            party,
            round_,
            params.get(analysis.name),
            spec.digest(),
            node.fingerprint,
            partial(node.releaser.audit, release_id=_release_id(node, analysis, None, 1, "secure")),
            node.scope,
            tables,
        )
        if found is not None:
            secure[analysis.name] = found
    return secure


def _generated(store: Path, spec: StudySpec) -> set[int]:
    """The spec's cohorts the store holds as generated from the same definitions."""
    with open_store(store, read_only=True) as con:
        stored = dict(
            con.execute(
                "SELECT cohort_definition_id, cohort_definition_syntax "
                "FROM results.cohort_definition"
            ).fetchall()
        )
    return {
        c.id for c in spec.cohorts if c.definition and stored.get(c.id) == c.definition.to_json()
    }


def node_releases_policy(store: Path, request: dict[str, Any] | None) -> ReleasePolicy:
    """The policy a node releases under: its own, tightened by ``request`` (never loosened)."""
    return tighten(node_policy(store).policy, request, "the policy given with the run")


def run_node(
    spec: StudySpec,
    store: Path,
    request: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    publish_log: bool = False,
    round_: int = 1,
    params: dict[str, Any] | None = None,
    earlier: tuple[int, ...] = (),
    charge: Charge | None = None,
) -> NodeOutput:
    """Run ``spec`` at the node of ``store`` (held by :func:`store_lock` throughout, so that
    concurrent runs never read each other's cohorts) and return what it releases.
    ``publish_log``: carry the node's log entries for these releases, with inclusion proofs
    against its newest signed tree head (a federated node; in one process the hub reads the
    log where it lies). ``round_`` and ``params`` (by analysis name): a later round of a
    multi-round study, with what the hub computed from the round before; ``earlier``: the
    log indices of the study's releases in earlier rounds (published again with newer
    proofs); ``charge``: the project the spend is charged to and the task's cap (default:
    the spec's project, no cap)."""
    with store_lock(store):
        policy = node_releases_policy(store, request)
        return _run_node(
            spec, store, policy, progress, publish_log, round_, params or {}, earlier, charge
        )


def _run_node(
    spec: StudySpec,
    store: Path,
    policy: ReleasePolicy,
    progress: Callable[[str, int, int], None] | None,
    publish_log: bool,
    round_: int,
    params: dict[str, Any],
    earlier: tuple[int, ...],
    charge: Charge | None = None,
) -> NodeOutput:
    party = parties.node(store)
    node, quality = _prepare(spec, store, policy, round_, charge)
    spec_hash = spec.digest()
    party.log("task_run", spec_hash=spec_hash, fingerprint=node.fingerprint, round=round_)
    statement = {
        "spec_hash": spec_hash,
        "code_version": __version__,
        "policy_hash": policy.digest(),
        "fingerprint": node.fingerprint,
        "round": round_,
    }
    releases = []
    computed: dict[str, list[ReleaseRequest]] = {}  # the local steps' requests, by analysis
    for i, analysis in enumerate(spec.analyses):
        if progress:
            progress(f"{analysis.name} on {node.site}", i, len(spec.analyses))
        for cohort, local in _steps(analysis, spec, node, round_, params):
            release_id = _release_id(node, analysis, cohort, round_, params.get(analysis.name))
            admission = node.releaser.admit(analysis.type, release_id)
            if admission.refused:
                payload = gate.refusal(policy, analysis.type, node.site, admission.refused)
            elif admission.cached is not None:
                payload = admission.cached
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    request_ = local()
                roots = tuple(node.roots[c] for c in _cohorts_of(analysis, cohort))
                computed.setdefault(analysis.name, []).append(replace(request_, roots=roots))
                # Warnings speak of the data; they go to the node's journal, for its steward.
                context = {
                    "study": spec.name,
                    "spec_hash": spec_hash,
                    "analysis": analysis.name,
                    "warnings": [str(w.message) for w in caught],
                }
                payload = node.releaser.release(replace(request_, roots=roots), release_id, context)
            base = {**statement, "analysis": payload.analysis, "site": payload.site}
            signed = evidence.sign_release(party, gate.payload(payload), base)
            releases.append(
                NodeRelease(analysis=analysis.name, cohort=cohort, round=round_, **signed)
            )
    secure = _secure(spec, node, party, round_, params, computed)
    indices = [*earlier, *(r.log_index for r in releases)]
    return NodeOutput(
        site=node.site,
        round=round_,
        fingerprint=node.fingerprint,
        policy=policy_summary(policy),
        quality=quality,
        key_id=party.signer.key_id,
        public_key=party.signer.public_pem,
        releases=releases,
        log_dir=None if publish_log else str(party.log_dir.resolve()),
        log=evidence.log_part(node.site, party.log_dir, indices) if publish_log else None,
        secure=secure,
        spent={"epsilon": node.releaser.spent[0], "rho": node.releaser.spent[1]},
    )
