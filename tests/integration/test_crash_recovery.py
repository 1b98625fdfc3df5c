"""A load killed with SIGKILL at any point is, after the next open, loaded and logged once, or
neither (the ledger's crash test, for the store and its log together)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.spec.world import World

from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, load_history, open_store
from medlab.ledger.log import TransparencyLog, verify_log
from medlab.privacy.ingest import RAW

# The child loads the second batch; the test decides where it dies, by wrapping one function
# so that the process kills itself there.
CHILD = r"""
import os, signal, sys
from pathlib import Path
from medlab.cdm import loader, outbox
from medlab.ledger import parties
from medlab.privacy.ingest import RAW

store, source, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "staged":  # inside the load's transaction, its log entry staged, not committed
    stage = outbox.stage
    def stage_then_die(*a, **k):
        stage(*a, **k)
        die()
    outbox.stage = stage_then_die
elif point == "committed":  # the load committed, nothing appended to the log yet
    flush = outbox.flush
    def die_before_appending(con, store):
        if outbox._pending(con):
            die()
        return flush(con, store)
    outbox.flush = die_before_appending
elif point == "appended":  # appended to the log, the staged entry not yet cleared
    log = parties.Party.log
    def log_then_die(self, *a, **k):
        log(self, *a, **k)
        die()
    parties.Party.log = log_then_die
print("ready", flush=True)
loader.load_omop_csv(store, source, ingest=RAW)
print("done", flush=True)
"""


def _batch(directory: Path, first: int, vocabulary: bool) -> Path:
    w = World()
    for pid in range(first, first + 20):
        w.person(pid, yob=1950 + pid % 30)
        w.condition(pid, 100, "2010-01-01")
    for table, key in (
        ("observation_period", "observation_period_id"),
        ("condition_occurrence", "condition_occurrence_id"),
    ):
        for row in w.rows[table]:
            row[key] += first  # ids of the second batch follow the first's
    w.write(directory)
    if not vocabulary:
        for name in ("concept", "concept_ancestor", "concept_relationship"):
            (directory / f"{name}.csv").unlink()
    return directory


def _loaded_entries(store: Path) -> list[int]:
    with TransparencyLog(store.with_suffix(".ledger"), None) as log:
        entries = [json.loads(log.entry(i)) for i in range(log.size)]
    return [e["load_id"] for e in entries if e["type"] == "data_loaded"]


POINTS = ["staged", "committed", "appended", "random-1", "random-2", "random-3", "random-4"]


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_load_is_loaded_and_logged_once_or_not_at_all(tmp_path: Path, point: str) -> None:
    store = tmp_path / "node.duckdb"
    init_store(store)
    load_omop_csv(store, _batch(tmp_path / "first", 1, vocabulary=True), ingest=RAW)
    second = _batch(tmp_path / "second", 1001, vocabulary=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), str(second), point],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    if point.startswith("random"):
        time.sleep(random.Random(point).uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=120)
    # The next writable open completes whatever the killed load committed.
    with open_store(store) as con:
        loads = [row["load_id"] for row in load_history(con)]
        (persons,) = con.execute("SELECT count(*) FROM person").fetchall()[0]
    assert loads in ([1], [1, 2])
    assert persons == 20 * len(loads)
    assert _loaded_entries(store) == loads  # each committed load logged, exactly once
    assert verify_log(store.with_suffix(".ledger")) == []
    if point in ("committed", "appended"):
        assert loads == [1, 2]  # killed after the commit: loaded, and now logged
    if point == "staged":
        assert loads == [1]
