"""Pooled models on secure sums over loopback HTTP: a hub process and one node-agent process
per synthetic site (3 and 10 sites) fit a logistic and a site-stratified Cox model
(``type: federated_model``) in one study.

Printed per site count: task rounds, bytes on the wire (every task envelope the hub signed
and every output a node uploaded, as the hub stored them), seconds from submission to the
results fetched, and, as the peer, statsmodels' fit of the same two models on the union of
the sites' rows in this process (the ratio of the two times); and whether the pooled
coefficients equal the union's (1e-6).

    python benchmarks/pooled_bench.py [SITES...] [--patients N]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import statsmodels.api as sm
from statsmodels.duration.hazard_regression import PHReg

from medlab.analyses.federated import model as pooled
from medlab.cdm.store import open_store
from medlab.federation import launch
from medlab.federation.client.sdk import Client
from medlab.federation.hub.service import init_hub
from medlab.ledger import parties
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import parse_policy
from medlab.studies.spec import StudySpec
from medlab.synth.cohorts import new_users, outcome
from medlab.synth.generate import records, synthesize

APIXABAN, WARFARIN, GI_BLEED = 43013024, 1310149, 192671
POLICY = {
    "version": "bench",
    "min_cell_count": 5,
    "min_events_per_parameter": 2,
    "precision": "none",
    "federation": {"approval": "none"},
}


def _spec() -> dict[str, Any]:
    settings = {"population": {"first_exposure_only": True, "risk_window_start": 1}}
    return {
        "name": "pooled bench",
        "cohorts": [
            {"id": 1, "name": "apixaban", "definition": new_users(APIXABAN)},
            {"id": 2, "name": "warfarin", "definition": new_users(WARFARIN)},
            {"id": 3, "name": "GI bleed", "definition": outcome(GI_BLEED)},
        ],
        "analyses": [
            {
                "type": "federated_model",
                "name": name,
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {**settings, "model": model},
            }
            for name, model in (("logit", "logistic"), ("cox", "cox"))
        ],
    }


def _union_fit(stores: list[Path], spec: StudySpec, name: str) -> tuple[np.ndarray, float]:
    """statsmodels on the union of the sites' rows (the rows' building included; the
    cohorts are the study's, generated at each node)."""
    started = time.perf_counter()
    analysis = next(a for a in spec.analyses if a.name == name)
    settings = analysis.settings  # type: ignore[union-attr]
    designs = []
    for store in stores:
        with open_store(store, read_only=True) as con:
            designs.append(pooled.design(con, 1, 2, 3, settings))
    x = np.vstack([d.x for d in designs])
    y = np.concatenate([d.y for d in designs])
    if settings.model == "logistic":
        fit = sm.GLM(y, x, family=sm.families.Binomial()).fit(tol=1e-12).params
    else:
        time_ = np.concatenate([d.time for d in designs])
        strata = np.concatenate([np.full(len(d.y), i) for i, d in enumerate(designs)])
        fit = PHReg(time_, x, status=y, strata=strata).fit().params
    return np.asarray(fit), time.perf_counter() - started


def _wire_bytes(db: Path) -> tuple[int, int]:
    """(bytes of the signed task envelopes, bytes of the uploaded outputs); max round."""
    con = sqlite3.connect(db)
    try:
        size, top = con.execute(
            "SELECT SUM(LENGTH(envelope) + COALESCE(LENGTH(output), 0)), MAX(round) FROM tasks"
        ).fetchone()
    finally:
        con.close()
    return int(size), int(top)


def run(tmp: Path, sites: int, patients: int) -> None:
    truth = synthesize(tmp / "sites", sites=sites, patients=patients, seed=5)
    stores = [tmp / "sites" / s["store"] for s in records(truth, "sites")]
    for store in stores:
        set_policy(store, parse_policy(POLICY))
    spec_data = _spec()
    spec = StudySpec.model_validate(spec_data)
    hub = init_hub(tmp / "hub", governance="open")
    for store in stores:
        hub.add_node(store.stem, parties.node(store).signer.public_pem)
    token = hub.add_researcher("bench")
    port = launch.free_port()
    url = f"http://{launch.LOOPBACK}:{port}"
    processes = [launch.start_hub(tmp / "hub", port, tmp / "hub.log")]
    try:
        for store in stores:
            processes.append(launch.start_agent(store, url, tmp / f"{store.stem}.log", wait=1.0))
        started = time.perf_counter()
        study = Client(url, token).submit(spec_data)
        status = study.wait(timeout=3600, every=0.1)
        study.fetch(tmp / "fetched")
        seconds = time.perf_counter() - started
    finally:
        for process in processes:
            launch.stop(process)
    assert status.state == "completed", status.reason
    results = json.loads((tmp / "fetched" / "results.json").read_text())
    size, rounds = _wire_bytes(tmp / "hub" / "hub.db")
    # The union of the sites each model's sums held (a site its own rules withheld is out).
    equal, union_seconds = True, 0.0
    for a in results["analyses"]:
        members = [s for s in stores if s.stem in a["sites"]]
        union, seconds_ = _union_fit(members, spec, a["name"])
        union_seconds += seconds_
        got = [np.log(t["estimate"]) for t in a["terms"]]
        equal = equal and bool(np.allclose(got, union, atol=1e-6))
    contributing = min(len(a["sites"]) for a in results["analyses"])
    sessions = {a["name"]: a["sessions"] for a in results["analyses"]}
    print(
        f"{sites:>2} sites ({patients:,} patients each; {contributing} contributing): "
        f"{rounds} rounds "
        f"(sessions: logistic {sessions['logit']}, Cox {sessions['cox']}), "
        f"{size / 1e6:.2f} MB on the wire, {seconds:.1f} s over loopback HTTP; the union's "
        f"statsmodels fits {union_seconds:.2f} s (ratio {seconds / union_seconds:.0f}); "
        f"equal to the union: {equal}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sites", nargs="*", type=int, default=[3, 10])
    parser.add_argument("--patients", type=int, default=3000)
    args = parser.parse_args()
    for count in args.sites:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), count, args.patients)


if __name__ == "__main__":
    main()
