"""Synthetic hospital generation: rows per second and peak memory at 10k, 100k and 1M patients.

Each size runs in a fresh child process so its peak resident memory (ru_maxrss) is its own.
Also reported, for the same store: loading cost relative to generation (the snapshot
fingerprint and the data quality checks), as ratios measured in the same process.

    python benchmarks/synth_bench.py              # 10k, 100k, 1M patients, one site
    python benchmarks/synth_bench.py 10000 50000  # chosen sizes
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from medlab.cdm import dq
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.store import open_store
from medlab.synth.generate import synthesize

out, patients = Path(sys.argv[1]), int(sys.argv[2])
t0 = time.perf_counter()
truth = synthesize(out, sites=1, patients=patients, seed=7)
t1 = time.perf_counter()
synth_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rows = sum(truth["sites"][0]["rows"].values())
with open_store(out / truth["sites"][0]["store"], read_only=True) as con:
    snapshot_fingerprint(con)
    t2 = time.perf_counter()
    dq.run_checks(con)
    t3 = time.perf_counter()
print(json.dumps({
    "patients": patients, "rows": rows, "synth_s": t1 - t0, "fingerprint_s": t2 - t1,
    "dq_s": t3 - t2, "synth_rss_mb": synth_rss,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "store_mb": (out / truth["sites"][0]["store"]).stat().st_size / 2**20,
}))
"""


def run(patients: int) -> dict[str, float]:
    """Generate one site of ``patients`` in a child process and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(Path(tmp) / "out"), str(patients)],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(sizes: list[int]) -> None:
    """Print one line of figures per size."""
    print(
        f"{'patients':>10} {'rows':>12} {'synth s':>8} {'rows/s':>11} {'synth MB':>9} "
        f"{'peak MB':>8} {'store MB':>9} {'fp/synth':>9} {'dq/synth':>9}"
    )
    for patients in sizes:
        r = run(patients)
        print(
            f"{r['patients']:>10,} {r['rows']:>12,} {r['synth_s']:>8.1f} "
            f"{r['rows'] / r['synth_s']:>11,.0f} {r['synth_rss_mb']:>9.0f} "
            f"{r['peak_rss_mb']:>8.0f} {r['store_mb']:>9.0f} "
            f"{r['fingerprint_s'] / r['synth_s']:>9.2f} {r['dq_s'] / r['synth_s']:>9.2f}",
            flush=True,
        )
    print(
        "(one site per run, each in its own process; synth MB: max resident set after "
        "generating; peak MB: after the fingerprint and checks too; "
        f"parent rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000])
