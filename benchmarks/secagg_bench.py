"""Secure aggregation's cost, and exact federated fits against the pooled fit.

1. One session of the protocol (all five rounds, in one process) for 10, 50 and 100
   simulated nodes, each summing a vector of 106 values (a logistic model with 13
   coefficients: 91 + 13 + 2): seconds per session, the nodes' and the hub's share, and the
   bytes every message would carry on the wire (JSON).
2. A federated logistic regression and a site-stratified Cox model (Efron) over 3 and 10
   sites, every Newton round securely summed: rounds, seconds, and the ratio to the pooled
   fit on the union (statsmodels), with the largest coefficient difference.

    python benchmarks/secagg_bench.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import statsmodels.api as sm

from medlab.analyses.federated import cox, glm
from medlab.ledger.keys import Signer
from medlab.privacy.secagg.inprocess import secure_sum
from medlab.privacy.secagg.protocol import SecAggHub, SecAggNode, default_threshold


def session_cost(tmp: Path, n: int, length: int = 106) -> None:
    names = [f"node_{i:03d}" for i in range(n)]
    signers = {name: Signer.load_or_create(tmp / f"{n}-{name}.key") for name in names}
    keys = {name: s.public_pem for name, s in signers.items()}
    t = default_threshold(n)
    rng = np.random.default_rng(1)
    vectors = {name: list(rng.normal(size=length)) for name in names}
    node_s = hub_s = 0.0
    wire = 0

    def timed(call, side):  # type: ignore[no-untyped-def]
        nonlocal node_s, hub_s, wire
        started = time.perf_counter()
        out = call()
        spent = time.perf_counter() - started
        if side == "node":
            node_s += spent
        else:
            hub_s += spent
        wire += len(json.dumps(out, default=str))
        return out

    nodes = [SecAggNode(name, "bench", t, length, signers[name], keys.get) for name in names]
    hub = SecAggHub("bench", t, length)
    adverts = timed(lambda: [x.advertise() for x in nodes], "node")
    adverts = timed(lambda: hub.collect_adverts(adverts), "hub")
    shares = timed(lambda: [x.share_keys(adverts) for x in nodes], "node")
    routed = timed(lambda: hub.route_shares(shares), "hub")
    masked = timed(lambda: [x.masked_input(routed[x.name], vectors[x.name]) for x in nodes], "node")
    survivors = timed(lambda: hub.collect_masked(masked), "hub")
    signed = timed(lambda: [x.consistency(survivors) for x in nodes], "node")
    signatures = timed(lambda: hub.collect_signatures(signed), "hub")
    revealed = timed(lambda: [x.unmask(signatures) for x in nodes], "node")
    total = timed(lambda: hub.unmask(revealed), "hub")
    exact = np.sum(list(vectors.values()), axis=0)
    error = float(np.max(np.abs(np.array(total) - exact)))
    print(
        f"  {n:>3} nodes (threshold {t}): {node_s + hub_s:6.2f} s per session "
        f"(nodes {node_s:.2f} s in all, {node_s / n * 1000:.0f} ms each; hub {hub_s:.2f} s); "
        f"{wire / 1e6:.1f} MB on the wire; max error {error:.1e}"
    )


def federated_fits(tmp: Path, sites: int) -> None:
    rng = np.random.default_rng(sites)
    n = 20_000
    p = 13
    x = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    beta = rng.normal(0, 0.3, p)
    y = rng.binomial(1, 1 / (1 + np.exp(-(x @ beta)))).astype(float)
    site = rng.integers(0, sites, n)
    signers = {f"s{s}": Signer.load_or_create(tmp / f"fit{sites}-{s}.key") for s in range(sites)}
    rounds = [0]

    def total(b: np.ndarray) -> glm.Contribution:
        rounds[0] += 1
        vectors = {
            name: glm.contribution(x[site == s], y[site == s], b, "logistic").flat()
            for s, name in enumerate(signers)
        }
        return glm.Contribution.unflat(secure_sum(vectors, signers, f"g{rounds[0]}"), p)

    started = time.perf_counter()
    fitted = glm.fit(total, p, "logistic")
    federated = time.perf_counter() - started
    started = time.perf_counter()
    pooled = sm.GLM(y, x, family=sm.families.Binomial()).fit()
    alone = time.perf_counter() - started
    diff = float(np.max(np.abs(fitted.coefficients - pooled.params)))
    print(
        f"  logistic, {sites:>2} sites, {n:,} rows, {p} coefficients: {rounds[0]} rounds, "
        f"{federated:.2f} s vs pooled {alone:.3f} s (ratio {federated / alone:.2f}); "
        f"max |coef difference| {diff:.1e}"
    )
    time_ = np.ceil(rng.exponential(1 / np.exp(x[:, 1:4] @ beta[1:4])) * 30)
    event = rng.binomial(1, 0.7, n)
    z = x[:, 1:4]
    rounds[0] = 0

    def cox_total(b: np.ndarray) -> cox.CoxContribution:
        rounds[0] += 1
        vectors = {
            name: cox.contribution(
                time_[site == s], event[site == s], z[site == s], b, "efron"
            ).flat()
            for s, name in enumerate(signers)
        }
        return cox.CoxContribution.unflat(secure_sum(vectors, signers, f"c{rounds[0]}"), 3)

    started = time.perf_counter()
    fitted_cox = cox.fit(cox_total, 3)
    federated = time.perf_counter() - started
    started = time.perf_counter()
    pooled_cox = sm.PHReg(time_, z, status=event, strata=site, ties="efron").fit()
    alone = time.perf_counter() - started
    diff = float(np.max(np.abs(fitted_cox.coefficients - pooled_cox.params)))
    print(
        f"  Cox (Efron, strata = site), {sites:>2} sites: {rounds[0]} rounds, {federated:.2f} s "
        f"vs pooled {alone:.3f} s (ratio {federated / alone:.2f}); max |coef difference| "
        f"{diff:.1e}"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("secure aggregation, one session (five rounds), 106 values per node:")
        for n in (10, 50, 100):
            session_cost(Path(tmp), n)
        print("exact federated fits, every round securely summed (in one process):")
        for sites in (3, 10):
            federated_fits(Path(tmp), sites)


if __name__ == "__main__":
    main()
