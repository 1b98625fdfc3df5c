"""The node's local console as its own process on 127.0.0.1 (``medlab node console``): the
steward signs in with the printed token, sees the waiting task with what it would release,
and approves or refuses it with a click; forms from elsewhere, other hosts and other tokens
are refused and change nothing; the agent's profile links the hub's page to it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medlab.cdm.store import init_store, store_lock
from medlab.cli.main import main
from medlab.federation import launch
from medlab.federation.node import profile
from medlab.federation.node.console import console_file, form_token
from medlab.federation.node.inbox import Inbox

SPEC = {
    "name": "apixaban safety",
    "cohorts": [
        {
            "id": 1,
            "name": "apixaban",
            "definition": {
                "concept_sets": [{"id": 0, "items": [{"concept_id": 43013024}]}],
                "primary": {"criteria": [{"domain": "drug_exposure", "codeset_id": 0}]},
            },
        }
    ],
    "analyses": [{"type": "incidence", "name": "bleeds", "target": 1, "outcome": 1}],
}


def _task(store: Path, task_id: str) -> None:
    Inbox(store).add(
        {
            "task_id": task_id,
            "study_id": "st_1",
            "spec": SPEC,
            "researcher": "alan",
            "project": "apixaban-safety",
        }
    )
    Inbox(store).move(task_id, "awaiting_approval")


class Console:
    def __init__(self, store: Path, log: Path) -> None:
        self.port = launch.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = launch.medlab(
            "node", "console", str(store), "--port", str(self.port), "--by", "dr wu", log=log
        )
        until = time.monotonic() + 60
        while time.monotonic() < until:
            found = re.search(r"shown once\):\s*(\S+)", log.read_text())
            try:
                if found and httpx.get(f"{self.url}/signin").status_code == 200:
                    self.token = found.group(1)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(log.read_text())

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, Console]]:
    store = tmp_path / "hospital_a.duckdb"
    init_store(store)
    _task(store, "t_1")
    _task(store, "t_2")
    console = Console(store, tmp_path / "console.log")
    try:
        yield store, console
    finally:
        launch.stop(console.process)


def _signed_in(console: Console) -> httpx.Client:
    client = console.client()
    answer = client.post("/signin", data={"token": console.token})
    assert answer.status_code == 303
    return client


def test_the_steward_signs_in_and_approves_the_waiting_task(node: tuple[Path, Console]) -> None:
    store, console = node
    anonymous = console.client()
    assert anonymous.get("/").headers["location"] == "/signin"
    assert anonymous.post("/signin", data={"token": "guess"}).status_code == 401
    client = _signed_in(console)
    cookie = client.cookies.jar
    assert any(c.has_nonstandard_attr("HttpOnly") for c in cookie)
    page = client.get("/")
    assert page.status_code == 200
    assert "script-src 'none'" in page.headers["content-security-policy"]
    assert "apixaban safety" in page.text and "t_1" in page.text
    assert "persons, outcomes and person-time by stratum" in page.text  # what would leave
    answer = client.post("/tasks/t_1/approve", data={"csrf": form_token(console.token)})
    assert answer.status_code == 200 and "approved: t_1 may run" in answer.text
    task = Inbox(store).get("t_1")
    assert task.approved_by == "dr wu" and task.state == "awaiting_approval"
    logged = [e for e in profile.log_entries(store) if e["type"] == "task_approved"]
    assert logged[-1]["task_id"] == "t_1" and logged[-1]["by"] == "dr wu"
    # Twice is once: the second approval is refused and changes nothing.
    again = client.post("/tasks/t_1/approve", data={"csrf": form_token(console.token)})
    assert again.status_code == 409 and "approved already by dr wu" in again.text


def test_a_refusal_needs_a_reason_and_goes_to_the_researcher(node: tuple[Path, Console]) -> None:
    store, console = node
    client = _signed_in(console)
    csrf = form_token(console.token)
    empty = client.post("/tasks/t_2/refuse", data={"csrf": csrf, "reason": " "})
    assert empty.status_code == 409 and Inbox(store).get("t_2").state == "awaiting_approval"
    done = client.post("/tasks/t_2/refuse", data={"csrf": csrf, "reason": "not our cohort"})
    assert done.status_code == 200
    task = Inbox(store).get("t_2")
    assert task.state == "refused" and task.reason == "not our cohort"


def test_forms_from_elsewhere_other_hosts_and_no_session_change_nothing(
    node: tuple[Path, Console],
) -> None:
    store, console = node
    before = [(t.task_id, t.state, t.approved_by) for t in Inbox(store).all()]
    assert console.client().post("/signin", data={"token": "令牌"}).status_code == 401
    client = _signed_in(console)
    assert client.post("/tasks/t_1/approve", data={"csrf": "forged"}).status_code == 403
    assert client.post("/tasks/t_1/approve", data={"csrf": "伪造"}).status_code == 403
    assert console.client().post("/tasks/t_1/approve", data={"csrf": "x"}).status_code == 303
    rebound = client.get("/", headers={"host": "evil.example:80"})
    assert rebound.status_code == 421  # a page of another name (DNS rebinding)
    assert [(t.task_id, t.state, t.approved_by) for t in Inbox(store).all()] == before


def test_the_page_never_waits_for_a_store_a_running_task_holds(
    node: tuple[Path, Console],
) -> None:
    # The agent holds the store from a task's first cohort to its last release.
    store, console = node
    client = _signed_in(console)
    with store_lock(store):
        start = time.monotonic()
        page = client.get("/", timeout=10)
        assert time.monotonic() - start < 5
        assert page.status_code == 200 and "t_1" in page.text
        assert "a running task holds the store" in page.text
        csrf = form_token(console.token)
        assert client.post("/tasks/t_1/approve", data={"csrf": csrf}).status_code == 200
    assert "the steward approves each task" in client.get("/").text  # once it is free


def test_the_profile_links_to_the_console_while_it_runs(node: tuple[Path, Console]) -> None:
    store, console = node
    assert profile.build(store).console == f"{console.url}/"
    launch.stop(console.process)
    assert not console_file(store).exists()
    assert profile.build(store).console is None


def test_the_console_listens_on_the_loopback_address_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "n.duckdb"
    init_store(store)
    assert main(["node", "console", str(store), "--host", "0.0.0.0"]) != 0
    assert "loopback address only" in capsys.readouterr().err
    assert not console_file(store).exists()
