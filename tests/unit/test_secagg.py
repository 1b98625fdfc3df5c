"""Secure aggregation: exact sums, dropouts, thresholds, a lying hub, forged shares."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medlab.ledger.keys import Signer
from medlab.privacy.secagg import ring, shamir
from medlab.privacy.secagg.protocol import SecAggError, SecAggHub, SecAggNode, default_threshold


def _parties(tmp: Path, n: int, length: int, session: str = "s1", threshold: int | None = None):  # type: ignore[no-untyped-def]
    names = [f"node_{i:02d}" for i in range(n)]
    tmp.mkdir(parents=True, exist_ok=True)
    signers = {name: Signer.load_or_create(tmp / f"{name}.key") for name in names}
    keys = {name: s.public_pem for name, s in signers.items()}
    t = threshold or default_threshold(n)
    nodes = {name: SecAggNode(name, session, t, length, signers[name], keys.get) for name in names}
    return nodes, SecAggHub(session, t, length)


def _run(
    nodes: dict[str, SecAggNode],
    hub: SecAggHub,
    inputs: dict[str, list[float]],
    drop_after_sharing: set[str] = frozenset(),  # type: ignore[assignment]
    drop_after_masking: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[float]:
    adverts = hub.collect_adverts([n.advertise() for n in nodes.values()])
    shared = hub.route_shares([n.share_keys(adverts) for n in nodes.values()])
    alive = [n for n in nodes.values() if n.name not in drop_after_sharing]
    survivors = hub.collect_masked([n.masked_input(shared[n.name], inputs[n.name]) for n in alive])
    alive = [n for n in alive if n.name not in drop_after_masking]
    signatures = hub.collect_signatures([n.consistency(survivors) for n in alive])
    return hub.unmask([n.unmask(signatures) for n in alive])


def test_the_sum_is_exact_at_the_precision_bound(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nodes, hub = _parties(tmp_path, 5, 20)
    inputs = {name: list(rng.normal(0, 1e6, 20)) for name in nodes}
    inputs["node_00"][0] = 2.0**60  # the largest value allowed
    got = _run(nodes, hub, inputs)
    # Each value is encoded within 2^-41 of itself: the sum within 5 * 2^-41 of the exact
    # sum (math.fsum), and then rounded once to a double.
    for i, value in enumerate(got):
        want = math.fsum(inputs[n][i] for n in nodes)
        assert abs(value - want) <= 5 * 2.0**-41 + abs(want) * 2.0**-52


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=3, max_size=3))
def test_encoding_round_trips_within_the_precision(values: list[float]) -> None:
    decoded = ring.decode_sum(ring.encode(values), 1)
    assert all(abs(a - b) <= 2.0**-41 for a, b in zip(decoded, values, strict=True))


def test_values_beyond_the_bound_are_refused_never_wrapped() -> None:
    with pytest.raises(ring.EncodingError, match="element 1"):
        ring.encode([1.0, 2.0**61])
    with pytest.raises(ring.EncodingError, match="not a finite"):
        ring.encode([float("nan")])
    wrapped = [ring.MODULUS // 2 - 1]  # no 3 in-bound values sum to this
    with pytest.raises(ring.EncodingError, match="overflowed"):
        ring.decode_sum(wrapped, 3)


def test_nodes_may_drop_after_sharing_or_after_masking(tmp_path: Path) -> None:
    nodes, hub = _parties(tmp_path, 7, 4, threshold=4)
    inputs = {name: [float(i), 1.5, -2.0, 1e-6 * i] for i, name in enumerate(nodes)}
    got = _run(
        nodes,
        hub,
        inputs,
        drop_after_sharing={"node_01", "node_05"},
        drop_after_masking={"node_03"},
    )
    counted = [n for n in nodes if n not in {"node_01", "node_05"}]  # node_03's input counts
    want = np.sum([inputs[n] for n in counted], axis=0)
    assert np.allclose(got, want, atol=1e-9)


def test_below_the_threshold_nothing_is_recovered(tmp_path: Path) -> None:
    nodes, hub = _parties(tmp_path, 5, 2, threshold=4)
    inputs = {name: [1.0, 2.0] for name in nodes}
    with pytest.raises(SecAggError, match="need 4"):
        _run(nodes, hub, inputs, drop_after_sharing={"node_00", "node_01"})
    secret = b"\x07" * 32
    shares = shamir.split(secret, 3, [1, 2, 3, 4])
    assert shamir.combine({1: shares[1], 4: shares[4], 2: shares[2]}, 3) == secret
    with pytest.raises(shamir.SharingError):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)


def test_a_hub_that_lies_about_the_survivors_learns_nothing(tmp_path: Path) -> None:
    nodes, hub = _parties(tmp_path, 3, 3, threshold=2)
    inputs = {name: [10.0 * (i + 1)] * 3 for i, name in enumerate(nodes)}
    adverts = hub.collect_adverts([n.advertise() for n in nodes.values()])
    shared = hub.route_shares([n.share_keys(adverts) for n in nodes.values()])
    masked = {n.name: n.masked_input(shared[n.name], inputs[n.name]) for n in nodes.values()}
    hub.collect_masked(list(masked.values()))
    a, b, c = nodes.values()
    # The hub tells a that everyone survived (to get c's self-mask share) and tells b that c
    # dropped (to get c's pairwise key share): with both it could unmask c's input alone.
    sig_a = a.consistency(["node_00", "node_01", "node_02"])
    sig_b = b.consistency(["node_00", "node_01"])
    with pytest.raises(SecAggError, match="aborted"):
        b.unmask({"node_00": sig_a["signature"], "node_01": sig_b["signature"]})
    # a, shown only its own signature over its set, refuses as well: no share leaves.
    with pytest.raises(SecAggError, match="aborted"):
        a.unmask({"node_00": sig_a["signature"], "node_01": sig_b["signature"]})
    # With c's signature over the same set as a's, a reveals self-mask shares only: what
    # unmasks c alone (a share of c's pairwise key) never leaves a node that saw c survive.
    sig_c = c.consistency(["node_00", "node_01", "node_02"])
    revealed = a.unmask({"node_00": sig_a["signature"], "node_02": sig_c["signature"]})
    assert revealed["s"] == {} and set(revealed["b"]) == {"node_00", "node_01", "node_02"}
    with pytest.raises(SecAggError, match="already"):
        a.unmask({"node_00": sig_a["signature"], "node_02": sig_c["signature"]})
    # And a node never signs two different sets in one session.
    with pytest.raises(SecAggError, match="another set"):
        b.consistency(["node_00", "node_01", "node_02"])


def test_the_hub_holds_only_uniform_looking_vectors(tmp_path: Path) -> None:
    nodes, hub = _parties(tmp_path, 3, 400, threshold=2)
    inputs = {name: [0.0] * 400 for name in nodes}  # the most structured input there is
    _run(nodes, hub, inputs)
    data = b"".join(v.to_bytes(16, "little") for y in hub.masked.values() for v in y)
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4  # byte values look uniform
    assert set(hub.__dict__) == {
        "session",
        "threshold",
        "length",
        "adverts",
        "shared",
        "masked",
        "signatures",
    }


def test_forged_or_replayed_shares_are_refused(tmp_path: Path) -> None:
    nodes, hub = _parties(tmp_path, 3, 2, threshold=2)
    adverts = hub.collect_adverts([n.advertise() for n in nodes.values()])
    shared = hub.route_shares([n.share_keys(adverts) for n in nodes.values()])
    a = nodes["node_00"]
    forged = dict(shared["node_00"])
    text = bytearray.fromhex(forged["node_01"])
    text[-1] ^= 1
    forged["node_01"] = text.hex()
    with pytest.raises(SecAggError, match="forged or of another session"):
        a.masked_input(forged, [1.0, 2.0])
    # Shares from another session (same names, new keys) do not open in this one.
    others, other_hub = _parties(tmp_path, 3, 2, session="s2", threshold=2)
    other_adverts = other_hub.collect_adverts([n.advertise() for n in others.values()])
    replayed = other_hub.route_shares([n.share_keys(other_adverts) for n in others.values()])
    with pytest.raises(SecAggError, match="forged or of another session"):
        a.masked_input(replayed["node_00"], [1.0, 2.0])
    # An advertisement not signed by its node is refused.
    bad: list[dict[str, Any]] = [dict(x) for x in adverts]
    bad[1]["s_pk"] = bad[2]["s_pk"]
    fresh, _ = _parties(tmp_path, 3, 2, session="s1", threshold=2)
    with pytest.raises(SecAggError, match="not signed by it"):
        fresh["node_00"].share_keys(bad)


def test_random_inputs_and_dropouts(tmp_path: Path) -> None:
    rng = random.Random(5)
    for trial in range(3):
        n = rng.randint(4, 8)
        nodes, hub = _parties(tmp_path / str(trial), n, 3, threshold=max(2, n // 2 + 1))
        names = list(nodes)
        drops = set(rng.sample(names, n - hub.threshold))
        inputs = {name: [rng.uniform(-1e3, 1e3) for _ in range(3)] for name in names}
        got = _run(nodes, hub, inputs, drop_after_sharing=drops)
        want = np.sum([inputs[x] for x in names if x not in drops], axis=0)
        assert np.allclose(got, want, atol=1e-8)
