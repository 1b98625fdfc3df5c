"""The comparative study on one synthetic site of 100k and 1M patients: time per stage.

Apixaban vs warfarin new users, GI bleeding; the stages are cohort generation, the study
population, covariates, the propensity score, and each adjustment with its Cox model. The
first line of each size is generating the data, for scale.

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
from medlab.analyses.population import PopulationSettings, covariates, study_population
from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import parse_definition
from medlab.synth.generate import synthesize


def _new_users(ingredient: int) -> dict[str, object]:
    return {
        "concept_sets": [
            {"id": 0, "items": [{"concept_id": ingredient, "include_descendants": True}]}
        ],
        "primary": {
            "criteria": [{"domain": "drug_exposure", "codeset_id": 0, "first_occurrence": True}]
        },
    }


OUTCOME = {
    "concept_sets": [{"id": 0, "items": [{"concept_id": 192671, "include_descendants": True}]}],
    "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
    "qualified_limit": "all",
    "end_strategy": {"type": "date_offset", "offset": 1},
}


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
            generate(store, parse_definition(_new_users(43013024)), 1)
            generate(store, parse_definition(_new_users(1310149)), 2)
            generate(store, parse_definition(OUTCOME), 3)
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
            ps = est.propensity_scores(x, treatment)
            t = timed("propensity score (L2)", t)
            est.cox(population, "none")
            t = timed("Cox, unadjusted", t)
            stratum = est.match(ps, treatment, 1, 0.2)
            keep = stratum >= 0
            est.cox(population[keep].reset_index(drop=True), "matching", stratum[keep])
            t = timed("1:1 matching + stratified Cox", t)
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
            print(f"  {name:<34} {seconds:8.2f} s", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
