"""Every round of one secure-aggregation session in one process (``study run`` over local
stores, tests, benchmarks): the same node and hub code the federation runs across HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medlab.ledger.keys import Signer
from medlab.privacy.secagg.protocol import SecAggHub, SecAggNode, default_threshold


def secure_sum(
    vectors: Mapping[str, Sequence[float]],
    signers: Mapping[str, Signer],
    session: str,
    threshold: int | None = None,
) -> list[float]:
    """The sum of the nodes' vectors, computed by the protocol (the hub's side sees only
    masked vectors)."""
    lengths = {len(v) for v in vectors.values()}
    if len(lengths) != 1:
        raise ValueError("every node sends a vector of the same length")
    (length,) = lengths
    t = threshold or default_threshold(len(vectors))
    keys = {name: signer.public_pem for name, signer in signers.items()}
    nodes = [SecAggNode(name, session, t, length, signers[name], keys.get) for name in vectors]
    hub = SecAggHub(session, t, length)
    adverts = hub.collect_adverts([n.advertise() for n in nodes])
    shared = hub.route_shares([n.share_keys(adverts) for n in nodes])
    survivors = hub.collect_masked([n.masked_input(shared[n.name], vectors[n.name]) for n in nodes])
    signatures = hub.collect_signatures([n.consistency(survivors) for n in nodes])
    return hub.unmask([n.unmask(signatures) for n in nodes])
