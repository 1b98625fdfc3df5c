"""Run a cohort definition on a world, on DuckDB through the compiler."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medlab.cdm.store import open_store
from medlab.cohorts.engine import GenerationResult, generate
from medlab.cohorts.model import parse_definition

from .world import World

Cohort = list[tuple[int, str, str]]


def cohort_rows(store: Path, cohort_id: int = 1) -> Cohort:
    with open_store(store, read_only=True) as con:
        rows = con.execute(
            "SELECT subject_id, cohort_start_date, cohort_end_date FROM results.cohort "
            "WHERE cohort_definition_id = ? ORDER BY 1, 2",
            [cohort_id],
        ).fetchall()
    return [(p, s.isoformat(), e.isoformat()) for p, s, e in rows]


@pytest.fixture
def run(tmp_path: Path) -> Callable[[World, dict[str, Any]], tuple[Cohort, GenerationResult]]:
    """Generate a definition (medlab JSON data) on a world; returns rows and the result."""
    counter = iter(range(1000))

    def go(world: World, definition: dict[str, Any]) -> tuple[Cohort, GenerationResult]:
        base = tmp_path / f"w{next(counter)}"
        store = world.store(base)
        result = generate(store, parse_definition(definition), 1)
        return cohort_rows(store), result

    return go


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)
