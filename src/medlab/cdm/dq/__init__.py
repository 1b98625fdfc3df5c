"""Data quality for node stores, in the spirit of OHDSI's DataQualityDashboard."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import duckdb

from medlab.cdm.dq.catalogue import Check, all_checks
from medlab.cdm.store import META_SCHEMA, fetch_first, fetch_one

__all__ = ["Check", "CheckResult", "QualityReport", "all_checks", "run_checks"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check on one store."""

    check: Check
    violations: int
    denominator: int

    @property
    def pct_violated(self) -> float:
        """Violations as a percentage of the denominator (0 when nothing was checked)."""
        return 100.0 * self.violations / self.denominator if self.denominator else 0.0

    @property
    def passed(self) -> bool:
        """Whether the violations stay within the check's threshold."""
        return self.pct_violated <= self.check.threshold

    def to_dict(self) -> dict[str, object]:
        """The JSON form of one check result."""
        c = self.check
        return {
            "name": c.name,
            "check": c.kind,
            "category": c.category,
            "table": c.table,
            "field": c.field,
            "description": c.description,
            "violations": self.violations,
            "denominator": self.denominator,
            "pct_violated": round(self.pct_violated, 4),
            "threshold": c.threshold,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class QualityReport:
    """Every check's result on one store."""

    results: list[CheckResult]

    @property
    def failed(self) -> list[CheckResult]:
        """Results above their threshold."""
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, object]:
        """``{"checks": [...], "passed": n, "failed": m}``."""
        return {
            "checks": [r.to_dict() for r in self.results],
            "passed": len(self.results) - len(self.failed),
            "failed": len(self.failed),
        }


_SOURCES_TOGETHER = 40


def run_checks(
    con: duckdb.DuckDBPyConnection,
    checks: list[Check] | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> QualityReport:
    """Run ``checks`` (default: all) on a store: one scan per distinct source, the scans of
    ``_SOURCES_TOGETHER`` sources side by side in one query (one row of counts)."""
    checks = all_checks() if checks is None else checks
    order = {id(c): i for i, c in enumerate(checks)}
    found: dict[int, CheckResult] = {}
    groups = [
        list(g) for _, g in groupby(sorted(checks, key=lambda c: c.source), lambda c: c.source)
    ]
    for start in range(0, len(groups), _SOURCES_TOGETHER):
        batch = groups[start : start + _SOURCES_TOGETHER]
        if progress:
            progress(batch[0][0].table, start, len(groups))
        scans = [
            "(SELECT "
            + ", ".join(
                f"count(*) FILTER (WHERE ({c.counted}) AND ({c.violated})) AS v{j}, "
                f"count(*) FILTER (WHERE {c.counted}) AS n{j}"
                for j, c in enumerate(group)
            )
            + f" FROM {group[0].source}) AS s{k}"
            for k, group in enumerate(batch)
        ]
        row = fetch_one(con, "SELECT * FROM " + " CROSS JOIN ".join(scans))
        assert row is not None
        values = iter(row)
        for group in batch:
            for c in group:
                found[order[id(c)]] = CheckResult(c, int(next(values)), int(next(values)))
    return QualityReport([found[i] for i in range(len(checks))])


def kept(con: duckdb.DuckDBPyConnection, fingerprint: str) -> dict[str, object]:
    """Every check's result on the snapshot ``fingerprint`` (``{"checked_at": ISO time,
    "checks": [CheckResult.to_dict()...]}``): run once per snapshot and kept in the store's
    metadata, so a study run and the node agent's profile scan the store once between
    loads (the checks take long on large nodes). ``con`` must be able to write."""
    key = f"dq_checks.{fingerprint}"
    found = fetch_first(con, f"SELECT value FROM {META_SCHEMA}.store_info WHERE key = ?", [key])
    if found is not None:
        report: dict[str, object] = json.loads(found[0])
        return report
    checked = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report = {"checked_at": checked, "checks": run_checks(con).to_dict()["checks"]}
    con.execute(f"INSERT INTO {META_SCHEMA}.store_info VALUES (?, ?)", [key, json.dumps(report)])
    return report
