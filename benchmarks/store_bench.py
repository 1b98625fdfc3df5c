"""Costs a node pays on every request, each against its peer in the same process:

- opening the store: cold (each open reads the database) vs inside an enclosing hold (the
  lock keeps the database open, so DuckDB reuses it);
- the snapshot fingerprint: small tables digested together in one query vs every table
  streamed on its own (the same digests);
- generating a cohort: the first time (compile and render the SQL) vs again (the rendered
  statements reused).

On a synthetic site (3,000 patients, seed 7) and, when the sample is present, Eunomia.

    python benchmarks/store_bench.py
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medlab.cdm import fingerprint as fp
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, open_store, store_lock
from medlab.cohorts import engine
from medlab.synth.generate import records, synthesize

EUNOMIA = Path(__file__).resolve().parents[2] / "shared/data/eunomia-gibleed"
ROUNDS = 20


def _mean_ms(call: Callable[[], object], rounds: int = ROUNDS) -> float:
    call()
    started = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - started) / rounds * 1000


def _opens(store: Path) -> None:
    def once() -> None:
        with open_store(store, read_only=True) as con:
            con.execute("SELECT 1").fetchall()

    cold = _mean_ms(once)
    with store_lock(store):
        held = _mean_ms(once)
    print(f"  open: cold {cold:7.2f} ms, in a hold {held:6.2f} ms ({cold / held:5.1f}x)")


def _fingerprint(store: Path) -> None:
    with open_store(store, read_only=True) as con:
        together = _mean_ms(lambda: fp.snapshot_fingerprint(con), 5)
        kept, fp._TOGETHER_ROWS = fp._TOGETHER_ROWS, -1
        try:
            streamed = _mean_ms(lambda: fp.snapshot_fingerprint(con), 5)
        finally:
            fp._TOGETHER_ROWS = kept
    print(
        f"  fingerprint: streamed {streamed:7.1f} ms, together {together:6.1f} ms "
        f"({streamed / together:4.2f}x)"
    )


def _cohort(store: Path) -> None:
    from medlab.cohorts.model import parse_definition

    definition = parse_definition(
        {
            "concept_sets": [{"id": 0, "items": [{"concept_id": 1118084}]}],
            "primary": {"criteria": [{"domain": "drug_era", "codeset_id": 0}]},
            "inclusion_rules": [
                {
                    "name": "40+",
                    "expression": {"demographics": [{"age": {"op": "gte", "value": 40}}]},
                }
            ],
        }
    )
    with store_lock(store):  # both sides reuse the open database: only the SQL differs

        def first() -> None:
            engine._PLANS.clear()
            engine.generate(store, definition, 9)

        cold = _mean_ms(first, 5)
        warm = _mean_ms(lambda: engine.generate(store, definition, 9), 5)
    print(f"  cohort: compiled {cold:7.1f} ms, reused {warm:6.1f} ms ({cold / warm:4.2f}x)")


def main() -> None:
    """Print the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        truth = synthesize(Path(tmp), sites=1, patients=3000, seed=7)
        stores = [("synthetic site", Path(tmp) / records(truth, "sites")[0]["store"])]
        if (EUNOMIA / "PERSON.csv").exists():
            eunomia = Path(tmp) / "eunomia.duckdb"
            init_store(eunomia)
            load_omop_csv(eunomia, EUNOMIA)
            stores.append(("Eunomia", eunomia))
        for name, store in stores:
            print(name)
            _opens(store)
            _fingerprint(store)
            _cohort(store)


if __name__ == "__main__":
    main()
