"""``medlab hub …``, ``medlab node agent | tasks | approve | refuse | console``, ``medlab
study submit | status | fetch``: the federation from the command line, a thin layer over its
modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medlab.cli.output import emit_json, stdout
from medlab.errors import UsageError
from medlab.inputs import read_text

hub_app = typer.Typer(help="The hub: init, serve, onboard nodes and researchers.")

DirArg = Annotated[Path, typer.Argument(help="The hub's directory (key, log, hub.db).")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="A SQLAlchemy URL (default: the one given to hub init, else SQLite DIR/hub.db).",
    ),
]
StoreArg = Annotated[Path, typer.Argument(help="Path of the node store.")]
HubUrl = Annotated[
    str | None, typer.Option("--hub", help="The hub's URL (default $MEDLAB_HUB_URL).")
]
Token = Annotated[str | None, typer.Option("--token", help="Your token (default $MEDLAB_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def _pem(path: Path) -> str:
    return read_text(path, "public key", UsageError)


@hub_app.command("init")
def hub_init(
    directory: DirArg,
    db: DbOpt = None,
    open_: Annotated[
        bool,
        typer.Option(
            "--open",
            help="No governance: any registered researcher's study is dispatched at once "
            "(a single lab's own testing).",
        ),
    ] = False,
    operator: Annotated[
        str, typer.Option("--operator", help="The first operator's name (a governed hub).")
    ] = "operator",
) -> None:
    """Create the hub: its directory, signing key, transparency log and database. A governed
    hub (the default) prints its first operator's token once, alone on the last line."""
    from medlab.federation.hub.service import init_hub

    hub = init_hub(directory, db, "open" if open_ else "authorized")
    stdout.print(
        f"hub ready in {directory} (key {hub.party.signer.key_id}; {hub.mode})", highlight=False
    )
    if hub.governed:
        token = _hub_call(lambda: hub.bootstrap(operator))
        stdout.print(f"operator {operator} added; token (shown once):", highlight=False)
        print(token)


@hub_app.command("serve")
def hub_serve(
    directory: DirArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8400,
    db: DbOpt = None,
) -> None:
    """Serve the hub's API (OpenAPI at /openapi.json) until stopped."""
    import uvicorn

    from medlab.federation.hub.app import create_app
    from medlab.federation.hub.service import Hub

    app = create_app(Hub(directory, db))
    stdout.print(f"hub serving on http://{host}:{port}", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@hub_app.command("add-node")
def hub_add_node(
    directory: DirArg,
    name: Annotated[str, typer.Argument(help="The node's name (its store's name).")],
    key: Annotated[Path, typer.Option("--key", help="The node's public key (medlab node key).")],
    db: DbOpt = None,
    organisation: Annotated[
        str | None, typer.Option("--organisation", help="Its hospital (a governed hub).")
    ] = None,
) -> None:
    """Register a node by its Ed25519 public key (on the hub's own machine, no server)."""
    from medlab.federation.hub.service import Hub

    kid = _hub_call(lambda: Hub(directory, db).add_node(name, _pem(key), organisation))
    stdout.print(f"node {name} added (key {kid})", highlight=False)


@hub_app.command("add-researcher")
def hub_add_researcher(
    directory: DirArg,
    name: Annotated[str, typer.Argument(help="The researcher's name.")],
    key: Annotated[
        Path | None, typer.Option("--key", help="Their public key: submissions must be signed.")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Register a researcher; prints their token once (the hub keeps only its hash)."""
    from medlab.federation.hub.service import Hub

    pem = None if key is None else _pem(key)
    token = _hub_call(lambda: Hub(directory, db).add_researcher(name, pem))
    stdout.print(f"researcher {name} added; token (shown once):", highlight=False)
    print(token)


@hub_app.command("vocabulary")
def hub_vocabulary(
    directory: DirArg,
    sources: Annotated[
        list[Path],
        typer.Argument(help="Folders with CONCEPT.csv and CONCEPT_ANCESTOR.csv (OMOP)."),
    ],
    db: DbOpt = None,
) -> None:
    """Load the vocabulary the study builder searches, the union of the folders' (it
    replaces the one loaded before; a hospital's local concepts, ids from 2,000,000,000,
    are left out)."""
    from medlab.federation.hub import vocabulary
    from medlab.federation.hub.service import Hub

    loaded = vocabulary.load(Hub(directory, db).sessions, sources)
    stdout.print(
        f"vocabulary loaded: {loaded.concepts:,} concepts, {loaded.ancestors:,} ancestry "
        f"pairs ({loaded.local_skipped:,} local concepts left out)",
        highlight=False,
    )


def _hub_call(call: Any) -> Any:
    from medlab.federation.hub.service import HubError

    try:
        return call()
    except HubError as exc:
        raise UsageError(exc.detail) from None


# -- the node's side --------------------------------------------------------------------


def agent(
    store: StoreArg,
    hub: Annotated[str, typer.Option("--hub", help="The hub's URL.")],
    once: Annotated[bool, typer.Option("--once", help="One poll, then what it allows.")] = False,
    hub_key: Annotated[
        Path | None, typer.Option("--hub-key", help="The hub's public key to pin.")
    ] = None,
    wait: Annotated[float, typer.Option("--wait", help="Long-poll seconds.")] = 20.0,
) -> None:
    """Run the node's agent: it only dials out to the hub (no open port).

    It decides on each task under this node's policy, runs it and uploads only released
    payloads."""
    import httpx

    from medlab.federation.node.agent import Agent, HubRefused, HubUnreachable

    pem = None if hub_key is None else _pem(hub_key)
    with httpx.Client(base_url=hub, timeout=wait + 60) as client:
        worker = Agent(store, client, pem, say=lambda text: stdout.print(text, highlight=False))
        stdout.print(f"agent of {store.stem} polling {hub}", highlight=False)
        try:
            worker.run(once=once, wait=wait)
        except HubRefused as exc:
            raise UsageError(f"the hub refused this node: {exc}") from None
        except HubUnreachable as exc:
            raise UsageError(f"the hub did not answer ({exc})") from None


def tasks(
    store: StoreArg,
    as_json: JsonOpt = False,
    show: Annotated[
        str | None, typer.Option("--show", help="One task in full, with what would leave.")
    ] = None,
) -> None:
    """The node's tasks: each with its id, study, state and what it asks (``--json``: each
    in full, with its spec, cohorts in words and what each analysis releases)."""
    from medlab.federation.node.decisions import in_full, summary
    from medlab.federation.node.inbox import Inbox

    inbox = Inbox(store)
    if show is not None:
        task = inbox.get(show)
        shown = in_full(task)
        if as_json:
            emit_json(shown)
            return
        for key in ("task_id", "study", "state", "researcher", "project", "reason"):
            stdout.print(f"{key}: {shown.get(key)}", highlight=False)
        for line in shown["cohorts"] + shown["analyses"]:
            stdout.print(line, highlight=False, soft_wrap=True)
        if shown.get("released") is not None:
            stdout.print("released payload (what would leave):", highlight=False)
            print(json.dumps(shown["released"], indent=2))
        return
    found = inbox.all()
    if as_json:  # each task in full: its spec, cohorts in words, what would leave
        emit_json([in_full(t) | {"spec": t.envelope.get("spec")} for t in found])
        return
    rows = [summary(t) for t in found]
    table = Table("id", "study", "state", "researcher", "project", "analyses")
    for r in rows:
        table.add_row(
            r["task_id"],
            r["study"],
            r["state"],
            r["researcher"],
            r["project"] or "–",
            ", ".join(r["analyses"]),
        )
    stdout.print(table)


def approve(
    store: StoreArg,
    task_id: Annotated[str, typer.Argument(help="The task's id (medlab node tasks).")],
    by: Annotated[str, typer.Option("--by", help="Who approves (logged).")] = "steward",
) -> None:
    """Approve a task waiting for the steward (or its released payload under review)."""
    from medlab.federation.node import decisions

    what = decisions.approve(store, task_id, by)
    stdout.print(f"approved: {task_id} may {what} (the agent goes on)", highlight=False)


def refuse(
    store: StoreArg,
    task_id: Annotated[str, typer.Argument(help="The task's id (medlab node tasks).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (sent to the researcher).")],
    by: Annotated[str, typer.Option("--by", help="Who refuses (logged).")] = "steward",
) -> None:
    """Refuse a waiting task; the reason goes to the researcher."""
    from medlab.federation.node import decisions

    decisions.refuse(store, task_id, reason, by)
    stdout.print(f"refused: {task_id} ({reason})", highlight=False)


def console(
    store: StoreArg,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8766,
    host: Annotated[
        str, typer.Option("--host", help="The loopback address to listen on (only).")
    ] = "127.0.0.1",
    by: Annotated[str, typer.Option("--by", help="Who decides (logged).")] = "steward",
) -> None:
    """Serve the node's local console on 127.0.0.1: the waiting tasks with what they would
    release, approved or refused with a click; the token to sign in is printed once."""
    import os
    import secrets
    import signal
    import sys

    import uvicorn

    from medlab.federation.node.console import console_file, create_console
    from medlab.federation.node.inbox import inbox_path

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(f"--host {host}: the console listens on the loopback address only")
    if not store.exists():
        raise UsageError(f"{store}: no such node store")
    if not inbox_path(store).exists():
        stdout.print(f"{store}: no task received yet (the agent has not run)", highlight=False)
    token = secrets.token_urlsafe(32)
    shown = f"[{host}]" if host == "::1" else host
    url = f"http://{shown}:{port}/"
    app = create_console(store, token, by)
    found = console_file(store)
    found.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    stdout.print(f"node console for {store.name} at {url}", highlight=False)
    stdout.print("sign in with this token (shown once):", highlight=False)
    print(token, flush=True)
    # uvicorn re-raises the stop signal once it has shut down: end here, tidily.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        found.unlink(missing_ok=True)


# -- the researcher's side --------------------------------------------------------------


def _client(hub: str | None, token: str | None) -> Any:
    from medlab.federation.client.sdk import Client

    return Client(hub, token)


def submit(
    spec: Annotated[Path, typer.Argument(help="Study spec (JSON or YAML).")],
    hub: HubUrl = None,
    token: Token = None,
    project: Annotated[str | None, typer.Option("--project", help="The project.")] = None,
    min_sites: Annotated[int, typer.Option("--min-sites", help="Fewest sites.")] = 1,
    deadline: Annotated[
        int, typer.Option("--deadline", help="Seconds the nodes have to answer.")
    ] = 86400,
    key: Annotated[
        Path | None, typer.Option("--key", help="Your private key, to sign the submission.")
    ] = None,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="The most epsilon it may spend at each node.")
    ] = 0.0,
    rho: Annotated[float, typer.Option("--rho", help="The most rho at each node.")] = 0.0,
) -> None:
    """Submit a study to the hub; prints the study id alone on the last line."""
    from medlab.federation.client.sdk import Client
    from medlab.studies.spec import load_spec

    parsed = load_spec(spec)
    client = Client(hub, token, key=key)
    study = client.submit(
        parsed,
        project=project,
        min_sites=min_sites,
        deadline_seconds=deadline,
        epsilon=epsilon,
        rho=rho,
    )
    stdout.print(f"submitted {parsed.name} ({parsed.digest()})", highlight=False, soft_wrap=True)
    print(study.id)


def key(
    path: Annotated[Path, typer.Argument(help="Your private key file (created when missing).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the public key (PEM) here.")
    ] = None,
) -> None:
    """Your signing key as a researcher: give the public key to the hub's operator
    (``hub add-researcher --key``) and sign submissions with ``study submit --key``."""
    from medlab.ledger.keys import Signer

    signer = Signer.load_or_create(path)
    if out is not None:
        out.write_text(signer.public_pem)
    stdout.print(f"key id {signer.key_id}\n{signer.public_pem}", highlight=False)


def status(
    study_id: Annotated[str, typer.Argument(help="The study id.")],
    hub: HubUrl = None,
    token: Token = None,
    as_json: JsonOpt = False,
) -> None:
    """A study's state and each node's task state."""
    found = _client(hub, token).study(study_id).status()
    if as_json:
        emit_json(found.model_dump(mode="json"))
        return
    stdout.print(f"{found.study_id} {found.name}: {found.state}", highlight=False)
    if found.reason:
        stdout.print(found.reason, highlight=False, soft_wrap=True)
    table = Table("node", "task", "state", "reason", "updated")
    for t in found.tasks:
        table.add_row(t.node, t.task_id, t.state, t.reason or "", t.updated_at)
    stdout.print(table)


def fetch(
    study_id: Annotated[str, typer.Argument(help="The study id.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the result files.")],
    hub: HubUrl = None,
    token: Token = None,
) -> None:
    """Fetch a completed study's files: those ``medlab study run`` writes."""
    written = _client(hub, token).study(study_id).fetch(out)
    stdout.print(f"{len(written)} files in {out}", highlight=False)
