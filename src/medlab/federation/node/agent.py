"""The node agent: runs inside the hospital and only dials out to the hub.

``medlab node agent STORE --hub URL [--once]``. It long-polls the hub for tasks (outbound
HTTPS/HTTP only; it opens no port), records each in the node's inbox, decides under the
node's own policy (:mod:`medlab.federation.node.checks`), waits for the steward where the
policy says so, runs the study's node steps (:func:`medlab.studies.local.run_node`: cohorts,
local steps, the release gate, signatures, the node's log), lets the steward review the
released payload when ``review_results`` is on, and uploads only that payload. Every state
is written to the inbox before it is reported, and reported until the hub acknowledges it,
so a node killed mid-task, or a hub that was down, picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from medlab.errors import StoreBusy, UsageError
from medlab.federation.common import auth
from medlab.federation.node import agreements
from medlab.federation.node import profile as profiles
from medlab.federation.node.checks import decide
from medlab.federation.node.inbox import Inbox, LocalTask
from medlab.ledger import parties
from medlab.ledger.keys import key_id
from medlab.privacy.node_policy import node_policy
from medlab.privacy.node_release import Charge
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.local import run_node
from medlab.studies.spec import StudySpec

Say = Callable[[str], None]
PROFILE_EVERY = 60.0  # seconds between the node's profiles when nothing happens
PROFILE_SOON = 2.0  # the least time between two profiles while tasks move


class HubUnreachable(Exception):
    """The hub did not answer (the agent retries later)."""


class Agent:
    """One node's agent. ``client``: an ``httpx.Client`` on the hub (a real connection, or
    an in-process transport in tests)."""

    def __init__(
        self,
        store: Path,
        client: httpx.Client,
        hub_key: str | None = None,
        say: Say | None = None,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.party = parties.node(store)
        self.name = name or store.stem
        self.inbox = Inbox(store)
        self.say = say or (lambda _: None)
        node_policy(store)  # refuses to start on a store without a valid policy
        pinned = self.inbox.hub_key()
        if hub_key is not None:
            if pinned is not None and pinned[0] != key_id(hub_key):
                raise UsageError(
                    "--hub-key: not the hub key this node pinned on first contact "
                    f"({pinned[0]}); a hub that changed keys must be re-pinned by the steward"
                )
            self.inbox.pin_hub_key(key_id(hub_key), hub_key)
        self._hub_key = hub_key or (pinned[1] if pinned else None)
        self._profiled = -PROFILE_EVERY  # the first loop sends it
        self._profile_due = False  # tasks arrived or moved since the last profile

    @property
    def policy(self) -> ReleasePolicy:
        """The node's policy as its steward keeps it now (read for every decision, so a
        policy set while the agent runs applies to the next task)."""
        return node_policy(self.store).policy

    # -- HTTP -----------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        target = str(httpx.URL(path))
        headers = auth.sign_request(self.party.signer, self.name, method, target, data)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            response = self.client.request(method, path, content=data, headers=headers)
        except httpx.HTTPError as exc:
            raise HubUnreachable(str(exc)) from None
        if response.status_code >= 500:
            raise HubUnreachable(f"the hub answered {response.status_code}")
        if response.status_code >= 400:
            problem = response.json() if response.content else {}
            raise HubRefused(response.status_code, str(problem.get("detail", "")))
        return response.json()

    def hub_key(self) -> str:
        """The hub's key: pinned, else fetched and pinned on first contact."""
        if self._hub_key is None:
            try:
                found = self.client.get("/api/v1/hub-key").json()
            except (httpx.HTTPError, ValueError) as exc:
                raise HubUnreachable(str(exc)) from None
            if key_id(found["public_key"]) != found["key_id"]:
                raise HubUnreachable("the hub's key does not match its key id")
            self.inbox.pin_hub_key(found["key_id"], found["public_key"])
            self._hub_key = found["public_key"]
        return self._hub_key

    # -- the loop -------------------------------------------------------------------

    def poll(self, wait: float = 0.0) -> int:
        """Fetch the node's tasks; record and decide the new ones. Returns how many were new."""
        found = self._request("GET", f"/api/v1/node/tasks?wait={wait:g}")["tasks"]
        new = 0
        for envelope in found:
            if self.inbox.add({k: v for k, v in envelope.items() if k != "state"}):
                new += 1
                self._decide(self.inbox.get(envelope["task_id"]))
        return new

    def _decide(self, task: LocalTask) -> None:
        policy = self.policy
        decision = decide(
            task.envelope,
            self.hub_key(),
            policy,
            lambda t, spec: agreements.check(self.store, t, spec, policy),
        )
        study = task.envelope.get("study_id")
        if decision.refused:
            reason = decision.refused
            self.party.log("task_refused", task_id=task.task_id, study_id=study, reason=reason)
            self._move(task, "refused", decision.refused)
        elif decision.needs_approval and not self._approved_before(task):
            self.party.log("task_awaiting_approval", task_id=task.task_id, study_id=study)
            self._move(task, "awaiting_approval")
        else:
            self.party.log("task_accepted", task_id=task.task_id, study_id=study, by="policy")
            self._move(task, "running")

    def _approved_before(self, task: LocalTask) -> bool:
        """A later round of a study whose first round the steward approved runs on that
        approval (the same spec, signed by the same hub)."""
        return task.envelope.get("round", 1) > 1 and any(
            t.approved_by
            and t.study_id == task.study_id
            and t.envelope.get("spec_hash") == task.envelope.get("spec_hash")
            for t in self.inbox.all()
        )

    def _move(self, task: LocalTask, state: str, reason: str | None = None, **kw: Any) -> None:
        self.inbox.move(task.task_id, state, reason, **kw)
        self.say(f"{task.task_id} ({task.envelope.get('spec', {}).get('name', '?')}): {state}")

    def work(self) -> int:
        """Act on every task that can move now, until none can; returns how many moves."""
        moves = 0
        while True:
            moved = 0
            for task in self.inbox.all():
                if task.state == "awaiting_approval" and task.approved_by:
                    self._move(task, "running")
                    moved += 1
                elif task.state == "running":
                    self._run(task)
                    moved += 1
                elif task.state == "awaiting_result_review" and task.results_approved_by:
                    self._move(task, "completed")
                    moved += 1
            self.report()
            moves += moved
            if not moved:
                return moves

    def _run(self, task: LocalTask) -> None:
        # Report "running" first, so that the hub and the researcher see it; a task killed
        # here is still "running" in the inbox and runs again on restart.
        if not self._report_one(task):
            self._move(task, "expired", "the hub no longer takes this task")
            self.inbox.acknowledged(task.task_id, "expired")
            return
        spec = StudySpec.model_validate(task.envelope["spec"])
        round_ = int(task.envelope.get("round", 1))
        earlier = tuple(
            r["log_index"]
            for t in self.inbox.all()
            if t.study_id == task.study_id and t.output and t.output.get("round", 1) < round_
            for r in t.output["releases"]
        )
        envelope = task.envelope
        charge = self._charge(task, round_) if envelope.get("agreement") else None
        try:
            output = run_node(
                spec,
                self.store,
                publish_log=True,
                round_=round_,
                params=envelope.get("params") or {},
                earlier=earlier,
                charge=charge,
            )
        except Exception as exc:  # the researcher gets a message without internals
            self.party.log("task_failed", task_id=task.task_id, error=type(exc).__name__)
            self._move(task, "failed", "the node could not run the study (see the node's log)")
            return
        data = output.model_dump(mode="json")
        review = self.policy.federation.review_results
        self._move(task, "awaiting_result_review" if review else "completed", output=data)

    def _charge(self, task: LocalTask, round_: int) -> Charge:
        """A governed task's project and what is left of the study's cap at this node: the
        hold covers every round, so earlier rounds' spending counts against it."""
        before = [
            t.output.get("spent") or {}
            for t in self.inbox.all()
            if t.study_id == task.study_id and t.output and t.output.get("round", 1) < round_
        ]
        left = {
            name: float(task.envelope[name]) - sum(float(b.get(name, 0.0)) for b in before)
            for name in ("epsilon", "rho")
        }
        return Charge(task.envelope.get("project"), left["epsilon"], left["rho"])

    def report(self) -> None:
        """Tell the hub every state it has not acknowledged yet."""
        for task in self.inbox.all():
            if task.state != task.reported:
                self._report_one(task)

    def _report_one(self, task: LocalTask) -> bool:
        """Send the task's state; ``False`` when the hub has moved on (409: expired, or an
        upload it already stored differently)."""
        body: dict[str, Any] = {"state": task.state, "reason": task.reason}
        if task.state == "completed":
            body["output"] = task.output
        if task.reported is None and task.state != "delivered":
            self._send(task, {"state": "delivered"})
        try:
            self._send(task, body)
        except HubRefused as exc:
            if exc.status != 409:
                raise
            self.inbox.acknowledged(task.task_id, task.state)
            self.say(f"{task.task_id}: the hub did not take {task.state} ({exc.detail})")
            return False
        return True

    def _send(self, task: LocalTask, body: dict[str, Any]) -> None:
        self._request("POST", f"/api/v1/node/tasks/{task.task_id}", body)
        self.inbox.acknowledged(task.task_id, body["state"])

    def send_profile(self) -> None:
        """Tell the hub the node's profile (policy, data quality, budgets, open tasks, log)
        for its steward's pages; a hub that does not take profiles is left alone."""
        try:
            profile = profiles.build(self.store)
        except StoreBusy:
            return  # the store is in use: the next loop sends it
        try:
            self._request("POST", "/api/v1/node/profile", profiles.as_json(profile))
        except HubRefused as exc:
            self.say(f"the hub did not take the node's profile ({exc.detail})")
        self._profiled, self._profile_due = time.monotonic(), False

    def run(self, once: bool = False, wait: float = 20.0, pause: float = 1.0) -> None:
        """Poll and work until stopped (``once``: one poll, then the work it allows); the
        profile goes to the hub at the start, when tasks arrive or move (at most every
        :data:`PROFILE_SOON` seconds), and every :data:`PROFILE_EVERY` seconds."""
        while True:
            try:
                if self._profiled < 0:  # first: the steward's pages know the node early
                    self.send_profile()
                new = self.poll(0.0 if once else wait)
                done = self.work()
                self._profile_due = self._profile_due or bool(new or done)
                since = time.monotonic() - self._profiled
                if since >= PROFILE_EVERY or (self._profile_due and since >= PROFILE_SOON):
                    self.send_profile()
            except HubUnreachable as exc:
                if once:
                    raise
                self.say(f"hub unreachable ({exc}); retrying")
                time.sleep(pause)
            if once:
                return


class HubRefused(Exception):
    """The hub refused a request (4xx)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
