"""Helpers shared by tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from medlab.analyses.scope import Scope
from medlab.cdm import schema
from medlab.cdm.store import open_store
from medlab.privacy import gate
from medlab.privacy.policy import Dominance, ReleasePolicy
from medlab.privacy.release import Release, Released


def split_store(store: Path, parts: int, tmp: Path) -> list[Path]:
    """Copies of a store, each keeping the persons whose id falls in its share."""
    tmp.mkdir(parents=True, exist_ok=True)
    copies = []
    person_tables = [t for t in schema.tables().values() if "person_id" in t.column_names]
    for k in range(parts):
        copy = tmp / f"part{k}.duckdb"
        shutil.copy(store, copy)
        with open_store(copy) as con:
            for t in person_tables:
                con.execute(f"DELETE FROM {t.qualified} WHERE person_id % {parts} <> {k}")
            con.execute(f"DELETE FROM results.cohort WHERE subject_id % {parts} <> {k}")
        copies.append(copy)
    return copies


# A policy that changes nothing, for tests that check pooling is exact: every count shown
# as is, no rounding, no dominance or model rules. Never a steward's choice.
OPEN_POLICY = ReleasePolicy(
    version="tests-open",
    min_cell_count=1,
    allow_zeros=True,
    rounding="none",
    precision="none",
    min_group_size=1,
    min_degrees_of_freedom=0,
    min_events_per_parameter=0,
    dominance=Dominance(n=1, k=1.0, p=0.0),
)


# Populations keyed for tests: cohort i's definition is "definition-i" on one snapshot.
SCOPE = Scope("sha256:tests", {i: f"sha256:definition-{i}" for i in range(1, 100)})


def released(release: Release, policy: ReleasePolicy = OPEN_POLICY) -> Released:
    """``release`` through the gate (the open policy unless told otherwise)."""
    return gate.apply(policy, release)
