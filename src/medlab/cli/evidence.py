"""``medlab evidence export``, ``medlab verify``, ``medlab log verify``, ``medlab node key``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlab.cli.output import emit_json, stdout
from medlab.errors import UsageError, VerificationFailed
from medlab.inputs import read_document, regular_file
from medlab.ledger import evidence, parties
from medlab.ledger.log import verify_log

evidence_app = typer.Typer(help="Evidence bundles: export.", no_args_is_help=True)
log_app = typer.Typer(help="Transparency logs: verify.", no_args_is_help=True)


@evidence_app.command("export")
def export(
    out_dir: Annotated[Path, typer.Argument(help="The output folder of a medlab study run.")],
    bundle: Annotated[Path, typer.Option("--out", help="The bundle to write (zip).")],
) -> None:
    """Pack spec, results, signatures, keys, log entries with inclusion proofs, DQ and
    environment into one zip an auditor can verify offline."""
    manifest = evidence.export_bundle(out_dir, bundle)
    stdout.print(f"wrote {bundle}: {len(manifest)} files", highlight=False)


def verify(
    bundle: Annotated[Path, typer.Argument(help="An evidence bundle (zip).")],
    trust: Annotated[
        list[str] | None,
        typer.Option("--trust", help="A key id you know (hub or node); repeat. Pins the keys."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Check an evidence bundle offline; prints each check with ✓/✗, fails on any ✗. Without
    --trust the bundle's own keys are taken at their word (their ids are printed)."""
    regular_file(bundle, "evidence bundle", UsageError)
    checks = evidence.verify_bundle(bundle, set(trust or []) or None)
    failed = [c for c in checks if not c.ok]
    if as_json:
        emit_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    else:
        stdout.print(evidence.describe(checks), highlight=False)
    if failed:
        raise VerificationFailed(
            f"{bundle}: {len(failed)} of {len(checks)} checks failed; first: {failed[0].name}"
        )
    if not as_json:
        stdout.print(f"{bundle}: all {len(checks)} checks passed", highlight=False)
        if not trust:
            keys = evidence.bundle_keys(bundle)
            stdout.print(
                "keys taken from the bundle (pin them with --trust): "
                + ", ".join(f"{name} {kid}" for name, kid in keys.items()),
                highlight=False,
                soft_wrap=True,
            )


@log_app.command("verify")
def log_verify(
    path: Annotated[Path, typer.Argument(help="A node store, or a log directory (the hub's).")],
    against: Annotated[
        Path | None,
        typer.Option("--against", help="Earlier signed tree heads (JSON object or list) to check."),
    ] = None,
) -> None:
    """Re-check a whole log from its records, and its consistency with earlier tree heads."""
    directory = path if (path / "public.pem").exists() else parties.node(path).log_dir
    if not (directory / "public.pem").exists():
        raise UsageError(f"{path}: no transparency log here or beside it")
    heads = None
    if against is not None:
        loaded = read_document(against, "tree heads", UsageError)
        heads = loaded if isinstance(loaded, list) else [loaded]
    problems = verify_log(directory, heads)
    for problem in problems:
        stdout.print(f"✗ {problem}", highlight=False)
    if problems:
        raise VerificationFailed(f"{directory}: the log does not verify ({len(problems)} problems)")
    stdout.print(f"✓ {directory}: every record, signature and tree head verifies", highlight=False)


def key(
    store: Annotated[Path, typer.Argument(help="Path of the node store.")],
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="Replace the key; the log records the hand-over."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the public key (PEM) here.")
    ] = None,
) -> None:
    """The node's public signing key and its id (the key is created on first use)."""
    party = parties.node(store)
    if rotate:
        old, new = party.rotate()
        stdout.print(f"rotated: {old} → {new} (logged, signed by the old key)", highlight=False)
    signer = party.signer
    if out is not None:
        out.write_text(signer.public_pem)
    if as_json:
        emit_json({"key_id": signer.key_id, "public_key": signer.public_pem})
        return
    stdout.print(f"key id {signer.key_id}\n{signer.public_pem}", highlight=False)
