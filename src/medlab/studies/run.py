"""Run a study over node stores in one process: each node's steps, then the hub's combine.

The same two functions serve the federation: :func:`medlab.studies.local.run_node` is what a
node agent runs for a task, :func:`medlab.studies.combine.combine_study` what the hub runs
over the uploaded outputs. Here they are called directly, one node after the other; only the
released payloads each node returns reach the combine step, as across the network.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from medlab.cdm.store import store_lock
from medlab.ledger import parties
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.combine import combine_study, next_round
from medlab.studies.local import node_releases_policy, run_node
from medlab.studies.spec import StudySpec

Progress = Callable[[str, int, int], None]


def _policy_request(policy: ReleasePolicy | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(policy, ReleasePolicy):
        return policy.model_dump(mode="json")
    return policy


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
    hub = parties.hub(hub_dir)
    with ExitStack() as held:
        for store in sorted({n.resolve() for n in nodes}):
            held.enter_context(store_lock(store))
        for store in nodes:  # a policy that cannot be tightened so refuses before anything
            node_releases_policy(store, request)
        spec_hash = spec.digest()
        hub.log("study_submitted", study=spec.name, spec_hash=spec_hash)
        hub.log("study_approved", spec_hash=spec_hash, approved_by=approved_by)
        outputs = []
        for i, store in enumerate(nodes):
            if progress:
                progress(f"node {store.stem}", i, len(nodes))
            outputs.append(run_node(spec, store, request, progress))
        round_ = 1
        while (params := next_round(spec, round_, outputs)) is not None:
            round_ += 1
            outputs += [run_node(spec, s, request, None, False, round_, params) for s in nodes]
        return combine_study(spec, outputs, out, hub, requested=request is not None)
