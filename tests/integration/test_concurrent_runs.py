"""Concurrent study runs on one store never read each other's cohorts.

Both studies name their cohorts 1 and 2 with different definitions, so a run that read the
other's rows in ``results.cohort`` would release (and sign) numbers about the wrong cohort.
Each node is held for the whole of a run (a lock shared by threads and processes), so every
concurrent run gives exactly what it gives alone.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.acceptance.attacks import worlds as w

from medlab.cdm.store import store_lock
from medlab.errors import StoreBusy
from medlab.studies.run import run_study


def _spec(name: str, first: dict, second: dict) -> Any:
    return w.study(
        name,
        {1: first, 2: second},
        [
            {"type": "characterization", "name": "ch", "cohorts": [1, 2]},
            {"type": "feasibility", "name": "f", "cohort": 1},
            {"type": "incidence", "name": "i", "target": 1, "outcome": 2},
        ],
    )


A = _spec("A", w.cohort(w.DRUG_200), w.cohort(w.OUTCOME, qualified_limit="all"))
B = _spec("B", w.cohort(w.DRUG_210), w.cohort(w.CONDITION))


def _run(spec_json: str, store: str, out: str) -> None:
    from medlab.studies.spec import StudySpec

    spec = StudySpec.model_validate_json(spec_json)
    run_study(spec, [Path(store)], Path(out), hub_dir=Path(out).parent / "hub")


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_twenty_concurrent_pairs_each_equal_their_solo_run(tmp_path: Path) -> None:
    store = w.build(tmp_path, True)
    solo = {}
    for spec in (A, B):
        _run(spec.model_dump_json(), str(store), str(tmp_path / f"solo-{spec.name}"))
        solo[spec.name] = _results(tmp_path / f"solo-{spec.name}")
    assert solo["A"]["analyses"] != solo["B"]["analyses"]
    context = multiprocessing.get_context("fork")
    # 12 pairs as separate processes (two `medlab study run` commands), 8 as threads of one
    # process (a node agent serving two tasks).
    starters = [context.Process] * 12 + [threading.Thread] * 8
    for pair, starter in enumerate(starters):
        outs = {s.name: tmp_path / f"pair{pair}-{s.name}" for s in (A, B)}
        runs = [
            starter(target=_run, args=(s.model_dump_json(), str(store), str(outs[s.name])))
            for s in (A, B)
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join(timeout=300)
            assert getattr(run, "exitcode", 0) == 0
        for name, out in outs.items():
            assert _results(out) == solo[name], (pair, name)


def _hold(store: str, held: Any, release: Any) -> None:
    with store_lock(Path(store)):
        held.set()
        release.wait(30)


def test_a_caller_that_will_not_wait_is_told_the_store_is_busy(synth_small: Path) -> None:
    """``store_lock(timeout=0)`` (what the node agent's profile takes) raises StoreBusy at
    once while another process holds the store, and takes it once that one lets go."""
    store = synth_small / "hospital_a.duckdb"
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(store), held, release))
    holder.start()
    try:
        assert held.wait(60)
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="busy"), store_lock(store, timeout=0):
            pass
        assert time.monotonic() - started < 5
    finally:
        release.set()
        holder.join(60)
    with store_lock(store, timeout=5):
        pass
