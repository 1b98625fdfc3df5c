"""The federation's wire messages (protocol ``medlab-fed/1``) and its task states.

A study submitted to the hub becomes one task per node. The hub signs each task; the node
verifies it, decides under its own policy, and reports each state change back. Only a node
moves its task forward (``delivered`` onwards); the hub alone marks a task ``expired`` when
the study's deadline passes. A task's round carries the parameters the hub computed from
the previous round's released aggregates (multi-round analyses).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medlab.ledger.keys import canonical

PROTOCOL: Literal["medlab-fed/1"] = "medlab-fed/1"

TaskState = Literal[
    "pending",
    "delivered",
    "awaiting_approval",
    "running",
    "awaiting_result_review",
    "completed",
    "refused",
    "failed",
    "expired",
]
FINAL: frozenset[str] = frozenset({"completed", "refused", "failed", "expired"})

# Every legal move, from each state. The node reports delivered .. completed/refused/failed;
# a node restarted after a crash may report a state again (the same move is idempotent).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"delivered", "refused", "failed", "expired"}),
    "delivered": frozenset({"awaiting_approval", "running", "refused", "failed", "expired"}),
    "awaiting_approval": frozenset({"running", "refused", "failed", "expired"}),
    "running": frozenset({"awaiting_result_review", "completed", "refused", "failed", "expired"}),
    "awaiting_result_review": frozenset({"completed", "refused", "failed", "expired"}),
    "completed": frozenset(),
    "refused": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
}


def allowed(current: str, new: str) -> bool:
    """Whether a task may move from ``current`` to ``new`` (staying put is allowed)."""
    return new == current or new in TRANSITIONS.get(current, frozenset())


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Submission(_Message):
    """A researcher's study submission: the spec (a study spec document), its project, the
    fewest sites that must answer, a deadline (seconds from submission) and, when the
    researcher has a registered key, the signature over the canonical JSON of
    ``{"spec": spec, "project": project}``."""

    spec: dict[str, Any]
    project: Name | None = None
    min_sites: Annotated[int, Field(ge=1, le=1000)] = 1
    nodes: Annotated[list[Name], Field(max_length=1000)] | None = None
    deadline_seconds: Annotated[int, Field(ge=10, le=30 * 86400)] = 86400
    signature: Annotated[str, Field(max_length=200)] | None = None
    # The most privacy budget the study may spend at each node (a governed hub holds it on
    # every node's agreement at submission; the node never spends more for it).
    epsilon: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 0.0
    rho: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 0.0


class Task(_Message):
    """A task as the hub signs it for one node (``signature``: the hub's over the canonical
    JSON of every other field)."""

    protocol: Literal["medlab-fed/1"] = PROTOCOL
    task_id: str
    study_id: str
    node: str
    round: int = 1
    params: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any]
    spec_hash: str
    project: str | None
    researcher: str
    researcher_key: str | None = None
    researcher_signature: str | None = None
    submitted_project: str | None = None  # the project as the researcher signed it
    min_sites: int
    sites: int  # how many nodes the study was sent to
    deadline: str  # ISO 8601 UTC
    issued_at: str
    hub_key_id: str
    # A governed hub: the data-use agreement the task runs under and the most budget it may
    # spend at this node (the node checks both against the agreement its steward signed).
    agreement: str | None = None
    epsilon: float | None = None
    rho: float | None = None
    signature: str = ""

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return self.model_dump(mode="json", exclude={"signature"})


class TaskReport(_Message):
    """A node's report on one of its tasks: its new state, a reason for the researcher
    (refused / failed; never internals), and on completion the node's output (released
    payloads only, :class:`medlab.studies.local.NodeOutput`)."""

    state: TaskState
    reason: Annotated[str, Field(max_length=2000)] | None = None
    output: dict[str, Any] | None = None


class TaskStatus(_Message):
    """One node's task as the researcher sees it."""

    node: str
    task_id: str
    round: int = 1
    state: TaskState
    reason: str | None = None
    updated_at: str


class StudyStatus(_Message):
    """A study as the researcher sees it (``submitted``: waiting for its two approvals on a
    governed hub; see :mod:`medlab.governance.states`)."""

    study_id: str
    name: str
    state: Literal[
        "submitted", "running", "completed", "failed", "rejected", "withdrawn", "refused"
    ]
    reason: str | None = None
    min_sites: int
    deadline: str
    tasks: list[TaskStatus]
    files: list[str] = Field(default_factory=list)
    project: str | None = None
    researcher: str | None = None
    nodes: list[str] = Field(default_factory=list)
    approvals: list[dict[str, Any]] = Field(default_factory=list)


def submission_message(spec: dict[str, Any], project: str | None) -> bytes:
    """What a researcher's key signs of a submission: the canonical JSON of the spec exactly
    as submitted and the submission's ``project``."""
    return canonical({"spec": spec, "project": project})


AGREEMENT_TERMS = (
    "agreement",
    "project",
    "node",
    "analyses",
    "domains",
    "policy_version",
    "epsilon",
    "rho",
    "expires_at",
)


def agreement_message(terms: dict[str, Any]) -> bytes:
    """What a node's key signs of a data-use agreement: the canonical JSON of its terms
    (:data:`AGREEMENT_TERMS`)."""
    return b"medlab-agreement-v1\n" + canonical({k: terms[k] for k in AGREEMENT_TERMS})


def json_path(loc: tuple[int | str, ...] | list[int | str], root: str = "$") -> str:
    """A validation error's location as a JSON path (``$.spec.cohorts[0].name``)."""
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


Short = Annotated[str, Field(max_length=300)]
Line = Annotated[str, Field(max_length=2000)]


class DQCheck(_Message):
    """One data-quality check as a node reports it: its outcome as a share, never counts."""

    name: Short
    check: Short
    category: Short
    table: Short
    field: Short | None = None
    description: Line = ""
    pct_violated: Annotated[float, Field(ge=0, le=100)]
    threshold: Annotated[float, Field(ge=0, le=100)]
    passed: bool


class DQSummary(_Message):
    """A node's data-quality checks on one snapshot of its store."""

    fingerprint: Short
    checked_at: Short
    checks: Annotated[list[DQCheck], Field(max_length=5000)]


class ProfilePolicy(_Message):
    """The node's release policy: its version, digest and the rules in words."""

    version: Short
    digest: Short
    version_no: int
    set_at: Short | None = None
    set_by: Short | None = None
    words: Annotated[list[Line], Field(max_length=200)]


class ProfileBudget(_Message):
    """A project's privacy budget at the node."""

    project: Short
    epsilon_granted: float
    epsilon_spent: float
    rho_granted: float
    rho_spent: float


class ProfileTask(_Message):
    """A task the node holds that is not final."""

    task_id: Short
    study_id: Short
    study: Short
    state: TaskState
    received_at: Short


class NodeProfile(_Message):
    """What a node agent tells the hub about itself for its steward's pages (signed like
    every node request): its agent version and store, its policy, its data-quality checks,
    its budgets, its open tasks and the newest entries of its transparency log. Never a row
    of data, never a count."""

    agent_version: Short
    store: Short
    policy: ProfilePolicy
    dq: DQSummary | None = None
    budgets: Annotated[list[ProfileBudget], Field(max_length=1000)]
    tasks: Annotated[list[ProfileTask], Field(max_length=1000)]
    log: Annotated[list[dict[str, Any]], Field(max_length=500)]
    # The node's local console while it runs (``medlab node console``): a loopback address,
    # reachable from the node's own machine only.
    console: (
        Annotated[str, Field(pattern=r"^http://(127\.0\.0\.1|localhost|\[::1\]):\d{1,5}/$")] | None
    ) = None
