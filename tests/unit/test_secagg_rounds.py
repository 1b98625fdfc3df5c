"""One secure-aggregation session spread over task rounds: each node's side stored between
rounds (mode 0600), the hub's side rebuilt from the messages alone."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from medlab.ledger.keys import Signer
from medlab.privacy.secagg import rounds
from medlab.privacy.secagg.protocol import SecAggError

NAMES = ("a", "b", "c", "d")
VECTORS = {"a": [1.5, -2.0], "b": [0.25, 4.0], "c": [10.0, 0.0], "d": [-3.0, 1.0]}


def _parties(tmp_path: Path) -> tuple[dict[str, Signer], dict[str, rounds.Sessions]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    signers = {n: Signer.load_or_create(tmp_path / f"{n}.key") for n in NAMES}
    return signers, {n: rounds.Sessions(tmp_path / f"{n}.secagg") for n in NAMES}


def _run(
    tmp_path: Path, drop_after: dict[str, str] | None = None, threshold: int = 3
) -> tuple[list[float] | dict[str, Any], list[str]]:
    """Every phase over every node that has not dropped; ``drop_after``: node -> the last
    phase it answers."""
    signers, sessions = _parties(tmp_path)
    keys = {n: s.public_pem for n, s in signers.items()}
    asked: dict[str, Any] = rounds.request("s1.1", "advertise", threshold, 2)
    messages: dict[str, list[dict[str, Any]]] = {}
    gone: set[str] = set()
    for phase in rounds.PHASES:
        assert asked["phase"] == phase
        answers = []
        for name in NAMES:
            if name in gone:
                continue
            answers.append(
                rounds.node_round(
                    sessions[name], name, signers[name], keys.get, asked, lambda n=name: VECTORS[n]
                )
            )
            if (drop_after or {}).get(name) == phase:
                gone.add(name)
        messages[phase] = answers
        found = rounds.hub_next("s1.1", threshold, 2, messages)
        if isinstance(found, list):
            return found, rounds.survivors(messages)
        asked = found
    raise AssertionError("the session did not end")


def test_the_sum_over_rounds_and_a_dropout_after_masking(tmp_path: Path) -> None:
    total, members = _run(tmp_path / "all")
    assert total == pytest.approx([8.75, 3.0], abs=1e-9) and members == list(NAMES)
    total, members = _run(tmp_path / "drop", {"c": "mask"})
    assert total == pytest.approx([8.75, 3.0], abs=1e-9)  # c's input counts: it was sent
    total, members = _run(tmp_path / "early", {"d": "share"})
    assert total == pytest.approx([11.75, 2.0], abs=1e-9) and members == ["a", "b", "c"]


def test_below_threshold_nothing_is_recovered(tmp_path: Path) -> None:
    with pytest.raises(SecAggError):
        _run(tmp_path, {"c": "mask", "d": "mask"})


def test_the_node_keeps_its_secrets_to_itself_and_refuses_to_replay(tmp_path: Path) -> None:
    signers, sessions = _parties(tmp_path)
    keys = {n: s.public_pem for n, s in signers.items()}
    asked = rounds.request("s2.1", "advertise", 3, 2)
    rounds.node_round(sessions["a"], "a", signers["a"], keys.get, asked, lambda: [0.0, 0.0])
    (stored,) = (tmp_path / "a.secagg").glob("*.json")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a.secagg").stat().st_mode) == 0o700
    with pytest.raises(SecAggError, match="opened at this node before"):
        rounds.node_round(sessions["a"], "a", signers["a"], keys.get, asked, lambda: [0.0, 0.0])
    lowered = rounds.request("s2.1", "share", 2, 2, adverts=[])
    with pytest.raises(SecAggError, match="changed the session's threshold"):
        rounds.node_round(sessions["a"], "a", signers["a"], keys.get, lowered, lambda: [0.0])
    unknown = rounds.request("s3.1", "mask", 3, 2, ciphertexts={})
    with pytest.raises(SecAggError, match="not open at this node"):
        rounds.node_round(sessions["a"], "a", signers["a"], keys.get, unknown, lambda: [0.0])


def test_the_hub_cannot_skip_a_phase() -> None:
    with pytest.raises(SecAggError, match="skip a phase"):
        rounds.hub_next("s4.1", 3, 2, {"advertise": [], "mask": []})
