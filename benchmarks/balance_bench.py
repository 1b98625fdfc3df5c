"""Per-covariate balance on one population: what the gate's inputs cost over the SMDs alone.

A random covariate matrix of ``rows`` entries (persons repeated, as without first exposures
only) and ``covariates`` binary columns of prevalence 1-30%, IPTW-like weights. The peer is
:func:`medlab.analyses.estimation.standardized_differences` on the same columns, the part
the released maximum |SMD| already paid for; :func:`medlab.analyses.balance.cells` adds the
persons holding and lacking each covariate per arm and the contributions for the dominance
rules. A comparative study calls it once before adjustment and once per adjustment.

    python benchmarks/balance_bench.py                 # 20,000 rows; 500 and 5,000 covariates
    python benchmarks/balance_bench.py 50000 5000      # chosen sizes
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy import sparse

from medlab.analyses import balance as bal
from medlab.analyses import estimation as est


def _timed(run: object, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def bench(rows: int, covariates: int) -> None:
    rng = np.random.default_rng(1)
    people = rng.integers(0, int(rows * 0.8), rows)
    treatment = (people % 2).astype(int)
    prevalence = rng.uniform(0.01, 0.3, covariates)
    x = sparse.random(rows, covariates, density=float(prevalence.mean()), format="csr", rng=rng)
    x.data[:] = 1.0
    weights = rng.uniform(0.1, 10.0, rows)
    names = [f"condition:{j}" for j in range(covariates)]
    smd = _timed(lambda: est.standardized_differences(x, treatment, weights))
    full = _timed(lambda: bal.cells(x, names, names, treatment, people, weights))
    print(
        f"{rows:>7,} rows, {covariates:>5,} covariates: SMDs alone {smd * 1000:8.1f} ms, "
        f"cells {full * 1000:8.1f} ms, ratio {full / smd:5.1f}x"
    )


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]]
    if len(sizes) == 2:
        bench(*sizes)
    else:
        for n in (500, 5_000):
            bench(20_000, n)
