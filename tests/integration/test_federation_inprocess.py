"""The in-process federation: hub, node agents and client in one process, no sockets.

The hub's API runs on Starlette's in-process transport, each node's agent and the client
talk to it through it exactly as over the network. A study submitted through the client
gives the same analyses as ``medlab study run`` over the same stores.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests import federation as fed

from medlab.cdm.store import open_store
from medlab.errors import UsageError
from medlab.federation.client.sdk import Client, HubError
from medlab.federation.hub.app import create_app
from medlab.federation.hub.service import init_hub
from medlab.federation.node.agent import Agent
from medlab.federation.node.inbox import Inbox
from medlab.ledger import evidence, parties
from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec


@pytest.fixture(params=["sqlite"])
def lab(request, synth_small: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An open hub on SQLite, or (``lab`` parametrized with ``postgresql``) on a fresh
    database of the real PostgreSQL server."""
    stores = fed.copy_sites(synth_small, tmp_path / "nodes")
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    hub = init_hub(tmp_path / "hub", url, governance="open")
    http = TestClient(create_app(hub), base_url="http://hub")
    for store in stores:
        hub.add_node(store.stem, parties.node(store).signer.public_pem)
    token = hub.add_researcher("ana")
    return hub, http, stores, Client(token=token, http=http)


def _agents(http: TestClient, stores: list[Path]) -> list[Agent]:
    return [Agent(store, http) for store in stores]


def test_a_federated_study_equals_the_single_process_run(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, http, stores, client = lab
    for store in stores[:2]:
        fed.federation_policy(store, approval="none")
    fed.federation_policy(stores[2], approval="each_task")
    study = client.submit(fed.spec(), min_sites=3)
    agents = _agents(http, stores)
    for agent in agents:
        agent.run(once=True)
    states = {t.node: t.state for t in study.status().tasks}
    assert states == {
        "hospital_a": "completed",
        "hospital_b": "completed",
        "hospital_c": "awaiting_approval",
    }
    waiting = Inbox(stores[2]).all()
    assert [t.state for t in waiting] == ["awaiting_approval"]
    Inbox(stores[2]).move(waiting[0].task_id, "awaiting_approval", approved_by="steward c")
    agents[2].run(once=True)
    done = study.wait(timeout=5)
    assert done.state == "completed", done.reason
    out = tmp_path / "fetched"
    study.fetch(out)
    fetched = json.loads((out / "results.json").read_text())
    assert fetched["sites"]["summary"] == "answered 3 of 3"
    spec = StudySpec.model_validate(fed.spec())
    run_study(spec, stores, tmp_path / "local", hub_dir=tmp_path / "hub2")
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    assert fetched["analyses"] == local["analyses"]
    assert fetched["nodes"] == local["nodes"] and fetched["policy"] == local["policy"]
    assert fetched["disclosure"] == local["disclosure"]
    # What the researcher fetched exports and verifies away from every node's files.
    bundle = tmp_path / "bundle.zip"
    evidence.export_bundle(out, bundle)
    failed = [c for c in evidence.verify_bundle(bundle) if not c.ok]
    assert failed == []


BACKENDS = pytest.mark.parametrize("lab", ["sqlite", "postgresql"], indirect=True)


@BACKENDS
def test_a_refused_task_and_the_quorum(lab) -> None:  # type: ignore[no-untyped-def]
    _, http, stores, client = lab
    fed.federation_policy(stores[0], approval="none")
    fed.federation_policy(stores[1], approval="none")
    from medlab.privacy.node_policy import set_policy
    from medlab.privacy.policy import parse_policy

    set_policy(
        stores[2],
        parse_policy(
            {"version": "no-comparative", "allowed_analyses": ["incidence", "characterization"]}
        ),
    )
    ok = client.submit(fed.spec(), min_sites=2)
    too_few = client.submit(fed.spec("needs three"), min_sites=3)
    for agent in _agents(http, stores):
        agent.run(once=True)
    status = ok.wait(timeout=5)
    assert status.state == "completed"
    refused = next(t for t in status.tasks if t.node == "hospital_c")
    assert refused.state == "refused"
    assert refused.reason == "analysis type comparative not allowed at this node"
    assert ok.results()["sites"]["summary"].startswith("answered 2 of 3 (hospital_c: refused")
    failed = too_few.wait(timeout=5)
    assert failed.state == "failed" and "quorum not reached" in (failed.reason or "")
    assert failed.files == []
    with pytest.raises(UsageError, match="is failed: quorum not reached"):
        too_few.fetch(Path("/nonexistent"))


def test_a_malformed_study_names_the_json_path(lab) -> None:  # type: ignore[no-untyped-def]
    _, _, _, client = lab
    bad = fed.spec()
    bad["analyses"][2]["settings"]["caliper"] = "wide"
    with pytest.raises(HubError) as info:
        client.submit(bad)
    assert info.value.status == 422
    paths = [e["path"] for e in info.value.problem["errors"]]
    assert "$.spec.analyses[2].settings.caliper" in paths


@BACKENDS
def test_a_two_round_analysis_pools_the_mean_and_sd(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, http, stores, client = lab
    for store in stores:
        fed.federation_policy(store, approval="each_task")
    spec = {
        "name": "two rounds",
        "cohorts": fed.spec()["cohorts"][1:2],  # warfarin new users
        "analyses": [{"type": "federated_mean", "name": "age", "cohort": 2}],
    }
    study = client.submit(spec)
    agents = _agents(http, stores)
    for agent, store in zip(agents, stores, strict=True):
        agent.run(once=True)
        (task,) = Inbox(store).all()
        Inbox(store).move(task.task_id, "awaiting_approval", approved_by="steward")
        agent.run(once=True)  # round 1 runs; round 2 is posted once all three answered
    for agent in agents:
        agent.run(once=True)  # round 2 runs on the approval of round 1
    done = study.wait(timeout=10)
    assert done.state == "completed", done.reason
    rounds = sorted({t.envelope["round"] for s in stores for t in Inbox(s).all()})
    assert rounds == [1, 2]
    age = study.results()["analyses"][0]["age"]
    ages = []
    for store in stores:
        with open_store(store, read_only=True) as con:
            ages += [
                r[0]
                for r in con.execute(
                    """SELECT year(c.cohort_start_date) - p.year_of_birth FROM results.cohort c
                       JOIN person p ON p.person_id = c.subject_id
                       WHERE c.cohort_definition_id = 2"""
                ).fetchall()
            ]
    assert age["rounds"] == 2 and age["sites"] == 3
    # Exact up to the gate: counts rounded to midpoint-6, means at 3 significant digits.
    assert abs(age["n"] - len(ages)) <= 3 * 3
    assert age["mean"] == pytest.approx(np.mean(ages), rel=5e-3)
    assert age["sd"] == pytest.approx(np.std(ages, ddof=1), rel=2e-2)
    out = tmp_path / "fetched"
    study.fetch(out)
    bundle = tmp_path / "bundle.zip"
    evidence.export_bundle(out, bundle)
    assert [c for c in evidence.verify_bundle(bundle) if not c.ok] == []
    run_study(StudySpec.model_validate(spec), stores, tmp_path / "local", hub_dir=tmp_path / "h")
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    assert json.loads((out / "results.json").read_text())["analyses"] == local["analyses"]


@BACKENDS
def test_signed_submissions_and_idempotent_uploads(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hub, http, stores, _ = lab
    from medlab.ledger.keys import Signer

    key = tmp_path / "bo.key"
    bo = Signer.load_or_create(key)
    token = hub.add_researcher("bo", bo.public_pem)
    with pytest.raises(HubError, match="must be signed"):
        Client(token=token, http=http).submit(fed.spec())
    signed = Client(token=token, http=http, key=key)
    fed.federation_policy(stores[0], approval="none", require_researcher_signature=True)
    study = signed.submit(fed.spec(), nodes=["hospital_a"])
    agent = Agent(stores[0], http)
    agent.run(once=True)
    assert study.wait(timeout=5).state == "completed"
    (task,) = Inbox(stores[0]).all()
    assert task.envelope["researcher_key"] == bo.public_pem
    # The same upload again is stored once; a different one is refused.
    again = hub.report("hospital_a", task.task_id, {"state": "completed", "output": task.output})
    assert again == "completed"
    changed = json.loads(json.dumps(task.output))
    changed["quality"]["passed"] += 1
    from medlab.federation.hub.service import HubError as Refused

    with pytest.raises(Refused) as info:
        hub.report("hospital_a", task.task_id, {"state": "completed", "output": changed})
    assert info.value.status == 409


def test_the_steward_reviews_what_leaves(lab, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from medlab.cli.main import main

    _, http, stores, client = lab
    store = stores[1]
    fed.federation_policy(store, approval="none", review_results=True)
    study = client.submit(fed.spec(), nodes=["hospital_b"])
    agent = Agent(store, http)
    agent.run(once=True)
    (task,) = study.status().tasks
    assert task.state == "awaiting_result_review"
    capsys.readouterr()
    assert main(["node", "tasks", str(store), "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["cohorts"][0] == "cohort 1 (apixaban new users):"
    assert any("first drug exposure of concept set 0" in line for line in shown["cohorts"])
    assert [p["analysis"] for p in shown["released"]] == [
        "incidence",
        "characterization",
        "characterization",
        "comparative",
    ]
    assert shown["spec"]["name"] == "federated apixaban"
    # Nothing left the node yet: the hub holds no output for the task.
    with hub_session(lab) as tasks:
        assert [t.output for t in tasks] == [None]
    assert main(["node", "approve", str(store), task.task_id, "--by", "steward b"]) == 0
    agent.run(once=True)
    assert study.wait(timeout=5).state == "completed"
    assert "openapi" in http.get("/openapi.json").json()
    missing = http.get("/api/v1/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


@contextlib.contextmanager
def hub_session(lab):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from medlab.federation.hub import db

    hub = lab[0]
    with hub.sessions() as s:
        yield list(s.scalars(select(db.Task)))


@BACKENDS
def test_the_deadline_expires_the_silent_and_the_late(lab) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from medlab.federation.hub import db

    hub, http, stores, client = lab
    a, _, c = stores
    fed.federation_policy(a, approval="none")
    study = client.submit(fed.spec(), min_sites=1, deadline_seconds=3600)
    Agent(a, http).run(once=True)
    late = Agent(c, http)
    late.run(once=True)  # hospital_c waits for its steward; hospital_b never polls
    with db.transaction(hub.sessions) as s:
        row = s.get(db.Study, study.id)
        row.deadline = db.utcnow() - dt.timedelta(seconds=1)
    hub.settle()
    status = study.status()
    assert status.state == "completed"
    states = {t.node: (t.state, t.reason) for t in status.tasks}
    assert states["hospital_b"] == ("expired", "deadline passed")
    assert states["hospital_c"] == ("expired", "deadline passed")
    assert study.results()["sites"]["summary"] == (
        "answered 1 of 3 (hospital_b: expired — deadline passed; "
        "hospital_c: expired — deadline passed)"
    )
    # The steward approves too late: the agent learns the hub moved on and runs nothing.
    (task,) = Inbox(c).all()
    Inbox(c).move(task.task_id, "awaiting_approval", approved_by="steward c")
    late.run(once=True)
    assert Inbox(c).get(task.task_id).state == "expired"
    assert Inbox(c).get(task.task_id).output is None


def test_a_combine_that_fails_fails_the_study_with_a_plain_reason(lab, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from medlab.federation.hub import combining

    _, http, stores, client = lab
    fed.federation_policy(stores[0], approval="none")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug with internals: /secret/path")

    monkeypatch.setattr(combining, "combine_study", broken)
    study = client.submit(fed.spec(), nodes=["hospital_a"])
    Agent(stores[0], http).run(once=True)
    status = study.wait(timeout=5)
    assert status.state == "failed"
    assert status.reason == "the hub could not combine the released results"


def test_the_agent_reads_the_policy_the_steward_sets_while_it_runs(lab) -> None:  # type: ignore[no-untyped-def]
    from medlab.privacy.node_policy import set_policy
    from medlab.privacy.policy import parse_policy

    _, http, stores, client = lab
    fed.federation_policy(stores[0], approval="none")
    agent = Agent(stores[0], http)  # started under a policy that allows everything
    rules = {"version": "later", "federation": {"approval": "none"}}
    rules["allowed_analyses"] = ["incidence", "characterization"]
    set_policy(stores[0], parse_policy(rules))
    study = client.submit(fed.spec(), nodes=["hospital_a"])
    agent.run(once=True)
    (task,) = study.wait(timeout=5).tasks
    assert task.state == "refused"
    assert task.reason == "analysis type comparative not allowed at this node"
