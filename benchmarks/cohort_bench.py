"""Generating a two-rule new-user cohort on synthetic hospitals of 100k and 1M patients.

The cohort is the shipped example ``warfarin_af_new_users``: first warfarin exposure with 365
days of prior observation; rule 1, atrial fibrillation recorded in the 30 days up to index;
rule 2, no gastrointestinal hemorrhage before index; exit at the end of observation. The peer
is the same cohort written by hand as one DuckDB query, run in the same process: the counts
must match and the time ratio shows what the compiled, step-by-step SQL costs.

    python benchmarks/cohort_bench.py              # 100k and 1M patients
    python benchmarks/cohort_bench.py 20000        # chosen sizes
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from medlab.cdm.store import open_store
from medlab.cohorts.engine import generate
from medlab.cohorts.model import example
from medlab.synth.generate import synthesize

HAND_WRITTEN = """
WITH warfarin AS (SELECT descendant_concept_id AS c FROM concept_ancestor
                  WHERE ancestor_concept_id = 1310149),
af AS (SELECT descendant_concept_id AS c FROM concept_ancestor WHERE ancestor_concept_id = 313217),
bleed AS (SELECT descendant_concept_id AS c FROM concept_ancestor
          WHERE ancestor_concept_id = 192671),
firsts AS (SELECT person_id, min(drug_exposure_start_date) AS d FROM drug_exposure
           WHERE drug_concept_id IN (SELECT c FROM warfarin) GROUP BY person_id),
entry AS (SELECT f.person_id, f.d, o.observation_period_start_date AS s,
                 o.observation_period_end_date AS e
          FROM firsts f JOIN observation_period o ON o.person_id = f.person_id
           AND f.d BETWEEN o.observation_period_start_date AND o.observation_period_end_date
          WHERE o.observation_period_start_date + 365 <= f.d)
SELECT count(*) FROM entry x
WHERE EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = x.person_id
              AND c.condition_concept_id IN (SELECT c FROM af)
              AND c.condition_start_date BETWEEN x.d - 30 AND x.d
              AND c.condition_start_date BETWEEN x.s AND x.e)
  AND NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = x.person_id
              AND c.condition_concept_id IN (SELECT c FROM bleed)
              AND c.condition_start_date <= x.d - 1
              AND c.condition_start_date BETWEEN x.s AND x.e)
"""


def main(sizes: list[int]) -> None:
    """Print, per size, the compiled generation time and the hand-written peer's."""
    definition = example("warfarin_af_new_users")
    print(
        f"{'patients':>10} {'event rows':>12} {'persons':>8} {'compiled ms':>12} "
        f"{'hand ms':>9} {'ratio':>6}"
    )
    for patients in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            truth = synthesize(Path(tmp), sites=1, patients=patients, seed=7)
            site = truth["sites"][0]  # type: ignore[index]
            store = Path(tmp) / site["store"]
            result = generate(store, definition, 1)
            with open_store(store, read_only=True) as con:
                started = time.perf_counter()
                (hand,) = con.execute(HAND_WRITTEN).fetchall()[0]
                hand_ms = (time.perf_counter() - started) * 1000
            assert hand == result.entries, (hand, result.entries)
            print(
                f"{patients:>10,} {sum(site['rows'].values()):>12,} {result.persons:>8,} "
                f"{result.sql_ms:>12,.0f} {hand_ms:>9,.0f} {result.sql_ms / hand_ms:>6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
