"""The cost of privacy: the release gate against the analyses it wraps, DP queries, budgets.

On one synthetic site (20,000 patients by default):

- the study's local steps (characterization, incidence, the comparative study) and then the
  release gate over their payloads: gate time as a ratio to the local steps;
- a differentially private query answered fresh (cohort, audit against earlier populations,
  noise, budget spend) against the same query answered from the cache;
- budget spends per second with 1 thread and with 16 threads on one store.

    python benchmarks/privacy_bench.py            # 20,000 patients
    python benchmarks/privacy_bench.py 100000
"""

from __future__ import annotations

import concurrent.futures
import sys
import tempfile
import time
import warnings
from pathlib import Path

from study_bench import OUTCOME
from study_bench import _new_users as _users

from medlab.analyses import characterization, comparative, incidence
from medlab.analyses.comparative import ComparativeSettings
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from medlab.privacy import budget as budgets
from medlab.privacy import gate
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.privacy.query import DPQuery, answer
from medlab.synth.generate import synthesize


def main(patients: int) -> None:
    """Print the timings and ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        truth = synthesize(Path(tmp), sites=1, patients=patients, seed=7)
        store = Path(tmp) / truth["sites"][0]["store"]  # type: ignore[index]
        generate(store, parse_definition(_users(43013024)), 1)
        generate(store, parse_definition(_users(1310149)), 2)
        generate(store, parse_definition(OUTCOME), 3)
        policy = ReleasePolicy()
        t = time.perf_counter()
        with open_store(store, read_only=True) as con, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            requests = [
                characterization.to_release(characterization.local(con, 1), "site", 1),
                incidence.to_release(incidence.local(con, 1, 3), "site"),
                comparative.to_release(
                    comparative.local(
                        con, "site", 1, 2, 3, ComparativeSettings(exclude_ingredients=[43013024])
                    ),
                    [],
                ),
            ]
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        released = [gate.apply(policy, r) for r in requests]
        gate_s = time.perf_counter() - t
        decisions = sum(len(r.decisions) for r in released)
        print(f"{patients:,} patients, one site")
        print(f"  local steps (3 analyses)          {local_s:8.3f} s")
        print(
            f"  release gate ({decisions:,} decisions)   {gate_s:8.3f} s"
            f"   ({gate_s / local_s:.3f} x the local steps)"
        )

        dp_policy = ReleasePolicy(differential_privacy=DifferentialPrivacy(enabled=True))
        budgets.grant(store, "bench", epsilon=1000.0)
        query = DPQuery(
            project="bench", cohort=parse_definition(_users(1310149)), statistic="count"
        )
        t = time.perf_counter()
        answer(store, query, dp_policy)
        fresh = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(20):
            answer(store, query, dp_policy)
        cached = (time.perf_counter() - t) / 20
        print(f"  DP query, fresh                   {fresh * 1000:8.1f} ms")
        print(
            f"  DP query, cached                  {cached * 1000:8.1f} ms"
            f"   ({fresh / cached:.1f} x faster)"
        )

        def spend(i: int) -> None:
            budgets.charge(store, "bench", epsilon=0.001, query_key=f"b{i}", purpose="bench")

        for threads in (1, 16):
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(spend, range(200)))
            rate = 200 / (time.perf_counter() - t)
            print(f"  budget spends, {threads:>2} thread(s)         {rate:8.0f} /s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
