"""Signed results and evidence bundles that an auditor verifies offline.

A study run leaves in its output folder ``spec.json`` (the validated spec), ``results.json``
and ``evidence.json``: every released payload with its node's signed statement
(spec hash, snapshot fingerprint, code version, policy hash, result hash) and that
statement's index in the node's log; the hub's signed statement over the combined result and
its index in the hub's log; the public keys; the data quality summary per node; the
environment. ``export_bundle`` packs these with the log entries, their inclusion proofs and
signed tree heads into a zip; ``verify_bundle`` checks everything in it without trusting
anyone but the keys.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.errors import UsageError
from medlab.ledger import merkle
from medlab.ledger.keys import canonical, key_id, verify, verify_json
from medlab.ledger.log import TransparencyLog, key_at, record_message
from medlab.ledger.parties import Party, digest

PACKAGES = (
    "medlab",
    "duckdb",
    "numpy",
    "pandas",
    "scipy",
    "statsmodels",
    "lifelines",
    "scikit-learn",
    "opendp",
    "cryptography",
    "sqlglot",
    "pydantic",
)


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the packages that computed the result."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), **versions}


def sign_release(party: Party, payload: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The node signs its released payload (``base``: spec hash, fingerprint, code version,
    policy hash) and logs the signed statement."""
    statement = {**base, "result_hash": digest(payload)}
    signed = party.signer.sign_json(statement)
    index = party.log("result_released", statement=statement, signature=signed["signature"])
    return {"payload": payload, "signed": signed, "log_index": index}


def sign_combined(
    hub: Party,
    nodes: dict[str, dict[str, Any]],
    results: dict[str, Any],
    base: dict[str, Any],
    releases: list[dict[str, Any]],
    quality: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """The hub signs the combined result (and the node statements it combined) and logs it;
    returns the study's evidence record (``evidence.json``). ``nodes``: per site its
    ``key_id``, ``public_key`` and either ``log_dir`` (a log the export reads where it lies)
    or ``log`` (the entries and proofs a federated node published, see :func:`log_part`)."""
    statement = {
        **base,
        "result_hash": digest(results),
        "node_statements": [digest(r["signed"]) for r in releases],
    }
    hub_signed = hub.signer.sign_json(statement)
    index = hub.log("result_combined", statement=statement, signature=hub_signed["signature"])
    return {
        "hub": {
            "key_id": hub.signer.key_id,
            "public_key": hub.signer.public_pem,
            "statement": hub_signed,
            "log_index": index,
            "log_dir": str(hub.log_dir.resolve()),
        },
        "nodes": nodes,
        "releases": releases,
        "dq": quality,
        "environment": environment(),
    }


def spec_digest(spec: Any) -> str:
    """The study spec hash as :meth:`StudySpec.digest` computes it, from its JSON form."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# -- export ---------------------------------------------------------------------------------


def log_part(party_name: str, log_dir: Path, indices: list[int]) -> dict[str, Any]:
    """Entries with their record signatures and inclusion proofs against the newest signed
    tree head of one log, and every key rotation in it (so a verifier can follow the keys)."""
    if not (log_dir / "public.pem").exists():
        raise UsageError(f"{log_dir}: the log named in evidence.json is not here")
    with TransparencyLog(log_dir, None) as log:
        head = log.heads()[-1]
        size = head["signed"]["size"]
        rotations = [i for i in range(size) if b'"key_rotated"' in log.entry(i)]

        def item(i: int) -> dict[str, Any]:
            return {
                "index": i,
                "entry": log.entry(i).decode(),
                "record_signature": base64.b64encode(log.record_signature(i)).decode(),
                "proof": [p.hex() for p in log.inclusion_proof(i, size)],
            }

        return {
            "party": party_name,
            "genesis_public_key": log.genesis_key(),
            "tree_head": head,
            "rotations": [item(i) for i in rotations],
            "entries": [item(i) for i in sorted(set(indices))],
        }


def export_bundle(out_dir: Path, bundle: Path) -> dict[str, Any]:
    """Pack a study run's evidence (``out_dir``) into ``bundle`` (zip); returns the manifest."""
    try:
        evidence = json.loads((out_dir / "evidence.json").read_text())
        results = (out_dir / "results.json").read_bytes()
        spec = (out_dir / "spec.json").read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"{out_dir}: not the output folder of a medlab study run ({exc})"
        ) from None
    hub = evidence["hub"]
    if "log" in hub:  # published by a hub that the results were fetched from
        logs = [hub["log"]]
    else:
        logs = [log_part("hub", Path(hub["log_dir"]), [hub["log_index"]])]
    for site, info in sorted(evidence["nodes"].items()):
        indices = [r["log_index"] for r in evidence["releases"] if r["payload"]["site"] == site]
        if "log" in info:  # published by a federated node with its releases
            logs.append(info["log"])
        else:
            logs.append(log_part(site, Path(info["log_dir"]), indices))
    files = {
        "spec.json": spec,
        "results.json": results,
        "evidence.json": canonical(evidence),
        "logs.json": canonical(logs),
        "dq.json": canonical(evidence["dq"]),
        "environment.json": canonical(evidence["environment"]),
    }
    manifest = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in files.items()}
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("manifest.json", canonical(manifest))
    return manifest


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome."""

    name: str
    ok: bool
    detail: str = ""


MAX_MEMBER = 1 << 30  # a bundle's files are JSON: a gigabyte is already absurd


def verify_bundle(bundle: Path, trusted: set[str] | None = None) -> list[Check]:
    """Every check of an evidence bundle, offline. ``trusted``: key ids the auditor knows
    (pinned); when given, the hub's and every node's key must be among them."""
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str = "") -> bool:
        checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    try:
        with zipfile.ZipFile(bundle) as archive:
            too_big = [i.filename for i in archive.infolist() if i.file_size > MAX_MEMBER]
            if too_big or len(archive.infolist()) > 64:
                return [Check("bundle readable", False, "not a medlab bundle (its size)")]
            files = {name: archive.read(name) for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return [Check("bundle readable", False, str(exc))]
    try:
        manifest = json.loads(files["manifest.json"])
        spec = json.loads(files["spec.json"])
        results = json.loads(files["results.json"])
        evidence = json.loads(files["evidence.json"])
        logs = json.loads(files["logs.json"])
    except (KeyError, json.JSONDecodeError) as exc:
        return [Check("bundle complete", False, f"missing or unreadable: {exc}")]
    for name, expected in sorted(manifest.items()):
        actual = "sha256:" + hashlib.sha256(files.get(name, b"")).hexdigest()
        check(f"file {name} matches the manifest", actual == expected)
    check(
        "spec hash: spec.json is the spec the results name",
        spec_digest(spec) == results.get("spec_hash"),
        f"spec.json hashes to {spec_digest(spec)}, results name {results.get('spec_hash')}",
    )
    hub = evidence["hub"]
    statement = hub["statement"]
    check(
        "hub key: the statement names the bundled hub key",
        statement.get("key_id") == key_id(hub["public_key"]) == hub.get("key_id"),
    )
    check("hub signature over the combined result", verify_json(hub["public_key"], statement))
    signed = statement["signed"]
    check(
        "result hash: results.json is the result the hub signed",
        digest(results) == signed.get("result_hash"),
        f"results.json hashes to {digest(results)}, the hub signed {signed.get('result_hash')}",
    )
    policy = results.get("policy", {}).get("digest")
    check(
        "the hub statement names the spec and policy",
        signed.get("spec_hash") == results.get("spec_hash") and signed.get("policy_hash") == policy,
    )
    fingerprints = {n["node"]: n["fingerprint"] for n in results.get("nodes", [])}
    node_policies = {
        n["node"]: (n.get("policy") or {}).get("digest") for n in results.get("nodes", [])
    }
    statements = []
    for release in evidence["releases"]:
        payload, node_signed = release["payload"], release["signed"]
        site = payload["site"]
        node = evidence["nodes"].get(site, {})
        public = node.get("public_key", "")
        label = f"{site} / {payload['analysis']}"
        check(f"{label}: node signature", verify_json(public, node_signed))
        body = node_signed.get("signed", {})
        check(
            f"{label}: payload is the one the node signed",
            digest(payload) == body.get("result_hash"),
        )
        check(
            f"{label}: statement names the spec, snapshot, code and policy of the results",
            body.get("spec_hash") == results.get("spec_hash")
            and body.get("fingerprint") == fingerprints.get(site)
            and body.get("code_version") == results.get("medlab_version")
            and body.get("policy_hash") == node_policies.get(site),
        )
        statements.append(digest(node_signed))
    check(
        "the hub signed exactly these node statements",
        sorted(statements) == sorted(signed.get("node_statements", [])),
    )
    checks += _verify_logs(logs, evidence)
    if trusted:
        check("hub key is one the auditor trusts", key_id(hub["public_key"]) in trusted)
        for site, info in sorted(evidence["nodes"].items()):
            check(f"{site} key is one the auditor trusts", key_id(info["public_key"]) in trusted)
    environment = json.loads(files.get("environment.json", b"{}"))
    check(
        "environment: the code version that computed the result",
        environment.get("medlab") == results.get("medlab_version"),
    )
    return checks


def _key_chain(part: dict[str, Any]) -> tuple[list[tuple[int, str]], list[Check]]:
    """The keys of one log from its genesis key through its rotations, each rotation checked
    (record signature by the key it hands over from, inclusion in the tree head)."""
    party = part["party"]
    head = part["tree_head"]["signed"]
    root, size = bytes.fromhex(head["root"]), head["size"]
    active = [(0, part["genesis_public_key"])]
    checks = []
    for item in part.get("rotations", []):
        entry = item["entry"].encode()
        current = active[-1][1]
        ok = _record_ok(item, current, root, size)
        rotation = json.loads(entry)
        ok = ok and rotation.get("old_key_id") == key_id(current)
        ok = ok and key_id(rotation.get("new_public_key", "")) == rotation.get("new_key_id")
        checks.append(Check(f"{party} log: key rotation at entry {item['index']}", ok))
        if ok:
            active.append((item["index"] + 1, rotation["new_public_key"]))
    return active, checks


def _record_ok(item: dict[str, Any], public: str, root: bytes, size: int) -> bool:
    entry = item["entry"].encode()
    leaf = merkle.leaf_hash(entry)
    proof = [bytes.fromhex(p) for p in item["proof"]]
    return merkle.verify_inclusion(leaf, item["index"], size, proof, root) and verify(
        public, record_message(item["index"], leaf), item["record_signature"]
    )


def _verify_logs(logs: list[dict[str, Any]], evidence: dict[str, Any]) -> list[Check]:
    checks = []
    keys = {"hub": evidence["hub"]["public_key"]}
    keys.update({site: info["public_key"] for site, info in evidence["nodes"].items()})
    expected: dict[str, set[str]] = {
        "hub": {canonical(evidence["hub"]["statement"]["signed"]).decode()}
    }
    for release in evidence["releases"]:
        expected.setdefault(release["payload"]["site"], set()).add(
            canonical(release["signed"]["signed"]).decode()
        )
    for part in logs:
        party = part["party"]
        active, rotation_checks = _key_chain(part)
        checks += rotation_checks
        chain = {key_id(k) for _, k in active}
        checks.append(
            Check(
                f"{party} log: signed by the key that signed the statements (or its successors)",
                key_id(keys.get(party, "")) in chain if keys.get(party) else False,
            )
        )
        head = part["tree_head"]
        size = head["signed"]["size"]
        checks.append(
            Check(f"{party} log: signed tree head", verify_json(key_at(active, size), head))
        )
        root = bytes.fromhex(head["signed"]["root"])
        logged = set()
        for item in part["entries"]:
            signer = key_at(active, item["index"] + 1)
            checks.append(
                Check(
                    f"{party} log: entry {item['index']} signed and included in the tree head",
                    _record_ok(item, signer, root, size),
                )
            )
            content = json.loads(item["entry"])
            if "statement" in content:
                logged.add(canonical(content["statement"]).decode())
        checks.append(
            Check(
                f"{party} log: holds every statement it signed",
                expected.get(party, set()) <= logged,
            )
        )
    return checks


def bundle_keys(bundle: Path) -> dict[str, str]:
    """The hub's and each node's key id, as the bundle names them."""
    with zipfile.ZipFile(bundle) as archive:
        evidence = json.loads(archive.read("evidence.json"))
    keys = {"hub": key_id(evidence["hub"]["public_key"])}
    keys.update({site: key_id(info["public_key"]) for site, info in evidence["nodes"].items()})
    return keys


def describe(checks: list[Check]) -> str:
    """One line per check with ✓ or ✗."""
    return "\n".join(
        f"{'✓' if c.ok else '✗'} {c.name}{'' if c.ok or not c.detail else ': ' + c.detail}"
        for c in checks
    )
