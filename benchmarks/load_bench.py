"""Loading the Eunomia sample: rows per second, and the fingerprint and checks beside it.

Also times the bulk path the synthetic generator uses (Arrow) against a row-by-row peer
(executemany) inserting the same PERSON rows in the same process, the ratio being the point.

    python benchmarks/load_bench.py [EUNOMIA_DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medlab.cdm import dq, schema
from medlab.cdm.fingerprint import snapshot_fingerprint
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, open_store
from medlab.synth.writer import insert, to_arrow

DEFAULT = Path(__file__).resolve().parents[2] / "shared/data/eunomia-gibleed"


def eunomia(directory: Path, tmp: Path) -> None:
    """Load, fingerprint and check Eunomia; print seconds and rows per second."""
    store = tmp / "eunomia.duckdb"
    init_store(store)
    t0 = time.perf_counter()
    report = load_omop_csv(store, directory)
    t1 = time.perf_counter()
    with open_store(store, read_only=True) as con:
        snapshot_fingerprint(con)
        t2 = time.perf_counter()
        dq.run_checks(con)
        t3 = time.perf_counter()
    load_s = t1 - t0
    print(
        f"eunomia load: {report.rows_loaded:,} rows in {load_s:.2f} s "
        f"({report.rows_loaded / load_s:,.0f} rows/s)"
    )
    print(f"fingerprint: {t2 - t1:.2f} s ({(t2 - t1) / load_s:.2f} x load)")
    print(
        f"data quality ({len(dq.all_checks())} checks): {t3 - t2:.2f} s "
        f"({(t3 - t2) / load_s:.2f} x load)"
    )


def bulk_vs_rows(tmp: Path, n: int = 20_000) -> None:
    """Arrow bulk insert against executemany, same rows, same process."""
    person = schema.table("person")
    rng = np.random.default_rng(1)
    columns = {
        "person_id": np.arange(1, n + 1),
        "gender_concept_id": rng.choice([8507, 8532], n),
        "year_of_birth": rng.integers(1930, 2010, n),
        "race_concept_id": np.zeros(n, dtype=np.int64),
        "ethnicity_concept_id": np.zeros(n, dtype=np.int64),
    }
    timings = {}
    for mode in ("arrow", "executemany"):
        store = tmp / f"{mode}.duckdb"
        init_store(store)
        with open_store(store) as con:
            t0 = time.perf_counter()
            if mode == "arrow":
                insert(con, person, to_arrow(person, [columns]))
            else:
                rows = list(zip(*(columns[c].tolist() for c in columns)))
                con.executemany(
                    f"INSERT INTO person ({', '.join(columns)}) VALUES (?, ?, ?, ?, ?)", rows
                )
            timings[mode] = time.perf_counter() - t0
    print(
        f"insert {n:,} persons: arrow {n / timings['arrow']:,.0f} rows/s, executemany "
        f"{n / timings['executemany']:,.0f} rows/s, ratio "
        f"{timings['executemany'] / timings['arrow']:.0f}x"
    )


def main() -> None:
    """Run both benchmarks."""
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        if (directory / "PERSON.csv").exists():
            eunomia(directory, Path(tmp))
        else:
            print(f"Eunomia not found at {directory}; skipping the load benchmark")
        bulk_vs_rows(Path(tmp))


if __name__ == "__main__":
    main()
