"""Authorized operation, run against each backend of the hub's database: SQLite and a real
PostgreSQL server (one abstract suite, as Flower's ``State`` tests; ``make test`` starts the
server with scripts/pg.sh).

The hub runs in-process (Starlette's transport) for the walk-through, the refusals and the
authorization matrix; the concurrency test runs it as its own ``medlab hub serve`` process
and sends 100 submissions at once over loopback HTTP.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect, update
from tests import federation as fed
from tests import governance as g

from medlab.errors import UsageError
from medlab.federation import launch
from medlab.federation.client.sdk import Client, HubError
from medlab.federation.hub import db
from medlab.federation.hub.app import create_app
from medlab.federation.hub.service import init_hub
from medlab.federation.node.agent import Agent
from medlab.federation.node.inbox import Inbox
from medlab.governance import access, audit, migrate, schema
from medlab.privacy import budget
from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import parse_policy
from medlab.synth.cohorts import new_users, outcome

PROJECT = "apixaban-safety"


def light_spec(
    name: str = "bleeds on apixaban", analysis: str = "incidence", offset: int = 0
) -> dict[str, Any]:
    """One incidence analysis (quick; ``offset``: days added to the end of time at risk, so
    that studies ask different questions), or a characterization."""
    spec: dict[str, Any] = {
        "name": name,
        "cohorts": [
            {"id": 1, "name": "apixaban new users", "definition": new_users(fed.APIXABAN)},
            {"id": 3, "name": "GI bleed", "definition": outcome(fed.GI_BLEED)},
        ],
        "analyses": [
            {
                "type": "incidence",
                "name": "bleeds",
                "target": 1,
                "outcome": 3,
                "settings": {"tar_end_offset": offset},
            }
        ],
    }
    if analysis == "characterization":
        spec["analyses"] = [{"type": "characterization", "name": "table1", "cohorts": [1]}]
    return spec


def _refused(call: Any, status: int, words: str) -> HubError:
    with pytest.raises(HubError) as caught:
        call()
    assert caught.value.status == status, caught.value
    assert words in str(caught.value), caught.value
    return caught.value


class GovernanceSuite:
    """The governance tests; a subclass gives ``db_url`` (None: SQLite in the hub's
    directory)."""

    @pytest.fixture
    def db_url(self) -> str | None:
        raise NotImplementedError

    @pytest.fixture
    def lab(self, synth_small: Path, tmp_path: Path, db_url: str | None) -> g.Lab:
        stores = fed.copy_sites(synth_small, tmp_path / "nodes", ("hospital_a", "hospital_b"))
        for store in stores:
            fed.federation_policy(store, approval="each_task", require_agreement=True)
        hub = init_hub(tmp_path / "hub", db_url)
        http = TestClient(create_app(hub), base_url="http://hub")
        return g.build(hub, http, stores, analyses=["incidence", "characterization"])

    def test_the_schema_is_migrated_to_the_latest_revision(self, lab: g.Lab) -> None:
        engine = lab.hub.sessions.kw["bind"]
        assert migrate.current(engine) == migrate.head()
        tables = set(inspect(engine).get_table_names())
        assert set(schema.Base.metadata.tables) <= tables
        assert {"users", "tokens", "projects", "agreements", "approvals", "usage"} <= tables
        with engine.connect() as connection:  # the history builds exactly the models
            drift = compare_metadata(MigrationContext.configure(connection), schema.Base.metadata)
        assert drift == []

    def test_a_study_walks_submission_two_approvals_node_approvals_results(
        self, lab: g.Lab, tmp_path: Path
    ) -> None:
        study = lab["alan"].submit(light_spec(), project=PROJECT, min_sites=2)
        status = study.status()
        assert (status.state, status.tasks, status.approvals) == ("submitted", [], [])
        agents = [Agent(store, lab.http) for store in lab.stores]
        for agent in agents:
            agent.run(once=True)
        assert not Inbox(lab.stores[0]).all(), "nothing reaches a node before two approvals"
        assert lab["rita"].approve(study.id).state == "submitted"
        status = lab["olga"].approve(study.id)
        assert status.state == "running"
        assert [a["kind"] for a in status.approvals] == ["lead", "reviewer"]
        for agent in agents:
            agent.run(once=True)
        assert {t.state for t in study.status().tasks} == {"awaiting_approval"}
        for store in lab.stores:  # each node's steward approves at the node
            (task,) = Inbox(store).all()
            Inbox(store).move(task.task_id, task.state, approved_by=g.steward_of(store))
        for agent in agents:
            agent.run(once=True)
        done = study.wait(timeout=30)
        assert done.state == "completed", done.reason
        results = json.loads(study.file("results.json"))
        assert results["sites"]["answered"] == 2
        envelope = Inbox(lab.stores[0]).all()[0].envelope
        assert envelope["agreement"] == lab.agreements["hospital_a"]
        # The auditor gets the evidence record, not the results; a member gets both.
        aude = lab["aude"].study(study.id)
        assert json.loads(aude.file("evidence.json"))
        _refused(lambda: aude.file("results.json"), 403, "project's members")
        usage = lab["rita"].usage(PROJECT)
        assert usage["total"]["studies"] == 1 and usage["total"]["tasks"] == 2
        assert usage["total"]["releases"] == 2 and usage["total"]["node_seconds"] > 0
        csv = lab["aude"].usage_csv(PROJECT).splitlines()
        assert csv[0] == "project,node,studies,tasks,node_seconds,releases,epsilon,rho"
        assert [r.split(",")[1] for r in csv[1:]] == ["", "hospital_a", "hospital_b"]
        trail = lab["aude"].audit(study=study.id)
        kinds = [e["type"] for e in trail]
        for kind in ("study_submitted", "study_approved", "study_dispatched"):
            assert kind in kinds
        assert any(e.get("operation") == "study_submit" and e["status"] == 201 for e in trail)
        assert all("results" not in json.dumps(e) or "file" in e for e in trail)

    def test_refusals_name_the_reason_dispatch_nothing_and_are_audited(self, lab: g.Lab) -> None:
        alan, rita, olga, carl = lab["alan"], lab["rita"], lab["olga"], lab["carl"]
        study = alan.submit(light_spec(), project=PROJECT)
        _refused(lambda: alan.approve(study.id), 403, "own submission")
        rita.approve(study.id)
        _refused(lambda: rita.approve(study.id), 409, "already")
        assert lab.hub.tasks_for("hospital_a") == []  # one approval dispatches nothing
        # Organisation cro-y sees nothing of the project, its studies, agreements or usage.
        _refused(lambda: carl.study(study.id).status(), 404, "no study")
        _refused(lambda: carl.submit(light_spec(), project=PROJECT), 404, "no project")
        _refused(lambda: carl.agreements(PROJECT), 404, "no project")
        _refused(lambda: carl.agreement(lab.agreements["hospital_a"]), 404, "no agreement")
        _refused(lambda: carl.usage(PROJECT), 404, "no project")
        assert carl.projects() == [] and carl.studies() == []
        # Outside the agreement, over budget, without a project.
        wide = light_spec(analysis="incidence")
        wide["analyses"].append({"type": "feasibility", "name": "funnel", "cohort": 1})
        _refused(lambda: alan.submit(wide, project=PROJECT), 409, "feasibility is outside")
        _refused(lambda: alan.submit(light_spec(), project=PROJECT, epsilon=1), 409, "budget")
        _refused(lambda: alan.submit(light_spec()), 422, "inside a project")
        # Its agreements expire before the second approval: refused at dispatch.
        with db.transaction(lab.hub.sessions) as s:
            s.execute(update(schema.Agreement).values(expires_at=db.utcnow()))
        status = olga.approve(study.id)
        assert status.state == "refused" and "no active" in (status.reason or ""), status
        assert lab.hub.tasks_for("hospital_a") == []
        _refused(lambda: alan.submit(light_spec(), project=PROJECT), 409, "no active")
        _refused(lambda: olga.approve(study.id), 409, "allowed: none")
        trail = lab["aude"].audit(project=PROJECT)
        refusals = [e for e in trail if e["type"] == "api" and e["status"] >= 400]
        assert {e["status"] for e in refusals} >= {403, 404, 409}
        assert any(e["user"] == "carl" and e["status"] == 404 for e in refusals)
        assert any(e["user"] == "alan" and e["status"] == 403 for e in refusals)
        unfiled = [e for e in lab["aude"].audit(user="alan") if e.get("status") == 422]
        assert [e["operation"] for e in unfiled] == ["study_submit"]

    def test_tokens_expire_can_be_revoked_and_carry_scopes(self, lab: g.Lab) -> None:
        reader = lab["olga"].add_token("rita", scopes=["read"], days=1)
        client = Client(token=reader["token"], http=lab.http)
        assert client.me()["scopes"] == ["read"]
        _refused(lambda: client.submit(light_spec(), project=PROJECT), 403, "write scope")
        lab["rita"].revoke_token(reader["token_id"])
        _refused(client.me, 401, "valid token")
        with db.transaction(lab.hub.sessions) as s:
            s.execute(
                update(schema.Token)
                .where(schema.Token.user == "carl")
                .values(expires_at=db.utcnow())
            )
        _refused(lab["carl"].me, 401, "valid token")
        _refused(lambda: lab["alan"].revoke_token(reader["token_id"]), 404, "no token")
        reasons = [e.get("reason") for e in audit.events(lab.hub.party.log_dir)]
        assert "an expired or revoked token" in reasons

    def test_every_role_and_endpoint_of_the_matrix(self, lab: g.Lab) -> None:
        matrix(lab)

    def test_concurrent_submissions_never_overspend_and_approvals_count_once(
        self, synth_small: Path, tmp_path: Path, db_url: str | None
    ) -> None:
        """100 submissions at once over HTTP, each asking epsilon 1 of an agreement that
        grants 5: five are held, 95 refused; once run, the node's ledger and the hub's
        mirror agree (5 spent, none held). Two operators approving one study at once, and two
        stewards approving one task at once, each count once."""
        (store,) = fed.copy_sites(synth_small, tmp_path / "nodes", ("hospital_a",))
        policy = {
            "version": "test-1",
            "count_protection": "differential_privacy",
            "differential_privacy": {"enabled": True, "epsilon_per_release": 1.0},
            "federation": {"approval": "each_task", "require_agreement": True},
        }
        set_policy(store, parse_policy(policy, "test"))
        hub = init_hub(tmp_path / "hub", db_url)
        port = launch.free_port()
        url = f"http://{launch.LOOPBACK}:{port}"
        server = launch.start_hub(tmp_path / "hub", port, tmp_path / "hub.log", db=db_url)
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                lab = g.build(hub, http, [store], epsilon=5.0, analyses=["incidence"])
                clients = [Client(url, lab.tokens["alan"]) for _ in range(20)]

                def submit(i: int) -> str | int:
                    client = clients[i % len(clients)]
                    try:
                        spec = light_spec(f"race {i}", offset=i)
                        return client.submit(spec, project=PROJECT, epsilon=1.0).id
                    except HubError as exc:
                        assert "over budget" in str(exc), exc
                        return exc.status

                with concurrent.futures.ThreadPoolExecutor(20) as pool:
                    outcomes = list(pool.map(submit, range(100)))
                held = [o for o in outcomes if isinstance(o, str)]
                assert len(held) == 5 and outcomes.count(409) == 95
                (mirror,) = lab["rita"].usage(PROJECT)["budgets"]
                assert (mirror["epsilon_held"], mirror["epsilon_spent"]) == (5.0, 0.0)
                for study_id in held:
                    lab["rita"].approve(study_id)
                operators = [Client(url, lab.tokens[u]) for u in ("olga", "otto")]

                def approve(pair: tuple[Client, str]) -> int:
                    try:
                        pair[0].approve(pair[1])
                        return 200
                    except HubError as exc:
                        return exc.status

                with concurrent.futures.ThreadPoolExecutor(10) as pool:
                    pairs = [(c, s) for s in held for c in operators]
                    answers = list(pool.map(approve, pairs))
                assert sorted(answers) == [200] * 5 + [409] * 5
                for study_id in held:
                    kinds = [a["kind"] for a in lab["rita"].study(study_id).status().approvals]
                    assert sorted(kinds) == ["lead", "reviewer"]
                agent = Agent(store, http)
                agent.run(once=True)
                tasks = Inbox(store).all()
                assert len(tasks) == 5 and {t.state for t in tasks} == {"awaiting_approval"}
                stewards = ("steward one", "steward two")

                def steward_approves(pair: tuple[str, str]) -> bool:
                    try:
                        Inbox(store).move(pair[1], "awaiting_approval", approved_by=pair[0])
                        return True
                    except UsageError:
                        return False

                with concurrent.futures.ThreadPoolExecutor(10) as pool:
                    took = list(
                        pool.map(
                            steward_approves, [(s, t.task_id) for t in tasks for s in stewards]
                        )
                    )
                assert took.count(True) == 5
                agent.run(once=True)
                for study_id in held:
                    done = lab["rita"].study(study_id).wait(timeout=60)
                    assert done.state == "completed", done.reason
                (mirror,) = lab["rita"].usage(PROJECT)["budgets"]
                node = budget.status(store, PROJECT)
                assert node.epsilon_granted == 5.0 and node.epsilon_spent == 5.0
                assert mirror["epsilon_spent"] == node.epsilon_spent
                assert mirror["epsilon_held"] == 0.0
                refused = _refused(
                    lambda: lab["alan"].submit(light_spec(), project=PROJECT, epsilon=0.5),
                    409,
                    "over budget",
                )
                assert "has epsilon 0, rho 0 left" in str(refused)
        finally:
            launch.stop(server)


class TestOnSQLite(GovernanceSuite):
    @pytest.fixture
    def db_url(self) -> str | None:
        return None


class TestOnPostgreSQL(GovernanceSuite):
    @pytest.fixture
    def db_url(self, postgres_url: str) -> str | None:
        return postgres_url


# -- the authorization matrix ------------------------------------------------------------


def matrix(lab: g.Lab) -> None:
    """Every operation called by one user of each role: allowed ones succeed, others get
    403 and an audit event."""
    op = lab["olga"]
    for name in ("m1", "m2", "m3", "m4"):
        op.add_user(name, "researcher", "pharma-x")
    for name in ("n-extra-1", "n-extra-2"):
        op.add_node(name, _pem(), "org-hospital_a")
    steward = g.steward_of(lab.stores[0])
    submitted = [lab["alan"].submit(light_spec(f"s{i}"), project=PROJECT).id for i in range(3)]
    mine = lab["rita"].submit(light_spec("rita's own"), project=PROJECT).id
    done = lab["alan"].submit(light_spec("done"), project=PROJECT, nodes=["hospital_a"])
    lab["rita"].approve(done.id)
    lab["olga"].approve(done.id)
    fed.federation_policy(lab.stores[0], approval="none", require_agreement=True)
    Agent(lab.stores[0], lab.http).run(once=True)
    assert done.wait(timeout=30).state == "completed"
    roles = {"operator": "olga", "steward": steward, "researcher": "rita", "auditor": "aude"}
    unique = iter(range(1000))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    terms = {"analyses": ["incidence"], "domains": [], "policy_version": "test-1"}

    def call(operation: str, role: str) -> httpx.Response:
        n = next(unique)
        user = roles[role]
        by_role = {"operator": "n-extra-1", "researcher": "n-extra-2"}
        calls: dict[str, tuple[str, str, Any]] = {
            "me": ("GET", "/me", None),
            "organisation_add": ("POST", "/organisations", {"name": f"o{n}", "kind": "ai"}),
            "organisation_list": ("GET", "/organisations", None),
            "user_add": ("POST", "/users", {"name": f"u{n}", "role": "researcher"}),
            "user_list": ("GET", "/users", None),
            "token_add": ("POST", f"/users/{user}/tokens", {"days": 1}),
            "token_revoke": ("DELETE", f"/tokens/{_token(lab, user)}", None),
            "node_add": (
                "POST",
                "/nodes",
                {"name": f"n{n}", "public_key": _pem(), "organisation": "org-hospital_a"},
            ),
            "node_list": ("GET", "/nodes", None),
            "project_add": (
                "POST",
                "/projects",
                {
                    "name": f"p{n}",
                    "organisation": "pharma-x",
                    "purpose": "x",
                    "lead": "m1",
                    "ends": later.isoformat(),
                },
            ),
            "project_list": ("GET", "/projects", None),
            "project_get": ("GET", f"/projects/{PROJECT}", None),
            "member_add": (
                "POST",
                f"/projects/{PROJECT}/members",
                {"user": {"operator": "m2", "researcher": "m3"}.get(role, "m4"), "role": "viewer"},
            ),
            "agreement_add": (
                "POST",
                f"/projects/{PROJECT}/agreements",
                {"node": by_role.get(role, "n-extra-1"), "expires_at": later.isoformat(), **terms},
            ),
            "agreement_list": ("GET", f"/projects/{PROJECT}/agreements", None),
            "agreement_get": ("GET", f"/agreements/{lab.agreements['hospital_a']}", None),
            "agreement_move": (
                "POST",
                f"/agreements/{lab.agreements['hospital_b']}/state",
                {"state": "suspended" if role == "steward" else "expired", "reason": "matrix"},
            )
            if role != "steward"
            else (
                "POST",
                f"/agreements/{lab.agreements['hospital_a']}/state",
                {"state": "suspended", "reason": "matrix"},
            ),
            "study_submit": ("POST", "/studies", {"spec": light_spec(), "project": PROJECT}),
            "study_list": ("GET", "/studies", None),
            "study_get": ("GET", f"/studies/{done.id}", None),
            "study_file": ("GET", f"/studies/{done.id}/files/evidence.json", None),
            "study_approve": ("POST", f"/studies/{submitted[0]}/approvals", {}),
            "study_reject": (
                "POST",
                f"/studies/{submitted[1 if role == 'operator' else 2]}/rejection",
                {"reason": "matrix"},
            ),
            "study_withdraw": ("POST", f"/studies/{mine}/withdrawal", {"reason": "matrix"}),
            "usage_get": ("GET", f"/projects/{PROJECT}/usage", None),
            "usage_csv": ("GET", "/usage.csv", None),
            "audit": ("GET", "/audit", None),
        }
        method, path, body = calls[operation]
        headers = {"authorization": f"Bearer {lab.tokens[user]}"}
        return lab.http.request(method, "/api/v1" + path, json=body, headers=headers)

    assert set(access.OPERATIONS) <= set(_documented(lab))
    denied = []
    # The agreement moves come last: they suspend and expire the project's agreements.
    for operation in sorted(access.OPERATIONS, key=lambda o: o == "agreement_move"):
        spec = access.OPERATIONS[operation]
        for role in access.ROLES:
            response = call(operation, role)
            if role in spec.roles:
                assert response.status_code < 300, (operation, role, response.text)
            else:
                assert response.status_code == 403, (operation, role, response.text)
                assert f"{operation} is for" in response.json()["detail"]
                denied.append((operation, roles[role]))
    logged = {
        (e["operation"], e["user"])
        for e in audit.events(lab.hub.party.log_dir)
        if e["type"] == "api" and e["status"] == 403
    }
    assert set(denied) <= logged
    assert len(denied) == sum(len(set(access.ROLES) - o.roles) for o in access.OPERATIONS.values())


def _documented(lab: g.Lab) -> list[str]:
    """Every operation in the OpenAPI document, with its roles written in."""
    document = lab.http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    found = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            name = op.get("operationId", "")
            for key, spec in access.OPERATIONS.items():
                if spec.path == path and spec.method == method.upper():
                    assert op["x-roles"] == sorted(spec.roles)
                    assert "Roles:" in op["description"]
                    found.append(key)
            assert name
    return found


def _token(lab: g.Lab, user: str) -> str:
    """A fresh token of ``user``'s to revoke (issued by the operator)."""
    return str(lab["olga"].add_token(user, days=1)["token_id"])


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
