"""The federation over real HTTP: a hub process and three node-agent processes on 127.0.0.1.

Each party is its own ``medlab`` process. The tests submit through the CLI (the client over
HTTP), approve through the node's CLI, kill processes with SIGKILL mid-work, forge requests,
and inspect everything the hub stored. The hub is on its SQLite file; the tests of what
the hub's database must hold through a run, a crash and an attack (``@BACKENDS``) run again
with the hub on a fresh database of a real PostgreSQL server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from tests import federation as fed

from medlab.cdm.store import open_store, store_lock
from medlab.cli.main import main
from medlab.federation import launch
from medlab.federation.common import auth
from medlab.federation.hub import db as hub_db
from medlab.federation.node.inbox import Inbox
from medlab.ledger import parties
from medlab.ledger.keys import Signer
from medlab.ledger.log import TransparencyLog
from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec


class Lab:
    """A hub (on ``database``, a SQLAlchemy URL; None: its SQLite file) and its nodes as
    processes (stopped at the end). The hub's database is given to ``hub init`` only: every
    later command finds it recorded in the hub's directory."""

    def __init__(self, root: Path, stores: list[Path], database: str | None = None) -> None:
        self.root, self.stores = root, stores
        self.hub_dir = root / "hub"
        self.database = database or hub_db.default_url(self.hub_dir)
        self.port = launch.free_port()
        self.url = f"http://{launch.LOOPBACK}:{self.port}"
        extra = [] if database is None else ["--db", database]
        assert main(["hub", "init", str(self.hub_dir), "--open", *extra]) == 0
        for store in stores:
            pem = root / f"{store.stem}.pem"
            assert main(["node", "key", str(store), "--out", str(pem)]) == 0
            assert main(["hub", "add-node", str(self.hub_dir), store.stem, "--key", str(pem)]) == 0
        self.hub: Any = None
        self.agents: dict[str, Any] = {}
        self.http = httpx.Client(base_url=self.url, timeout=60)  # one, for every poll

    def token(self, capsys: pytest.CaptureFixture[str], name: str = "ana") -> str:
        capsys.readouterr()
        assert main(["hub", "add-researcher", str(self.hub_dir), name]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    def start_hub(self) -> None:
        self.hub = launch.start_hub(self.hub_dir, self.port, self.root / "hub.log")

    def everything_stored(self) -> str:
        """Every value of every row of every table of the hub's database, as text."""
        engine = sa.create_engine(self.database)
        try:
            tables = sa.MetaData()
            tables.reflect(engine)
            parts = []
            with engine.connect() as connection:
                for table in tables.sorted_tables:
                    for row in connection.execute(sa.select(table)):
                        parts += [
                            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                            for v in row
                        ]
            return "\n".join(parts)
        finally:
            engine.dispose()

    def start_agent(self, store: Path) -> None:
        log = self.root / f"{store.stem}.agent.log"
        self.agents[store.stem] = launch.start_agent(store, self.url, log, wait=1.0)

    def stop(self) -> None:
        self.http.close()
        for process in [*self.agents.values(), self.hub]:
            if process is not None:
                launch.stop(process)


@pytest.fixture(params=["sqlite"])
def lab(request: pytest.FixtureRequest, synth_small: Path, tmp_path: Path) -> Iterator[Lab]:
    stores = fed.copy_sites(synth_small, tmp_path / "nodes")
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    found = Lab(tmp_path, stores, url)
    try:
        yield found
    finally:
        found.stop()


def _submit(
    capsys: pytest.CaptureFixture[str], lab: Lab, token: str, spec: dict, *extra: str
) -> str:
    path = lab.root / f"{spec['name'].replace(' ', '_')}.json"
    path.write_text(json.dumps(spec))
    capsys.readouterr()
    code = main(["study", "submit", str(path), "--hub", lab.url, "--token", token, *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return out.strip().splitlines()[-1]


def _status(lab: Lab, token: str, study: str) -> dict[str, Any]:
    response = lab.http.get(
        f"/api/v1/studies/{study}", headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _until(lab: Lab, token: str, study: str, done: Any, timeout: float = 180) -> dict[str, Any]:
    until = time.monotonic() + timeout
    while True:
        found = _status(lab, token, study)
        if done(found):
            return found
        assert time.monotonic() < until, found
        time.sleep(0.2)


def _listening_sockets(pid: int) -> int:
    """How many listening TCP sockets the process holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening += 1
    return listening


BACKENDS = pytest.mark.parametrize("lab", ["sqlite", "postgresql"], indirect=True)


@BACKENDS
def test_a_study_over_http_equals_the_single_process_run(
    lab: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b, c = lab.stores
    fed.federation_policy(a, approval="none")
    fed.federation_policy(b, approval="none")
    fed.federation_policy(c, approval="each_task")
    lab.start_hub()
    token = lab.token(capsys)
    for store in lab.stores:
        lab.start_agent(store)
    study = _submit(capsys, lab, token, fed.spec(), "--min-sites", "3")
    waiting = _until(
        lab, token, study, lambda s: any(t["state"] == "awaiting_approval" for t in s["tasks"])
    )
    assert {t["node"]: t["state"] for t in waiting["tasks"]}["hospital_c"] == "awaiting_approval"
    # The steward sees the task with its id, and approves it through the node's CLI.
    capsys.readouterr()
    assert main(["node", "tasks", str(c), "--json"]) == 0
    (task,) = json.loads(capsys.readouterr().out)
    assert task["state"] == "awaiting_approval" and task["study"] == "federated apixaban"
    assert main(["node", "approve", str(c), task["task_id"], "--by", "steward c"]) == 0
    for pid in [p.pid for p in lab.agents.values()]:
        assert _listening_sockets(pid) == 0  # the agents only dial out
    done = _until(lab, token, study, lambda s: s["state"] != "running")
    assert done["state"] == "completed", done
    out = tmp_path / "fetched"
    assert (
        main(["study", "fetch", study, "--hub", lab.url, "--token", token, "--out", str(out)]) == 0
    )
    fetched = json.loads((out / "results.json").read_text())
    run_study(
        StudySpec.model_validate(fed.spec()), lab.stores, tmp_path / "local", hub_dir=tmp_path / "h"
    )
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    assert fetched["analyses"] == local["analyses"]
    bundle = tmp_path / "bundle.zip"
    assert main(["evidence", "export", str(out), "--out", str(bundle)]) == 0
    assert main(["verify", str(bundle)]) == 0
    # Nothing the hub stored holds a person: no pseudonym of any node appears in it.
    persons: set[str] = set()
    for store in lab.stores:
        with open_store(store, read_only=True) as con:
            persons |= {str(r[0]) for r in con.execute("SELECT person_id FROM person").fetchall()}
    stored = lab.everything_stored()
    assert "federated apixaban" in stored  # the reading reads the hub's database
    tokens = set(stored.replace('"', " ").replace(",", " ").replace(":", " ").split())
    assert persons and not (persons & tokens)


def test_refusal_and_quorum_over_http(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = lab.stores
    fed.federation_policy(a, approval="none")
    fed.federation_policy(b, approval="none")
    from medlab.privacy.node_policy import set_policy
    from medlab.privacy.policy import parse_policy

    rules = {"version": "no-pathways", "federation": {"approval": "none"}}
    rules["allowed_analyses"] = ["incidence", "characterization", "comparative", "feasibility"]
    set_policy(c, parse_policy(rules))
    lab.start_hub()
    token = lab.token(capsys)
    for store in lab.stores:
        lab.start_agent(store)
    spec = {
        "name": "pathways",
        "cohorts": fed.spec()["cohorts"][:1],
        "analyses": [
            {"type": "utilization", "name": "lines", "cohort": 1, "drugs": [fed.APIXABAN]}
        ],
    }
    quorum = _submit(capsys, lab, token, spec, "--min-sites", "2")
    spec["name"] = "pathways everywhere"
    everywhere = _submit(capsys, lab, token, spec, "--min-sites", "3")
    done = _until(lab, token, quorum, lambda s: s["state"] != "running")
    assert done["state"] == "completed"
    refused = {t["node"]: t for t in done["tasks"]}["hospital_c"]
    assert refused["state"] == "refused"
    assert refused["reason"] == "analysis type utilization not allowed at this node"
    failed = _until(lab, token, everywhere, lambda s: s["state"] != "running")
    assert failed["state"] == "failed" and failed["files"] == []
    assert "quorum not reached: answered 2 of 3" in failed["reason"]


@BACKENDS
def test_killed_node_and_hub_lose_nothing(
    lab: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = lab.stores[0]
    fed.federation_policy(a, approval="each_task")
    lab.start_hub()
    token = lab.token(capsys)
    study = _submit(capsys, lab, token, fed.spec(), "--min-sites", "1")
    # The hub is killed with the task pending: after a restart the task is still there.
    launch.stop(lab.hub, kill=True)
    lab.start_hub()
    lab.start_agent(a)

    def state_of_a(s: dict[str, Any]) -> str:
        return str({t["node"]: t["state"] for t in s["tasks"]}["hospital_a"])

    _until(lab, token, study, lambda s: state_of_a(s) == "awaiting_approval")
    # Holding the store, the test makes sure the agent is inside its task when it dies:
    # approved, it reports "running" and then waits for the store.
    with store_lock(a):
        (task,) = Inbox(a).all()
        assert main(["node", "approve", str(a), task.task_id]) == 0
        _until(lab, token, study, lambda s: state_of_a(s) == "running")
        launch.stop(lab.agents["hospital_a"], kill=True)  # mid-task
    assert [t.state for t in Inbox(a).all()] == ["running"]
    lab.start_agent(a)
    for store in lab.stores[1:]:
        fed.federation_policy(store, approval="none")
        lab.start_agent(store)
    done = _until(lab, token, study, lambda s: s["state"] != "running")
    assert done["state"] == "completed", done
    launch.stop(lab.hub, kill=True)
    lab.start_hub()
    again = _status(lab, token, study)
    assert again["state"] == "completed" and "results.json" in again["files"]
    assert again["tasks"] == done["tasks"]


@BACKENDS
def test_forged_requests_are_refused_and_logged(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    a = lab.stores[0]
    lab.start_hub()
    token = lab.token(capsys)
    signer = parties.node(a).signer
    target = "/api/v1/node/tasks?wait=0"

    def get(headers: dict[str, str]) -> int:
        return lab.http.get(target, headers=headers).status_code

    headers = auth.sign_request(signer, "hospital_a", "GET", target, b"")
    assert get(headers) == 200
    assert get(headers) == 403  # replayed: the nonce was seen
    stranger = Signer.load_or_create(lab.root / "stranger.key")
    assert get(auth.sign_request(stranger, "hospital_a", "GET", target, b"")) == 403
    assert get(auth.sign_request(stranger, "nobody", "GET", target, b"")) == 401
    body = json.dumps({"state": "delivered"}).encode()
    report = "/api/v1/node/tasks/tk_0"
    signed = auth.sign_request(signer, "hospital_a", "POST", report, body)
    changed = body.replace(b"delivered", b"completed")
    response = lab.http.post(report, content=changed, headers=signed)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    wrong = lab.http.get("/api/v1/studies/st_x", headers={"authorization": "Bearer no"})
    assert wrong.status_code == 401 and token not in wrong.text
    launch.stop(lab.hub)
    with TransparencyLog(lab.hub_dir / "ledger", None) as log:
        events = [json.loads(log.entry(i)) for i in range(log.size)]
    reasons = [e.get("reason") for e in events if e["type"] == "request_refused"]
    assert "a replayed request (nonce seen before)" in reasons
    assert "unknown node" in reasons and "unknown token" in reasons
    assert reasons.count("the signature does not verify") == 2


def test_pooled_models_survive_a_node_killed_after_masking(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three agents fit a logistic and a site-stratified Cox model on secure sums; one is
    killed once it has sent its masked input. The study completes on the other two, each
    model equal to the pooled fit over the nodes of its last sums, and the hub's database
    holds no site's own contribution (only masked vectors and sums)."""
    from medlab.analyses.federated import model as pooled
    from medlab.privacy.node_policy import set_policy
    from medlab.privacy.policy import parse_policy
    from medlab.privacy.secagg import ring

    a, b, _ = lab.stores
    loose = {
        "version": "small-sites",
        "min_cell_count": 3,
        "min_events_per_parameter": 2,
        "precision": "none",
        "federation": {"approval": "none"},
    }
    for store in lab.stores:
        set_policy(store, parse_policy(loose))
    population = {"first_exposure_only": True, "risk_window_start": 1, "risk_window_end": 0}
    settings = {"population": population, "covariates": ["age"], "round_timeout_s": 4}
    spec = {
        "name": "pooled over http",
        "cohorts": fed.spec()["cohorts"],
        "analyses": [
            {
                "type": "federated_model",
                "name": name,
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {**settings, "model": model},
            }
            for name, model in (("logit", "logistic"), ("cox", "cox"))
        ],
    }
    lab.start_hub()
    token = lab.token(capsys)
    for store in lab.stores:
        lab.start_agent(store)
    study = _submit(capsys, lab, token, spec, "--min-sites", "2")

    def masked_by_c(s: dict[str, Any]) -> bool:  # round 4: session 1's masked inputs
        return any(
            t["node"] == "hospital_c" and t["round"] == 4 and t["state"] == "completed"
            for t in s["tasks"]
        )

    _until(lab, token, study, masked_by_c, timeout=120)
    launch.stop(lab.agents.pop("hospital_c"), kill=True)
    done = _until(lab, token, study, lambda s: s["state"] != "running", timeout=300)
    assert done["state"] == "completed", done
    results = json.loads(
        httpx.get(
            f"{lab.url}/api/v1/studies/{study}/files/results.json",
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
        ).text
    )
    analyses = {x["name"]: x for x in results["analyses"]}
    parsed = StudySpec.model_validate(spec)
    for analysis in parsed.analyses:
        found = analyses[analysis.name]
        assert found["converged"] and found["sites"] == ["hospital_a", "hospital_b"], found
        reference = fed.pooled_reference([a, b], analysis.settings).params  # type: ignore[union-attr]
        got = [np.log(t["estimate"]) for t in found["terms"]]
        assert np.allclose(got, reference, atol=1e-6), (got, reference)
    # The hub stored masked vectors: none of them is a node's own contribution vector.
    stored = lab.everything_stored()
    assert '"phase": "mask"' in stored or "'phase': 'mask'" in stored
    with open_store(a, read_only=True) as con:
        own = pooled.contribution(
            pooled.design(con, 1, 2, 3, parsed.analyses[0].settings),  # type: ignore[union-attr]
            parsed.analyses[0].settings,  # type: ignore[union-attr]
            [0.0, 0.0, 0.0],
        )
    encoded = [format(v, "x") for v in ring.encode(own)]
    assert not [v for v in encoded if v in stored]
