"""The differencing audit: every population a node releases a number about, remembered.

Two releases about populations that differ by a few persons give those persons away by
subtraction: a cohort with and without one patient, a comparator arm less one person, a
tracker padding a small set. So the node keeps, for every population behind every released
count (each cohort, analysis population, stratum, arm, covariate row, DP query), its key (how
it was defined, on which data snapshot) and its persons as keyed audit ids
(:mod:`medlab.privacy.persons`) in ``medlab.release_audit``, with its kind (a cohort, or the
analysis type that derived it) and its family (the cohort definitions it derives from, and the
snapshot). A new population is **flagged** when an earlier one of its kind from another family
lies within fewer than the minimum cell count of persons of it, the identical population
included: were only near-but-different populations flagged, the flag itself would tell A
from A plus one person. A flagged population's numbers are withheld (suppressed rows, refused
models).

- The same definition on the same snapshot is the same population: it is looked up by key and
  gets the decision it got the first time, so it may feed any number of analyses and studies,
  and re-running a study on unchanged data reproduces its releases exactly. The same
  definition on a later snapshot is compared with the earlier one, except when nobody changed.
- Populations of one family, and those of one release (one analysis at one node), are not
  compared with each other: nested steps, strata and rows of one table are the gate's
  business (steps, complements and margins).
- Populations too small to be shown are remembered too, so that padding a suppressed small
  set up to the threshold is caught.

Speed: a new population is compared only with remembered ones whose size is within the
threshold; of those, only with the ones whose 256-bucket histograms of audit ids differ by
less than the threshold (the L1 distance of the histograms is a lower bound of the size of the
symmetric difference, so this pre-filter never misses one); the rest get the exact check.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from medlab.cdm.store import META_SCHEMA
from medlab.privacy.persons import PersonKeys
from medlab.privacy.release import Population

TABLE = f"{META_SCHEMA}.release_audit"
CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    population_key VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, family VARCHAR NOT NULL,
    release_id VARCHAR NOT NULL, registered_at TIMESTAMP NOT NULL, size BIGINT NOT NULL,
    buckets BLOB NOT NULL, persons BLOB NOT NULL, flagged BOOLEAN NOT NULL)"""
BUCKETS = 256


def _family(population: Population) -> str:
    """The snapshot and the definitions a population derives from, as stored."""
    return f"{population.snapshot}#{'|'.join(population.family)}"


def _buckets(ids: np.ndarray) -> np.ndarray:
    return np.bincount(ids & (BUCKETS - 1), minlength=BUCKETS).astype(np.int32)


@dataclass
class _Pending:
    key: str
    kind: str
    family: str
    size: int
    buckets: np.ndarray
    persons: np.ndarray
    flagged: bool
    saved: bool = False


class Auditor:
    """The audit at one node, on an open connection, for a sequence of releases: call
    :meth:`begin` before each release and :meth:`save` inside the transaction that records
    it."""

    def __init__(self, con: duckdb.DuckDBPyConnection | None, keys: PersonKeys, k: int) -> None:
        self._con = con
        self.keys = keys
        self.k = k
        self.release_id = ""
        self._decisions: dict[str, bool] = {}
        # Populations of earlier releases, the ones a new population is compared with.
        self._pkeys: list[str] = []
        self._kinds: list[str] = []
        self._families: list[str] = []
        self._sizes = np.zeros(0, dtype=np.int64)
        self._hists = np.zeros((0, BUCKETS), dtype=np.int32)
        self._persons: dict[str, np.ndarray] = {}
        self._pending: list[_Pending] = []
        self._loaded = False

    def bind(self, con: duckdb.DuckDBPyConnection | None) -> None:
        """Use ``con`` (a connection to the node's store) from now on."""
        self._con = con

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The bound connection."""
        if self._con is None:
            raise RuntimeError("the audit has no connection to its store")
        return self._con

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self.con.execute(CREATE)
        rows = self.con.execute(
            f"SELECT population_key, kind, family, size, buckets, flagged FROM {TABLE}"
        ).fetchall()
        self._pkeys = [str(r[0]) for r in rows]
        self._kinds = [str(r[1]) for r in rows]
        self._families = [str(r[2]) for r in rows]
        self._sizes = np.array([int(r[3]) for r in rows], dtype=np.int64)
        if rows:
            self._hists = np.vstack([np.frombuffer(r[4], dtype=np.int32) for r in rows])
        self._decisions = {str(r[0]): bool(r[5]) for r in rows}

    def begin(self, release_id: str) -> None:
        """Start auditing a new release: the saved populations of the one before become
        populations it is compared with (those of a release never saved are forgotten)."""
        self._load()
        saved = [p for p in self._pending if p.saved]
        for p in self._pending:
            if not p.saved:
                self._decisions.pop(p.key, None)
                self._persons.pop(p.key, None)
        if saved:
            self._pkeys += [p.key for p in saved]
            self._kinds += [p.kind for p in saved]
            self._families += [p.family for p in saved]
            self._sizes = np.concatenate([self._sizes, [p.size for p in saved]])
            self._hists = np.vstack([self._hists, *(p.buckets[None, :] for p in saved)])
        self._pending = []
        self.release_id = release_id

    def _persons_of(self, index: int) -> np.ndarray:
        key = self._pkeys[index]
        if key not in self._persons:
            (blob,) = self.con.execute(
                f"SELECT persons FROM {TABLE} WHERE population_key = ?", [key]
            ).fetchall()[0]
            self._persons[key] = np.frombuffer(blob, dtype=np.int64)
        return self._persons[key]

    def _closest(
        self, population: Population, ids: np.ndarray, hist: np.ndarray, cap: int | None = None
    ) -> int:
        """The smallest symmetric difference to an earlier population of the same kind from
        another family of definitions, capped at ``cap`` (the threshold ``k`` by default)."""
        best = cap = self.k if cap is None else cap
        if not self._pkeys:
            return best
        family = _family(population)
        definitions = family.split("#", 1)[1]
        close = np.abs(self._sizes - len(ids)) < cap
        candidates = [
            int(i)
            for i in np.flatnonzero(close)
            if self._kinds[i] == population.kind
            and self._families[i] != family
            and self._pkeys[i] != population.key
        ]
        if not candidates:
            return best
        l1 = np.abs(self._hists[candidates] - hist).sum(axis=1)
        for index, distance in zip(candidates, l1, strict=True):
            if distance >= min(best, cap):
                continue
            persons = self._persons_of(index)
            shared = len(np.intersect1d(ids, persons, assume_unique=True))
            difference = len(ids) + len(persons) - 2 * shared
            if difference == 0 and self._families[index].split("#", 1)[1] == definitions:
                continue  # the same definition on an earlier snapshot, and nobody changed
            best = min(best, difference)
        return best

    def _remember(self, population: Population, ids: np.ndarray, flagged: bool) -> None:
        self._decisions[population.key] = flagged
        self._persons[population.key] = ids
        self._pending.append(
            _Pending(
                population.key,
                population.kind,
                _family(population),
                len(ids),
                _buckets(ids),
                ids,
                flagged,
            )
        )

    def flagged(self, population: Population | None) -> bool:
        """Whether ``population`` lies within the threshold of an earlier population of its
        kind defined from other cohorts (remembering it, and the answer, either way)."""
        if population is None or len(population) == 0:
            return False
        self._load()
        known = self._decisions.get(population.key)
        if known is not None:
            return known
        ids = self.keys.audit_ids(population.persons)
        flagged = self._closest(population, ids, _buckets(ids)) < self.k
        self._remember(population, ids, flagged)
        return flagged

    def nearest(self, population: Population, cap: int) -> int:
        """The smallest symmetric difference between ``population`` and an earlier one of
        its kind defined from other cohorts, capped at ``cap`` (for the noisy audit of DP
        queries); remembers the population, unflagged."""
        self._load()
        ids = self.keys.audit_ids(population.persons)
        distance = self._closest(population, ids, _buckets(ids), cap)
        if population.key not in self._decisions and len(ids):
            self._remember(population, ids, False)
        return distance

    def save(self) -> None:
        """Write the populations the current release added (inside the caller's
        transaction), in one bulk insert."""
        rows = [p for p in self._pending if not p.saved]
        if not rows:
            return
        self.con.execute(CREATE)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        table = pa.table(
            {
                "population_key": [p.key for p in rows],
                "kind": [p.kind for p in rows],
                "family": [p.family for p in rows],
                "release_id": [self.release_id] * len(rows),
                "registered_at": pa.array([now] * len(rows), type=pa.timestamp("us")),
                "size": pa.array([p.size for p in rows], type=pa.int64()),
                "buckets": pa.array([p.buckets.tobytes() for p in rows], type=pa.binary()),
                "persons": pa.array([p.persons.tobytes() for p in rows], type=pa.binary()),
                "flagged": [p.flagged for p in rows],
            }
        )
        self.con.register("medlab_audit_rows", table)
        try:
            self.con.execute(f"INSERT INTO {TABLE} SELECT * FROM medlab_audit_rows")
        finally:
            self.con.unregister("medlab_audit_rows")
        for p in rows:
            p.saved = True
