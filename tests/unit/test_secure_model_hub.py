"""The hub's side of a pooled model, from fabricated node outputs: who may contribute, the
threshold, and a site whose data change during the fit."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from medlab.privacy.policy import FederationPolicy, ReleasePolicy
from medlab.privacy.secagg import rounds
from medlab.privacy.secagg.protocol import SecAggError
from medlab.studies import secure
from medlab.studies.local import NodeOutput
from medlab.studies.secure_node import _check
from medlab.studies.spec import FederatedModelAnalysis

ANALYSIS = FederatedModelAnalysis(name="m", target=1, comparator=2, outcome=3)


def _output(site: str, round_: int, sent: dict[str, Any], fingerprint: str = "fp") -> NodeOutput:
    return NodeOutput(
        site=site,
        round=round_,
        fingerprint=f"{fingerprint}-{site}",
        policy={"min_sites": 1},
        quality={},
        key_id="k",
        public_key=f"key of {site}",
        releases=[],
        secure={"m": sent},
    )


def test_ready_sites_set_the_threshold_and_the_first_session() -> None:
    history = [_output(s, 1, {"ready": True}) for s in ("a", "b", "c")]
    history.append(_output("d", 1, {"withheld": "rows below 10"}))
    found = secure.state(ANALYSIS, history, 1)
    assert found.ask is not None and [r["phase"] for r in found.ask["secure"]] == ["advertise"]
    assert found.ask["secure"][0]["threshold"] == 2  # a majority of the three ready sites
    assert set(found.ask["keys"]) == {"a", "b", "c"} and found.ask["query"] == {
        "beta": [0.0, 0.0, 0.0]
    }


def test_too_few_ready_sites_withhold_the_model() -> None:
    history = [_output("a", 1, {"ready": True}), _output("b", 1, {"withheld": "rows below 10"})]
    found = secure.state(ANALYSIS, history, 1)
    assert found.ask is None and found.result["withheld"] == "1 sites may contribute; need 2"
    assert found.result["withheld_by"] == {"b": "rows below 10"}


def test_a_site_whose_data_change_during_the_fit_stops_it() -> None:
    history = [_output(s, 1, {"ready": True}) for s in ("a", "b", "c")]
    history.append(_output("b", 2, {"aborted": "x"}, fingerprint="reloaded"))
    found = secure.state(ANALYSIS, history, 2)
    assert found.ask is None
    assert found.result["withheld"] == "the data at b changed during the fit"


def test_a_node_refuses_a_threshold_below_its_least_and_a_party_list_without_it() -> None:
    party: Any = SimpleNamespace(signer=SimpleNamespace(public_pem="mine"))
    keys = {"a": "mine", "b": "theirs", "c": "others", "d": "more"}
    policy = ReleasePolicy(federation=FederationPolicy(min_sites=3))

    def asked(threshold: int, parties: dict[str, str]) -> dict[str, Any]:
        return {"keys": parties, "secure": [rounds.request("s.1", "advertise", threshold, 4)]}

    _check(asked(3, keys), "a", party, policy)  # its min_sites, and a majority of four
    with pytest.raises(SecAggError, match="below this node's least, 3"):
        _check(asked(2, keys), "a", party, policy)
    with pytest.raises(SecAggError, match="do not include this node"):
        _check(asked(3, {**keys, "a": "an impostor's"}), "a", party, policy)
    with pytest.raises(SecAggError, match="below this node's least, 3"):
        _check(asked(2, keys), "a", party, ReleasePolicy())  # a majority of four is 3


def test_a_node_signs_one_survivor_set_per_query(tmp_path: Any) -> None:
    from medlab.studies.secure_node import guard_survivors, remember_query

    remember_query(tmp_path, "s.1", "q" * 64)
    guard_survivors(tmp_path, "s.1", ["a", "b", "c"])
    guard_survivors(tmp_path, "s.1", ["c", "b", "a"])  # the same set, in any order
    remember_query(tmp_path, "t.1", "q" * 64)  # the same query in another session (a rerun)
    guard_survivors(tmp_path, "t.1", ["a", "b", "c"])
    with pytest.raises(SecAggError, match="summed over other survivors before"):
        guard_survivors(tmp_path, "t.1", ["a", "b"])
    remember_query(tmp_path, "u.1", "r" * 64)  # another query: its own set
    guard_survivors(tmp_path, "u.1", ["a", "b"])


def test_a_fit_goes_on_only_over_fewer_nodes(tmp_path: Any) -> None:
    from medlab.studies.secure_node import guard_survivors, remember_query

    def step(session: str, survivors: list[str], after: str = "continue") -> list[str]:
        remember_query(tmp_path, session, session * 64, "f" * 64)  # one fit, its own query
        return guard_survivors(tmp_path, session, survivors, after)

    assert step("1", ["a", "b", "c", "d"]) == []
    assert step("2", ["a", "b", "c"]) == ["d"]  # d dropped: the fit goes on without it
    with pytest.raises(SecAggError, match="only fewer of them"):
        step("3", ["a", "b", "c", "d"])  # d never comes back into the fit
    with pytest.raises(SecAggError, match="only fewer of them"):
        step("4", ["a", "b", "e"])  # nor does another take its place
    with pytest.raises(SecAggError, match="no other set"):
        step("5", ["a", "b"], "end")
    assert step("6", ["a", "b", "c"], "end") == []  # the same set is always fine
    assert step("7", ["a", "b"]) == ["c"]
    remember_query(tmp_path, "8", "8" * 64, "g" * 64)  # another fit: its own set
    assert guard_survivors(tmp_path, "8", ["a", "b", "c", "d"]) == []
