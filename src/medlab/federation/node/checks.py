"""The node's decision on a task, before any data is read: its signatures and its policy.

The node trusts nothing the hub says about a task that it can check itself: the hub's
signature over the task (with the key the node pinned), the researcher's signature over the
submission when there is one, the spec's hash, and then the node's own policy — projects,
researchers, analysis types, the fewest sites. A refusal names the rule, in words a
researcher may read (``refused: analysis type comparative not allowed at this node``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from medlab.federation.common.messages import Task, submission_message
from medlab.ledger.keys import canonical, key_id, verify
from medlab.privacy.policy import ReleasePolicy
from medlab.studies.spec import StudySpec, spec_from_document


@dataclass(frozen=True)
class Decision:
    """``refused``: why not (None: it may run); ``needs_approval``: the steward decides."""

    refused: str | None
    needs_approval: bool = False
    spec: StudySpec | None = None


AgreementCheck = Callable[[Task, StudySpec], str | None]


def decide(
    envelope: dict[str, object],
    hub_key: str,
    policy: ReleasePolicy,
    agreement: AgreementCheck | None = None,
) -> Decision:
    """Whether the task in ``envelope`` may run at this node (see the module docstring);
    ``agreement``: why the task may not run under the node's signed agreements (None: it
    may; :func:`medlab.federation.node.agreements.check`)."""
    try:
        task = Task.model_validate({k: v for k, v in envelope.items() if k != "state"})
    except ValidationError:
        return Decision("the task is not a medlab-fed/1 task")
    if task.hub_key_id != key_id(hub_key) or not verify(
        hub_key, canonical(task.body()), task.signature
    ):
        return Decision("the hub's signature over the task does not verify")
    rules = policy.federation
    if task.researcher_key is not None or rules.require_researcher_signature:
        message = submission_message(task.spec, task.submitted_project)
        signed = task.researcher_key is not None and task.researcher_signature is not None
        if not signed or not _signed_by(task, message):
            return Decision("the researcher's signature over the study does not verify")
    spec, problems = spec_from_document(task.spec)
    if spec is None:
        return Decision(f"the study spec is invalid ({problems[0][0]}: {problems[0][1]})")
    if spec.digest() != task.spec_hash:
        return Decision("the study spec does not match its hash")
    if rules.allowed_projects is not None and task.project not in rules.allowed_projects:
        return Decision(f"project {task.project or '(none)'} not allowed at this node")
    if rules.allowed_researchers is not None and task.researcher not in rules.allowed_researchers:
        return Decision(f"researcher {task.researcher} not allowed at this node")
    for analysis in spec.analyses:
        if analysis.type not in policy.allowed_analyses:
            return Decision(f"analysis type {analysis.type} not allowed at this node")
    if agreement is not None:
        refused = agreement(task, spec)
        if refused:
            return Decision(refused)
    if task.sites < rules.min_sites:
        return Decision(
            f"the study has {task.sites} sites; this node takes part in studies of at least "
            f"{rules.min_sites}"
        )
    pre_approved = task.project is not None and task.project in rules.pre_approved_projects
    needs = rules.approval == "each_task" and not pre_approved
    return Decision(None, needs_approval=needs, spec=spec)


def _signed_by(task: Task, message: bytes) -> bool:
    assert task.researcher_key is not None and task.researcher_signature is not None
    return verify(task.researcher_key, message, task.researcher_signature)
