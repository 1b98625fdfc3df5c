"""Secure aggregation, round by round: the node's side (:class:`SecAggNode`) and the hub's
(:class:`SecAggHub`), as in Bonawitz et al. (CCS 2017), with the consistency round that makes
it safe against a hub that lies about who dropped out.

0. **Advertise**: each node makes two X25519 key pairs, ``c`` (to encrypt shares to peers)
   and ``s`` (to agree pairwise masks), and signs both public keys with its identity key.
1. **Share keys**: each node checks every advertisement's signature, draws a self-mask seed
   ``b``, splits ``b`` and its ``s`` private key t-of-n among the advertised nodes (Shamir),
   and sends each peer its two shares, encrypted (AES-GCM under the ``c`` agreement, bound
   to the session and both names).
2. **Masked input**: each node sends ``y = x + PRG(b) + sum over peers v of ±PRG(s_uv)``,
   ``+`` when its name sorts before ``v``'s; pairwise masks cancel in the sum.
3. **Consistency**: the hub names the survivors (those who sent ``y``); each node signs that
   set — once per session — and the hub collects the signatures.
4. **Unmask**: each node checks that at least ``threshold`` nodes signed the very set it
   signed (a hub that showed different sets to different nodes cannot gather them), then
   reveals, for each survivor, its share of ``b``, and for each node that dropped after
   sharing keys, its share of ``s`` — never both for one peer, and only once per session.

The hub then rebuilds the survivors' ``b`` and the dropped nodes' ``s`` keys, removes their
masks and decodes the sum. It holds only masked vectors and the sum; fewer than
``threshold`` shares of any secret reveal nothing about it. Peer identity keys come from a
lookup the caller trusts (in medlab, the hub's node registry, whose keys the nodes' and the
hub's transparency logs record).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medlab.ledger.keys import Signer, canonical, verify
from medlab.privacy.secagg import masks, ring, shamir

Keys = Callable[[str], str | None]  # a node's name -> its identity public key (PEM)


class SecAggError(Exception):
    """The round cannot go on safely (too few parties, an inconsistent or forged message);
    nothing is revealed."""


def default_threshold(parties: int) -> int:
    """More than two thirds of the parties (Bonawitz et al.'s bound with an active hub)."""
    return parties * 2 // 3 + 1


def _sign_text(kind: str, body: dict[str, Any]) -> bytes:
    return canonical({"medlab-secagg": kind, **body})


def _x(names: Sequence[str]) -> dict[str, int]:
    """Shamir x coordinate of each party: its 1-based rank by name."""
    return {name: i for i, name in enumerate(sorted(names), start=1)}


@dataclass
class SecAggNode:
    """One node's side of one session. ``signer``: its identity key; ``peers``: the identity
    key of any node by name."""

    name: str
    session: str
    threshold: int
    length: int
    signer: Signer
    peers: Keys
    _c: Any = field(default_factory=masks.new_private, repr=False)
    _s: Any = field(default_factory=masks.new_private, repr=False)
    _b: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _adverts: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _inbox: dict[str, str] = field(default_factory=dict, repr=False)
    _own: dict[str, int] = field(default_factory=dict, repr=False)
    _signed: tuple[str, ...] | None = None
    _unmasked: bool = False

    def state(self) -> dict[str, Any]:
        """Everything the node must keep between rounds (its secrets included: the caller
        stores it where the node's identity key lives)."""
        return {
            "name": self.name,
            "session": self.session,
            "threshold": self.threshold,
            "length": self.length,
            "c": masks.private_bytes(self._c).hex(),
            "s": masks.private_bytes(self._s).hex(),
            "b": self._b.hex(),
            "adverts": self._adverts,
            "inbox": self._inbox,
            "own": {k: str(v) for k, v in self._own.items()},
            "signed": None if self._signed is None else list(self._signed),
            "unmasked": self._unmasked,
        }

    @classmethod
    def restore(cls, state: dict[str, Any], signer: Signer, peers: Keys) -> SecAggNode:
        """The node of :meth:`state`, as it was."""
        node = cls(
            state["name"], state["session"], state["threshold"], state["length"], signer, peers
        )
        node._c = masks.private_from(bytes.fromhex(state["c"]))
        node._s = masks.private_from(bytes.fromhex(state["s"]))
        node._b = bytes.fromhex(state["b"])
        node._adverts = dict(state["adverts"])
        node._inbox = dict(state["inbox"])
        node._own = {k: int(v) for k, v in state["own"].items()}
        node._signed = None if state["signed"] is None else tuple(state["signed"])
        node._unmasked = bool(state["unmasked"])
        return node

    # round 0
    def advertise(self) -> dict[str, str]:
        """The node's two public keys, signed."""
        body = {
            "node": self.name,
            "session": self.session,
            "c_pk": masks.public_bytes(self._c).hex(),
            "s_pk": masks.public_bytes(self._s).hex(),
        }
        return {**body, "signature": self.signer.sign(_sign_text("advertise", body))}

    def _check_advert(self, advert: dict[str, str]) -> None:
        body = {k: advert.get(k, "") for k in ("node", "session", "c_pk", "s_pk")}
        key = self.peers(body["node"])
        if body["session"] != self.session or key is None:
            raise SecAggError(f"an advertisement from {body['node']!r} is not of this session")
        if not verify(key, _sign_text("advertise", body), advert.get("signature", "")):
            raise SecAggError(f"the advertisement of {body['node']} is not signed by it")

    # round 1
    def share_keys(self, adverts: Sequence[dict[str, str]]) -> dict[str, Any]:
        """Check the advertised nodes; encrypt to each its shares of ``b`` and ``s``."""
        if self._adverts:
            raise SecAggError("keys are shared once per session")
        names = [a.get("node", "") for a in adverts]
        if len(set(names)) != len(names) or self.name not in names:
            raise SecAggError("the advertised nodes are repeated or leave this node out")
        if len(names) < self.threshold:
            raise SecAggError(f"{len(names)} nodes advertised; the threshold is {self.threshold}")
        for advert in adverts:
            self._check_advert(advert)
        self._adverts = {a["node"]: dict(a) for a in adverts}
        xs = _x(names)
        b_shares = shamir.split(self._b, self.threshold, list(xs.values()))
        s_shares = shamir.split(masks.private_bytes(self._s), self.threshold, list(xs.values()))
        out = {}
        for peer in names:
            x = xs[peer]
            if peer == self.name:
                self._own = {"b": b_shares[x], "s": s_shares[x]}
                continue
            plain = canonical(
                {
                    "from": self.name,
                    "to": peer,
                    "session": self.session,
                    "b": str(b_shares[x]),
                    "s": str(s_shares[x]),
                }
            )
            out[peer] = self._encrypt(peer, plain)
        return {"node": self.name, "session": self.session, "ciphertexts": out}

    def _aead(self, peer: str) -> AESGCM:
        c_pk = bytes.fromhex(self._adverts[peer]["c_pk"])
        return AESGCM(masks.agree(self._c, c_pk, b"medlab-secagg-enc|" + self.session.encode()))

    def _bound(self, sender: str, receiver: str) -> bytes:
        return f"{self.session}|{sender}|{receiver}".encode()

    def _encrypt(self, peer: str, plain: bytes) -> str:
        nonce = os.urandom(12)
        sealed = self._aead(peer).encrypt(nonce, plain, self._bound(self.name, peer))
        return (nonce + sealed).hex()

    def _decrypt(self, peer: str, text: str) -> dict[str, Any]:
        try:
            data = bytes.fromhex(text)
            plain = self._aead(peer).decrypt(data[:12], data[12:], self._bound(peer, self.name))
        except (ValueError, InvalidTag, KeyError):
            raise SecAggError(f"the shares from {peer} are forged or of another session") from None
        found: dict[str, Any] = json.loads(plain)
        if (found.get("from"), found.get("to"), found.get("session")) != (
            peer,
            self.name,
            self.session,
        ):
            raise SecAggError(f"the shares from {peer} are not addressed to this node")
        return found

    # round 2
    def masked_input(self, ciphertexts: dict[str, str], values: Sequence[float]) -> dict[str, Any]:
        """Keep the shares addressed to this node; send the masked vector."""
        if not self._adverts or self._inbox:
            raise SecAggError("the masked input follows the key sharing, once")
        if len(values) != self.length:
            raise SecAggError(f"a vector of {len(values)} values; this session sums {self.length}")
        senders = set(ciphertexts) | {self.name}
        if not senders <= set(self._adverts) or len(senders) < self.threshold:
            raise SecAggError("too few nodes shared their keys, or unknown ones did")
        for peer, text in ciphertexts.items():
            self._decrypt(peer, text)  # refuse a forged or replayed share now
        self._inbox = dict(ciphertexts)
        y = ring.add(ring.encode(values), masks.expand(self._b, self.length))
        for peer in sorted(senders - {self.name}):
            mask = masks.expand(self._pairwise(peer), self.length)
            y = ring.add(y, mask) if self.name < peer else ring.subtract(y, mask)
        return {"node": self.name, "session": self.session, "y": [format(v, "x") for v in y]}

    def _pairwise(self, peer: str) -> bytes:
        s_pk = bytes.fromhex(self._adverts[peer]["s_pk"])
        return masks.agree(self._s, s_pk, b"medlab-secagg-mask|" + self.session.encode())

    # round 3
    def consistency(self, survivors: Sequence[str]) -> dict[str, str]:
        """Sign the set of survivors the hub names (one set per session)."""
        named = tuple(sorted(set(survivors)))
        if len(named) != len(survivors):
            raise SecAggError("the survivors are repeated")
        if self._signed is not None and self._signed != named:
            raise SecAggError("the hub named another set of survivors before")
        if self.name not in named or not set(named) <= set(self._inbox) | {self.name}:
            raise SecAggError("the survivors are not among the nodes that shared keys")
        if len(named) < self.threshold:
            raise SecAggError(f"{len(named)} survivors; the threshold is {self.threshold}")
        self._signed = named
        body = {"session": self.session, "survivors": list(named)}
        return {"node": self.name, "signature": self.signer.sign(_sign_text("survivors", body))}

    # round 4
    def unmask(self, signatures: dict[str, str]) -> dict[str, Any]:
        """Given the survivors' signatures over the set this node signed, reveal the shares
        the sum needs: ``b`` of each survivor, ``s`` of each node that dropped."""
        if self._signed is None:
            raise SecAggError("unmasking follows the consistency round")
        if self._unmasked:
            raise SecAggError("this node has revealed its shares for this session already")
        body = {"session": self.session, "survivors": list(self._signed)}
        text = _sign_text("survivors", body)
        good = [
            node
            for node, signature in signatures.items()
            if node in self._signed
            and (key := self.peers(node)) is not None
            and verify(key, text, signature)
        ]
        if len(good) < self.threshold:
            raise SecAggError(
                f"only {len(good)} nodes signed the survivors this node was shown; the "
                f"threshold is {self.threshold}: the round is aborted"
            )
        self._unmasked = True
        shown = set(self._signed)
        b_shares, s_shares = {}, {}
        for peer in sorted(set(self._inbox) | {self.name}):
            shares = self._own if peer == self.name else self._decrypt(peer, self._inbox[peer])
            if peer in shown:
                b_shares[peer] = str(shares["b"])
            else:
                s_shares[peer] = str(shares["s"])
        return {"node": self.name, "session": self.session, "b": b_shares, "s": s_shares}


@dataclass
class SecAggHub:
    """The hub's side of one session: it routes messages and keeps only the advertisements,
    the encrypted shares it forwards, the masked vectors and, at the end, the sum."""

    session: str
    threshold: int
    length: int
    adverts: dict[str, dict[str, str]] = field(default_factory=dict)
    shared: dict[str, dict[str, str]] = field(default_factory=dict)
    masked: dict[str, list[int]] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)

    def collect_adverts(self, adverts: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """Round 0 done: the advertisements every node receives."""
        self.adverts = {a["node"]: a for a in adverts}
        if len(self.adverts) < self.threshold:
            raise SecAggError(f"{len(self.adverts)} nodes; the threshold is {self.threshold}")
        return list(self.adverts.values())

    def route_shares(self, messages: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
        """Round 1 done: for each node that shared, the ciphertexts addressed to it."""
        self.shared = {m["node"]: dict(m["ciphertexts"]) for m in messages}
        if len(self.shared) < self.threshold:
            raise SecAggError(f"{len(self.shared)} nodes shared keys; need {self.threshold}")
        return {
            receiver: {
                sender: texts[receiver]
                for sender, texts in self.shared.items()
                if sender != receiver and receiver in texts
            }
            for receiver in self.shared
        }

    def collect_masked(self, messages: Sequence[dict[str, Any]]) -> list[str]:
        """Round 2 done: the survivors (who sent a masked vector)."""
        for m in messages:
            y = [int(v, 16) for v in m["y"]]
            if m["node"] not in self.shared or len(y) != self.length:
                raise SecAggError(f"a masked vector from {m['node']} does not fit the session")
            if any(not 0 <= v < ring.MODULUS for v in y):
                raise SecAggError(f"a masked vector from {m['node']} is not in the ring")
            self.masked[m["node"]] = y
        if len(self.masked) < self.threshold:
            raise SecAggError(f"{len(self.masked)} masked vectors; need {self.threshold}")
        return sorted(self.masked)

    def collect_signatures(self, messages: Sequence[dict[str, str]]) -> dict[str, str]:
        """Round 3 done: the survivors' signatures, shown to every node."""
        self.signatures = {m["node"]: m["signature"] for m in messages}
        if len(self.signatures) < self.threshold:
            raise SecAggError(f"{len(self.signatures)} signatures; need {self.threshold}")
        return dict(self.signatures)

    def unmask(self, messages: Sequence[dict[str, Any]]) -> list[float]:
        """Round 4 done: rebuild the survivors' self-masks and the dropped nodes' pairwise
        keys from the shares, remove every mask, and decode the sum."""
        if len(messages) < self.threshold:
            raise SecAggError(f"{len(messages)} nodes revealed shares; need {self.threshold}")
        xs = _x(list(self.adverts))
        survivors = sorted(self.masked)
        dropped = sorted(set(self.shared) - set(self.masked))
        total = [0] * self.length
        for node in survivors:
            total = ring.add(total, self.masked[node])
        for node in survivors:
            shares = {xs[m["node"]]: int(m["b"][node]) for m in messages if node in m["b"]}
            seed = shamir.combine(shares, self.threshold)
            total = ring.subtract(total, masks.expand(seed, self.length))
        for node in dropped:
            shares = {xs[m["node"]]: int(m["s"][node]) for m in messages if node in m["s"]}
            key = masks.private_from(shamir.combine(shares, self.threshold))
            for peer in survivors:
                s_pk = bytes.fromhex(self.adverts[peer]["s_pk"])
                seed = masks.agree(key, s_pk, b"medlab-secagg-mask|" + self.session.encode())
                mask = masks.expand(seed, self.length)
                # The survivor added +mask if its name sorts first, else -mask: undo it.
                total = ring.subtract(total, mask) if peer < node else ring.add(total, mask)
        return ring.decode_sum(total, len(survivors))
