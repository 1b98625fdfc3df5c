"""The federation's cost: the Eunomia study over loopback HTTP against one process, and the
hub's task throughput with 50 simulated node agents polling.

1. The Eunomia reference study on one Eunomia node: ``medlab study run`` in one process, then
   the same spec through a hub process and a node-agent process on 127.0.0.1 (submit to
   results fetched). Printed: both times and their ratio.
2. A hub process with 50 registered nodes, each served by a thread that signs every request
   as a node agent does: it long-polls for tasks and reports each ``delivered`` then
   ``refused`` (the hub's side of a task without the node's computation). ``STUDIES``
   studies are submitted at once (one task per node each). Printed: tasks settled per
   second and requests per second.

    python benchmarks/federation_bench.py [STUDIES]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx

from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store
from medlab.federation import launch
from medlab.federation.client.sdk import Client
from medlab.federation.common import auth
from medlab.federation.hub.service import init_hub
from medlab.ledger import parties
from medlab.ledger.keys import Signer
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import FederationPolicy, ReleasePolicy
from medlab.studies.run import run_study
from medlab.studies.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples/studies/eunomia_celecoxib_diclofenac.yaml"
EUNOMIA = Path(os.environ.get("MEDLAB_EUNOMIA_DIR", ROOT.parent / "shared/data/eunomia-gibleed"))


def eunomia_round_trip(tmp: Path) -> None:
    store = tmp / "eunomia.duckdb"
    init_store(store)
    load_omop_csv(store, EUNOMIA)
    policy = ReleasePolicy(version="bench", federation=FederationPolicy(approval="none"))
    set_policy(store, policy, "bench")
    spec = load_spec(STUDY)
    run_study(spec, [store], tmp / "warm", hub_dir=tmp / "warm-hub")  # caches DQ, warms up
    started = time.perf_counter()
    run_study(spec, [store], tmp / "local", hub_dir=tmp / "local-hub")
    local = time.perf_counter() - started
    hub = init_hub(tmp / "hub", governance="open")
    hub.add_node("eunomia", parties.node(store).signer.public_pem)
    token = hub.add_researcher("bench")
    port = launch.free_port()
    url = f"http://{launch.LOOPBACK}:{port}"
    processes = [launch.start_hub(tmp / "hub", port)]
    try:
        processes.append(launch.start_agent(store, url, wait=1.0))
        started = time.perf_counter()
        study = Client(url, token).submit(spec)
        status = study.wait(timeout=3600, every=0.2)
        study.fetch(tmp / "fetched")
        federated = time.perf_counter() - started
    finally:
        for process in processes:
            launch.stop(process)
    assert status.state == "completed", status.reason
    a = json.loads((tmp / "fetched" / "results.json").read_text())["analyses"]
    b = json.loads((tmp / "local" / "results.json").read_text())["analyses"]
    print(
        f"Eunomia study, one node: single process {local:.1f} s, over loopback HTTP "
        f"{federated:.1f} s (ratio {federated / local:.2f}); analyses identical: {a == b}"
    )


def hub_throughput(tmp: Path, studies: int, nodes: int = 50) -> None:
    hub = init_hub(tmp / "hub-load", governance="open")
    signers = {}
    (tmp / "keys").mkdir()
    for i in range(nodes):
        name = f"node_{i:02d}"
        signers[name] = Signer.load_or_create(tmp / "keys" / f"{name}.key")
        hub.add_node(name, signers[name].public_pem)
    token = hub.add_researcher("bench")
    port = launch.free_port()
    url = f"http://{launch.LOOPBACK}:{port}"
    server = launch.start_hub(tmp / "hub-load", port)
    spec = {
        "name": "load",
        "cohorts": [{"id": 1, "name": "c", "definition": _cohort()}],
        "analyses": [{"type": "feasibility", "name": "f", "cohort": 1}],
    }
    expected = studies * nodes
    requests = [0]
    lock = threading.Lock()
    done = threading.Event()

    def agent(name: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            handled: set[str] = set()
            while not done.is_set():
                target = "/api/v1/node/tasks?wait=1"
                headers = auth.sign_request(signers[name], name, "GET", target, b"")
                found = http.get(target, headers=headers).json()["tasks"]
                sent = 1
                for task in found:
                    if task["task_id"] in handled:
                        continue
                    for state in ("delivered", "refused"):
                        body = json.dumps({"state": state, "reason": "bench"}).encode()
                        path = f"/api/v1/node/tasks/{task['task_id']}"
                        h = auth.sign_request(signers[name], name, "POST", path, body)
                        h["content-type"] = "application/json"
                        http.post(path, content=body, headers=h).raise_for_status()
                        sent += 1
                    handled.add(task["task_id"])
                with lock:
                    requests[0] += sent
                if len(handled) >= studies:
                    return

    try:
        client = Client(url, token)
        threads = [threading.Thread(target=agent, args=(n,)) for n in signers]
        for t in threads:
            t.start()
        started = time.perf_counter()
        ids = [client.submit(spec, deadline_seconds=3600).id for _ in range(studies)]
        for t in threads:
            t.join(timeout=600)
        done.set()
        for study in ids:
            client.study(study).wait(timeout=120, every=0.2)
        elapsed = time.perf_counter() - started
    finally:
        launch.stop(server)
    print(
        f"hub throughput, {nodes} simulated agents, {studies} studies ({expected} tasks): "
        f"{elapsed:.1f} s, {expected / elapsed:.0f} tasks settled/s, "
        f"{requests[0] / elapsed:.0f} signed requests/s"
    )


def _cohort() -> dict[str, object]:
    from medlab.synth.cohorts import new_users

    return new_users(1310149)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="?", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if (EUNOMIA / "PERSON.csv").exists():
            eunomia_round_trip(Path(tmp))
        else:
            print(f"Eunomia not found at {EUNOMIA}: the round trip is skipped")
        hub_throughput(Path(tmp), args.studies)


if __name__ == "__main__":
    main()
