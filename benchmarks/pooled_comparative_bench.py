"""Pooled comparative estimates on secure sums against the same algorithm on the union.

Three synthetic sites (and the first of them split into 10 uneven sites by person): the
pooled PS model, the union's caliper spread and target share, and the four adjustments'
site-stratified Cox fits, every sum taken by the secure-aggregation protocol in this process
(all five phases of every session, the same node and hub code the federation runs). Printed
per site count: secure sums, the task rounds they take over the federation (three per sum
once sessions overlap, plus the first round and the two that open the first session), the
vector length and the bytes of the masked vectors, seconds (the sites' own computation and
the protocol's) against the union's fit in this process (the comparative analysis's PS fit
on the stacked rows and one Cox fit per adjustment), their ratio, and the largest log HR
difference.

    python benchmarks/pooled_comparative_bench.py [--patients N]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' union reference

from tests import federation as fed
from tests.functional.test_pooled_comparative import _spec, _split

from medlab.analyses.federated import comparative as pooled
from medlab.cohorts.engine import generate
from medlab.ledger.keys import Signer
from medlab.privacy.secagg.inprocess import secure_sum
from medlab.studies.spec import StudySpec
from medlab.synth.generate import records, synthesize


def run(label: str, sites: list[pooled.SiteRows], settings, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    names = [f"site_{i:02d}" for i in range(len(sites))]
    signers = {n: Signer.load_or_create(tmp / f"{label}-{n}.key") for n in names}
    started = time.perf_counter()
    listed = {n: pooled.candidates(s, 10, 40) for n, s in zip(names, sites, strict=True)}
    chosen = pooled.choose(listed, 40)
    size = pooled.length(settings, len(chosen))
    sums: list[list[float]] = []
    while not isinstance(step := pooled.drive(settings, chosen, sums), pooled.Finished):
        vectors = {
            n: pooled.values(s, settings, chosen, step, size, 10)
            for n, s in zip(names, sites, strict=True)
        }
        sums.append(secure_sum(vectors, signers, f"{label}.{len(sums)}"))
    secure_s = time.perf_counter() - started
    started = time.perf_counter()
    reference = fed.pooled_comparative_reference(sites, settings, chosen)
    union_s = time.perf_counter() - started
    worst = max(
        abs(o.log_hr - math.log(reference[o.adjustment]["hr"]))
        for o in step.outcomes
        if o.log_hr is not None
    )
    rounds = 1 + 2 + 3 * len(sums)
    wire = len(sites) * len(sums) * size * 34  # a 128-bit ring element as JSON text
    print(
        f"{label}: {len(sums)} secure sums (~{rounds} federation rounds), vectors of {size}, "
        f"~{wire / 1e6:.1f} MB of masked vectors; {secure_s:.2f} s vs {union_s:.2f} s on the "
        f"union (ratio {secure_s / union_s:.1f}); largest |log HR difference| {worst:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        truth = synthesize(tmp, sites=3, patients=args.patients, seed=3)
        stores = [tmp / s["store"] for s in records(truth, "sites")]
        spec: StudySpec = _spec()
        for store in stores:
            for cohort in spec.cohorts:
                assert cohort.definition is not None
                generate(store, cohort.definition, cohort.id)
        settings = spec.analyses[0].settings  # type: ignore[union-attr]
        sites = fed.site_rows(stores, settings)
        run("3 sites", sites, settings, tmp)
        run("10 sites", _split(sites[0], 10, seed=4), settings, tmp)


if __name__ == "__main__":
    main()
