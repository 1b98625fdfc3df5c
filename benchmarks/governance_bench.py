"""API latency of a governed hub: p50 / p99 of submit and status with 20 concurrent
clients on loopback (a real ``medlab hub serve`` process, SQLite), next to the unauthenticated
health check in the same run (the ratio is what to compare across machines).

    .venv/bin/python benchmarks/governance_bench.py [--submits 200] [--statuses 1000]

Every submit passes authentication, the project, agreement and budget checks and holds a
budget in one transaction, and is written to the hub's transparency log twice (its event and
the API call's); every status call is logged once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests/ helpers

from tests import federation as fed
from tests import governance as g

from medlab.federation import launch
from medlab.federation.hub.service import init_hub
from medlab.synth.generate import synthesize

CLIENTS = 20


def _timed(calls: list, workers: int = CLIENTS) -> list[float]:  # type: ignore[type-arg]
    def one(call) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1000

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, calls))


def _line(name: str, ms: list[float], base: float) -> str:
    q = statistics.quantiles(ms, n=100)
    return (
        f"{name:<8} n={len(ms):>5}  p50 {q[49]:7.1f} ms  p99 {q[98]:7.1f} ms  "
        f"(p50 {q[49] / base:5.1f}x health)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--statuses", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        synthesize(tmp / "synth", sites=2, patients=300, seed=3)
        stores = fed.copy_sites(tmp / "synth", tmp / "nodes", ("hospital_a", "hospital_b"))
        hub = init_hub(tmp / "hub")
        port = launch.free_port()
        url = f"http://{launch.LOOPBACK}:{port}"
        server = launch.start_hub(tmp / "hub", port, tmp / "hub.log")
        try:
            with httpx.Client(base_url=url, timeout=120) as http:
                lab = g.build(hub, http, stores, epsilon=0.0, analyses=["incidence"])
                headers = {"authorization": f"Bearer {lab.tokens['alan']}"}
                body = {"spec": g_spec(), "project": "apixaban-safety"}
                pool = [httpx.Client(base_url=url, timeout=120) for _ in range(CLIENTS)]

                def health(i: int) -> None:
                    pool[i % CLIENTS].get("/api/v1/health").raise_for_status()

                def submit(i: int) -> None:
                    pool[i % CLIENTS].post(
                        "/api/v1/studies", json=body, headers=headers
                    ).raise_for_status()

                first = http.post("/api/v1/studies", json=body, headers=headers).json()

                def status(i: int) -> None:
                    pool[i % CLIENTS].get(
                        f"/api/v1/studies/{first['study_id']}", headers=headers
                    ).raise_for_status()

                _timed([lambda i=i: health(i) for i in range(100)])  # warm up
                base_ms = _timed([lambda i=i: health(i) for i in range(args.statuses)])
                submit_ms = _timed([lambda i=i: submit(i) for i in range(args.submits)])
                status_ms = _timed([lambda i=i: status(i) for i in range(args.statuses)])
                base = statistics.median(base_ms)
                print(f"governed hub on loopback, {CLIENTS} concurrent clients, SQLite")
                print(_line("health", base_ms, base))
                print(_line("submit", submit_ms, base))
                print(_line("status", status_ms, base))
                for c in pool:
                    c.close()
        finally:
            launch.stop(server)


def g_spec() -> dict:  # type: ignore[type-arg]
    """A one-analysis study (its checks are what a submit costs; it is never dispatched)."""
    from medlab.synth.cohorts import new_users, outcome

    return {
        "name": "latency",
        "cohorts": [
            {"id": 1, "name": "t", "definition": new_users(fed.APIXABAN)},
            {"id": 3, "name": "o", "definition": outcome(fed.GI_BLEED)},
        ],
        "analyses": [{"type": "incidence", "name": "i", "target": 1, "outcome": 3}],
    }


if __name__ == "__main__":
    main()
