"""The comparative study on one synthetic site of 100k and 1M patients: time per stage.

Apixaban vs warfarin new users, GI bleeding; the stages are cohort generation, the study
population, covariates, the propensity model (Laplace prior, fixed variance and
cross-validated), and each adjustment with its Cox model. Matching is timed twice: the
CohortMethod matcher medlab now uses, and the earlier matcher (targets walked in score order,
kept here as the peer) on the same scores, with the ratio. The first line of each size is
generating the data, for scale.

    python benchmarks/study_bench.py              # 100k and 1M patients
    python benchmarks/study_bench.py 20000        # chosen sizes
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from medlab.analyses import estimation as est
from medlab.analyses.matching import match_on_ps
from medlab.analyses.population import PopulationSettings, covariates, study_population
from medlab.analyses.propensity import propensity_model
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from medlab.synth.cohorts import new_users, outcome
from medlab.synth.generate import synthesize


def previous_match(
    ps: np.ndarray, treatment: np.ndarray, max_ratio: int, caliper: float
) -> np.ndarray:
    """medlab's matcher before CohortMethod's: targets in score order, each taking its
    nearest unused comparator (the peer this benchmark compares against)."""
    score = est.logit(ps)
    width = caliper * float(np.std(score)) if caliper > 0 else float("inf")
    targets = np.flatnonzero(treatment == 1)
    comparators = np.flatnonzero(treatment == 0)
    order = comparators[np.argsort(score[comparators], kind="stable")]
    values = score[order]
    used = np.zeros(len(order), dtype=bool)
    stratum = np.full(len(ps), -1, dtype=np.int64)
    matched = np.zeros(len(ps), dtype=np.int64)
    for round_index in range(max_ratio):
        for t in targets[np.argsort(score[targets], kind="stable")]:
            if matched[t] != round_index:
                continue
            i = int(np.searchsorted(values, score[t]))
            best, best_gap = -1, width
            lo, hi = i - 1, i
            while lo >= 0 and used[lo]:
                lo -= 1
            while hi < len(order) and used[hi]:
                hi += 1
            for j in (lo, hi):
                if 0 <= j < len(order) and abs(values[j] - score[t]) <= best_gap:
                    best, best_gap = j, abs(values[j] - score[t])
            if best >= 0:
                used[best] = True
                stratum[order[best]] = t
                stratum[t] = t
                matched[t] += 1
    return stratum


def main(sizes: list[int]) -> None:
    """Print seconds per stage for each size."""
    for patients in sizes:
        timings: list[tuple[str, float]] = []

        def timed(name: str, started: float, timings: list = timings) -> float:
            now = time.perf_counter()
            timings.append((name, now - started))
            return now

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            truth = synthesize(Path(tmp), sites=1, patients=patients, seed=7)
            store = Path(tmp) / truth["sites"][0]["store"]  # type: ignore[index]
            t = timed("synthesize (for scale)", t)
            generate(store, parse_definition(new_users(43013024)), 1)
            generate(store, parse_definition(new_users(1310149)), 2)
            generate(store, parse_definition(outcome(192671)), 3)
            t = timed("cohorts (3)", t)
            with open_store(store, read_only=True) as con, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                population, _ = study_population(
                    con, 1, 2, 3, PopulationSettings(first_exposure_only=True, risk_window_start=1)
                )
                t = timed("study population", t)
                x = covariates(con, population, [43013024, 1310149]).matrix
                t = timed(f"covariates ({x.shape[1]:,})", t)
            treatment = population["treatment"].to_numpy()
            ps = propensity_model(x, treatment, "laplace", 0.01).scores
            t = timed("propensity model (Laplace, v=0.01)", t)
            propensity_model(x, treatment, "laplace", None)
            t = timed("propensity model (Laplace, 10-fold CV)", t)
            est.cox(population, "none")
            t = timed("Cox, unadjusted", t)
            for ratio in (1, 100):
                t = time.perf_counter()
                previous_match(ps, treatment, ratio, 0.2)
                before = time.perf_counter() - t
                t = time.perf_counter()
                stratum = match_on_ps(ps, treatment, ratio, 0.2)
                now = time.perf_counter() - t
                timings.append((f"previous matcher, max ratio {ratio}", before))
                timings.append((f"CohortMethod matcher, max ratio {ratio}", now))
                timings.append(("  ratio now / previous", now / before))
            t = time.perf_counter()
            keep = stratum >= 0
            est.cox(population[keep].reset_index(drop=True), "matching", stratum[keep])
            t = timed("stratified Cox on the matched sets", t)
            est.cox(population, "stratification", est.stratify(ps))
            t = timed("quintiles + stratified Cox", t)
            est.cox(population, "iptw", weights=est.iptw(ps, treatment))
            t = timed("IPTW + weighted Cox (robust)", t)
            est.standardized_differences(x, treatment)
            timed("balance (all covariates)", t)
        print(
            f"{patients:,} patients: study population {len(population):,} entries "
            f"({int(np.sum(treatment)):,} target), {int(population['outcome'].sum()):,} "
            "outcomes",
            flush=True,
        )
        for name, seconds in timings:
            unit = "" if name.strip().startswith("ratio") else " s"
            print(f"  {name:<40} {seconds:8.2f}{unit}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
