"""Incidence and characterization tables summed on secure aggregation when a node's policy
releases no site-level numbers (``federation.release_site_level: false``): that node's own
tables never leave it, the results hold the tables of all sites summed (equal to the sum of
the sites' own local tables) through the strictest node's rules, and with every node
releasing its own tables nothing is summed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests import federation as fed

from medlab.analyses import characterization, incidence
from medlab.cdm.store import open_store
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import parse_policy
from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec
from medlab.synth.generate import records, synthesize


def _spec() -> StudySpec:
    data = fed.spec("pooled tables")
    data["analyses"] = [a for a in data["analyses"] if a["type"] != "comparative"]
    return StudySpec.model_validate(data)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("tables")
    truth = synthesize(tmp, sites=3, patients=3000, seed=5)
    return [tmp / s["store"] for s in records(truth, "sites")]


def _policies(stores: list[Path], pooled_only: str | None) -> None:
    for store in stores:  # exact counts, so the pooled table is compared with the sums
        rules: dict[str, Any] = {"version": "t-1", "rounding": "none", "precision": "none"}
        if store.stem == pooled_only:
            rules["federation"] = {"release_site_level": False}
        set_policy(store, parse_policy(rules, "test"))


def _local_sums(stores: list[Path], spec: StudySpec) -> tuple[int, int]:
    """The overall incidence stratum's persons and cohort 1's entries, summed over the
    sites' own local steps (before any gate)."""
    rates = next(a for a in spec.analyses if a.type == "incidence")
    persons = entries = 0
    for store in stores:
        with open_store(store, read_only=True) as con:
            counts = incidence.local(con, 1, 3, rates.settings, spec.calendar)  # type: ignore[attr-defined]
            table = characterization.local(
                con, 1, characterization.CharacterizationSettings(), spec.calendar
            )
        persons += next(c.persons for c in counts if c.grouping == "overall")
        entries += table.entries
    return persons, entries


def test_a_node_that_releases_no_site_numbers_is_summed_with_the_others(
    stores: list[Path], tmp_path: Path
) -> None:
    spec = _spec()
    _policies(stores, "hospital_b")
    result = run_study(spec, stores, tmp_path / "out", hub_dir=tmp_path / "hub")
    rates = next(a for a in result["analyses"] if a["type"] == "incidence")
    table = next(a for a in result["analyses"] if a["type"] == "characterization")
    names = sorted(s.stem for s in stores)
    assert rates["sites_pooled"] == names and table["sites_pooled"] == names
    persons, entries = _local_sums(stores, spec)
    overall = next(r for r in rates["rates"] if r["grouping"] == "overall")
    assert overall["persons"] == persons
    assert table["cohorts"][0]["entries"] == entries
    # hospital_b's own tables never left it: its releases are refusals.
    for release in result["disclosure"]["releases"]:
        if release["site"] == "hospital_b":
            assert release["shown"] == 0
    assert any(r["site"] == "pooled" for r in result["disclosure"]["releases"])


def test_with_every_node_releasing_its_tables_nothing_is_summed(
    stores: list[Path], tmp_path: Path
) -> None:
    _policies(stores, None)
    result = run_study(_spec(), stores, tmp_path / "out", hub_dir=tmp_path / "hub")
    rates = next(a for a in result["analyses"] if a["type"] == "incidence")
    assert "sites_pooled" not in rates and rates["rates"]
    assert all(r["site"] != "pooled" for r in result["disclosure"]["releases"])
