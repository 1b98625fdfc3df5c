"""The cost of privacy: the release gate (with its differencing audit) against the local steps.

1. The Eunomia example study (``examples/studies/eunomia_celecoxib_diclofenac.yaml``), one
   node: seconds in the local steps, in the gate (gate, audit, journal), and their ratio.
2. One synthetic site of 100,000 patients whose audit already holds 1,000 earlier releases
   (each a cohort and five of its covariate rows, 50 to 3,000 persons): the same study design
   (characterization, incidence, comparative), gate seconds, audit seconds, and the ratio to
   the local steps.
3. A differentially private query answered fresh (cohort, noisy differencing test, noise,
   budget spend) against the same query answered from the cache; budget spends per second
   with 1 and 16 threads.

    python benchmarks/privacy_bench.py                 # 100,000 patients, 1,000 releases
    python benchmarks/privacy_bench.py 20000 200       # smaller
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medlab.analyses import (
    characterization,
    comparative,
    comparative_release,
    feasibility,
    incidence,
    utilization,
)
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, open_store
from medlab.privacy import audit as audit_module
from medlab.privacy import budget as budgets
from medlab.privacy.node_policy import set_policy
from medlab.privacy.node_release import NodeReleaser
from medlab.privacy.persons import PersonKeys
from medlab.privacy.policy import DifferentialPrivacy, ReleasePolicy
from medlab.privacy.query import DPQuery, answer
from medlab.privacy.release import Population
from medlab.privacy.secret import node_secret
from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec, load_spec
from medlab.synth.cohorts import new_users as _users
from medlab.synth.cohorts import outcome
from medlab.synth.generate import synthesize

REPO = Path(__file__).resolve().parents[1]
EUNOMIA = Path(os.environ.get("MEDLAB_EUNOMIA_DIR", REPO.parent / "shared/data/eunomia-gibleed"))
EXAMPLE = REPO / "examples/studies/eunomia_celecoxib_diclofenac.yaml"


class Clock:
    """Seconds spent inside the functions it wraps, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + (time.perf_counter() - started)

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    @contextmanager
    def watching(self) -> Iterator[Clock]:
        self._undo: list[tuple[Any, str, Callable[..., Any]]] = []
        for module in (characterization, comparative, feasibility, incidence, utilization):
            self.wrap(module, "local", "local steps")
        for module in (characterization, comparative_release, feasibility, incidence, utilization):
            self.wrap(module, "to_release", "local steps")
        self.wrap(NodeReleaser, "release", "gate")
        self.wrap(audit_module.Auditor, "flagged", "audit")
        try:
            yield self
        finally:
            for owner, name, original in reversed(self._undo):
                setattr(owner, name, original)


def _report(title: str, clock: Clock, total: float) -> None:
    local = clock.seconds.get("local steps", 0.0)
    gate = clock.seconds.get("gate", 0.0)
    audit = clock.seconds.get("audit", 0.0)
    print(title)
    print(f"  whole run                          {total:8.2f} s")
    print(f"  local steps                        {local:8.2f} s")
    print(
        f"  release gate (audit, journal)      {gate:8.2f} s   ({gate / local:.3f} x the local "
        f"steps; the audit alone {audit:.2f} s)"
    )


def eunomia(tmp: Path) -> None:
    if not (EUNOMIA / "PERSON.csv").exists():
        print(f"Eunomia not found at {EUNOMIA}; skipping the example study")
        return
    store = tmp / "eunomia.duckdb"
    init_store(store)
    load_omop_csv(store, EUNOMIA)
    spec = load_spec(EXAMPLE)
    with Clock().watching() as clock:
        started = time.perf_counter()
        run_study(spec, [store], tmp / "eunomia-out", hub_dir=tmp / "hub")
        total = time.perf_counter() - started
    _report("the Eunomia example study, one node (default policy)", clock, total)


def _earlier_releases(store: Path, releases: int) -> None:
    """Fill the audit with ``releases`` earlier releases: a cohort and five covariate rows
    each, of random persons of the store."""
    with open_store(store, read_only=True) as con:
        persons = np.array([p for (p,) in con.execute("SELECT person_id FROM person").fetchall()])
    rng = np.random.default_rng(7)
    keys = PersonKeys(node_secret(store))
    with open_store(store) as con:
        auditor = audit_module.Auditor(con, keys, 10)
        for r in range(releases):
            auditor.begin(f"earlier-{r}")
            size = int(rng.integers(50, 3000))
            cohort = rng.choice(persons, size, replace=False)
            family = (f"sha256:earlier-{r}",)
            auditor.flagged(Population(f"pop:c{r}", frozenset(cohort.tolist()), "cohort", family))
            for row in range(5):
                part = cohort[rng.random(size) < rng.uniform(0.05, 0.6)]
                auditor.flagged(
                    Population(
                        f"pop:c{r}:{row}", frozenset(part.tolist()), "characterization", family
                    )
                )
            auditor.save()


def synthetic(tmp: Path, patients: int, releases: int) -> Path:
    truth = synthesize(tmp / "synth", sites=1, patients=patients, seed=7)
    store = tmp / "synth" / truth["sites"][0]["store"]  # type: ignore[index]
    started = time.perf_counter()
    _earlier_releases(store, releases)
    print(
        f"{patients:,} patients, one site: {releases:,} earlier releases put in the audit "
        f"in {time.perf_counter() - started:.1f} s"
    )
    spec = StudySpec.model_validate(
        {
            "name": "apixaban vs warfarin",
            "cohorts": [
                {"id": 1, "name": "apixaban", "definition": _users(43013024)},
                {"id": 2, "name": "warfarin", "definition": _users(1310149)},
                {"id": 3, "name": "GI bleed", "definition": outcome(192671)},
            ],
            "analyses": [
                {"type": "characterization", "name": "ch", "cohorts": [1, 2]},
                {"type": "incidence", "name": "i", "target": 1, "outcome": 3},
                {
                    "type": "comparative",
                    "name": "c",
                    "target": 1,
                    "comparator": 2,
                    "outcome": 3,
                    "settings": {"exclude_ingredients": [43013024, 1310149]},
                },
            ],
        }
    )
    with Clock().watching() as clock:
        started = time.perf_counter()
        run_study(spec, [store], tmp / "synth-out", hub_dir=tmp / "hub")
        total = time.perf_counter() - started
    _report(f"  the study on it (audit of {releases:,} earlier releases)", clock, total)
    return store


def dp_queries(store: Path) -> None:
    policy = ReleasePolicy(differential_privacy=DifferentialPrivacy(enabled=True))
    set_policy(store, policy)
    budgets.grant(store, "bench", epsilon=1000.0)
    query = DPQuery(project="bench", cohort=_definition(), statistic="count")
    started = time.perf_counter()
    answer(store, query, policy)
    fresh = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        answer(store, query, policy)
    cached = (time.perf_counter() - started) / 20
    print(f"  DP query, fresh                    {fresh * 1000:8.1f} ms")
    print(
        f"  DP query, cached                   {cached * 1000:8.1f} ms   "
        f"({fresh / cached:.1f} x faster)"
    )

    def spend(i: int) -> None:
        budgets.charge(store, "bench", epsilon=0.001, query_key=f"b{i}", purpose="bench")

    for threads in (1, 16):
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(spend, range(200)))
        rate = 200 / (time.perf_counter() - started)
        print(f"  budget spends, {threads:>2} thread(s)          {rate:8.0f} /s")


def _definition() -> Any:
    from medlab.cohorts.model import parse_definition

    return parse_definition(_users(1310149))


def main(patients: int, releases: int) -> None:
    """Print the timings and ratios."""
    tmp = Path(tempfile.mkdtemp(prefix="medlab-privacy-bench-"))
    try:
        eunomia(tmp)
        store = synthetic(tmp, patients, releases)
        dp_queries(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 1_000,
    )
