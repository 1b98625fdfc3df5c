"""The attacks replayed through secure aggregation: pooled estimates over two nodes, one of
them the world with or without the secret.

A pooled fit's secure sums reach the hub exactly, so a hub (or researcher) that runs a study
twice, the second time with a cohort one person smaller, would learn her contribution by
subtraction. The node's differencing audit sees the populations behind every contribution it
makes, so the second study's contribution is withheld at the node — the second run shows the
same thing in both worlds, and the hub gets no second sum at all. A one-person cohort is
withheld by the node's own count rules; a first, legitimate run gives results of one shape
in both worlds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from medlab.errors import PolicyError
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import parse_policy, tighten
from medlab.studies.run import run_study
from tests.acceptance.attacks import worlds as w


def _nodes(tmp: Path, secret: bool) -> list[Path]:
    """The world (secret or not) and a second hospital without the target."""
    stores = []
    for name, holds in (("world", secret), ("other", False)):
        store = w.build(tmp / name, holds, persons=200 if name == "other" else 160)
        renamed = store.with_name(f"{name}.duckdb")
        shutil.move(store, renamed)
        stores.append(renamed)
    return stores


def _pooled(target: dict, name: str, **settings: Any) -> w.StudySpec:
    cohorts = {1: target, 2: w.cohort(w.DRUG_200), 3: w.cohort(w.OUTCOME, qualified_limit="all")}
    return w.study(
        name,
        cohorts,
        [
            {
                "type": "federated_model",
                "name": "m",
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {"model": "logistic", "covariates": ["female"], **settings},
            }
        ],
    )


def _run(spec: w.StudySpec, stores: list[Path], out: Path) -> dict[str, Any]:
    run_study(spec, stores, out, hub_dir=out.parent / "hub")
    return w.view(out)


def test_a_second_pooled_run_one_person_apart_is_withheld_at_the_node(tmp_path: Path) -> None:
    seen, firsts = [], []
    for secret in (True, False):
        stores = _nodes(tmp_path / str(secret), secret)
        first = _run(_pooled(w.cohort(w.DRUG_210), "first"), stores, tmp_path / str(secret) / "1")
        model = first["results"]["analyses"][0]
        assert model["terms"] and model["sites"] == ["other", "world"]  # the first is pooled
        firsts.append(first)
        less = w.cohort(w.DRUG_210, exclude_marked=True)
        second = _run(_pooled(less, "second"), stores, tmp_path / str(secret) / "2")
        found = second["results"]["analyses"][0]
        assert found["withheld_by"]["world"] == (
            "the differencing audit flags a population it is about"
        )
        assert "terms" not in found and "sessions" not in found  # no secure sum was taken
        seen.append(second)
    assert seen[0] == seen[1]
    assert w.keys(firsts[0]["results"]) == w.keys(firsts[1]["results"])


def test_a_pooled_model_of_one_marked_person_is_withheld_in_both_worlds(tmp_path: Path) -> None:
    seen = []
    for secret in (True, False):
        stores = _nodes(tmp_path / str(secret), secret)
        marked = _pooled(w.cohort(w.MARKED), "marked")
        view = _run(marked, stores, tmp_path / str(secret) / "m")
        found = view["results"]["analyses"][0]
        assert "terms" not in found and "world" in found["withheld_by"]
        seen.append(view)
    assert seen[0] == seen[1]


def test_a_request_cannot_turn_site_level_releases_back_on() -> None:
    node = parse_policy({"federation": {"release_site_level": False}}, "node")
    with pytest.raises(PolicyError, match=r"release_site_level is true, the node's is false"):
        tighten(node, {"federation": {"release_site_level": True}}, "the request")
    assert not tighten(node, {"min_cell_count": 20}, "the request").federation.release_site_level


def test_the_same_pooled_study_without_one_node_is_refused(tmp_path: Path) -> None:
    """Run 1 sums the model's queries over three nodes; run 2, the same study with the third
    node withheld (its steward tightened its policy, or the hub left it out), would sum the
    same first query over two: the difference is the third node's contribution. The two
    remaining nodes refuse to sign the smaller survivor set, so run 2 yields no model.
    Run 3 changes a setting that steers only the fitting (every query is then another): its
    first sums, at the same point, would still differ by the third node's. Nodes whose
    policy ends a fit after a dropout sign one set for all sums over the same people, so
    run 3 yields no model either — each identically in both worlds."""
    seen = []
    for secret in (True, False):
        stores = _nodes(tmp_path / str(secret), secret)
        third = w.build(tmp_path / str(secret) / "third", False, persons=180)
        stores.append(shutil.move(third, third.with_name("third.duckdb")))
        for store in stores[:2]:
            set_policy(store, parse_policy({"federation": {"after_dropout": "end"}}, "steward"))
        spec = _pooled(w.cohort(w.DRUG_210), "three")
        first = _run(spec, stores, tmp_path / str(secret) / "1")["results"]["analyses"][0]
        assert first["sites"] == ["other", "third", "world"]
        set_policy(stores[2], parse_policy({"min_cell_count": 100_000}, "steward"))
        second = _run(spec, stores, tmp_path / str(secret) / "2")
        found = second["results"]["analyses"][0]
        assert "terms" not in found
        assert "summed over other survivors before" in found["withheld"]
        again = _pooled(w.cohort(w.DRUG_210), "three", round_timeout_s=301)
        third_run = _run(again, stores, tmp_path / str(secret) / "3")["results"]["analyses"][0]
        assert "terms" not in third_run
        assert (
            "summed over other, third, world before; this node signs no other set"
            in (third_run["withheld"])
        )
        seen.append((second, third_run))
    assert seen[0] == seen[1]
