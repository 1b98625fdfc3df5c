"""The federation's rules one by one: task states, request signatures, the node's decision."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from tests import federation as fed

from medlab.errors import PolicyError
from medlab.federation.common import auth
from medlab.federation.common.messages import TRANSITIONS, Task, allowed, submission_message
from medlab.federation.node.checks import decide
from medlab.inputs import line_of
from medlab.ledger.keys import Signer, canonical
from medlab.privacy.policy import ReleasePolicy, parse_policy, tighten
from medlab.studies.spec import StudySpec


def test_task_states_move_only_forward() -> None:
    assert allowed("pending", "delivered") and allowed("running", "running")
    assert allowed("awaiting_approval", "running")
    assert not allowed("completed", "running") and not allowed("refused", "completed")
    assert not allowed("pending", "completed")  # a task is run before it completes
    for state in ("completed", "refused", "failed", "expired"):
        assert TRANSITIONS[state] == frozenset()


def test_request_signatures(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "k")
    h = auth.sign_request(signer, "n", "POST", "/api/v1/node/tasks/t", b"{}")
    signed = auth.Signed(h[auth.NODE], h[auth.TIMESTAMP], h[auth.NONCE], h[auth.SIGNATURE])
    pem = signer.public_pem
    assert auth.check_request(pem, "POST", "/api/v1/node/tasks/t", b"{}", signed) is None
    assert "signature" in str(
        auth.check_request(pem, "POST", "/api/v1/node/tasks/t", b"{ }", signed)
    )
    assert "signature" in str(
        auth.check_request(pem, "POST", "/api/v1/node/tasks/u", b"{}", signed)
    )
    late = time.time() + auth.MAX_AGE_SECONDS + 5
    assert "old" in str(
        auth.check_request(pem, "POST", "/api/v1/node/tasks/t", b"{}", signed, late)
    )
    short = auth.Signed(signed.node, signed.timestamp, "abc", signed.signature)
    assert "nonce" in str(auth.check_request(pem, "POST", "/api/v1/node/tasks/t", b"{}", short))
    assert auth.token_hash("a") != auth.token_hash("b") and auth.new_token().startswith("mlt_")


def _task(hub: Signer, **change: Any) -> dict[str, Any]:
    spec = fed.spec()
    fields: dict[str, Any] = {
        "task_id": "tk_1",
        "study_id": "st_1",
        "node": "hospital_a",
        "spec": spec,
        "spec_hash": StudySpec.model_validate(spec).digest(),
        "project": "p1",
        "researcher": "ana",
        "min_sites": 1,
        "sites": 3,
        "deadline": "2030-01-01T00:00:00+00:00",
        "issued_at": "2026-01-01T00:00:00+00:00",
        "hub_key_id": hub.key_id,
    }
    fields.update(change)
    task = Task(**fields)
    return task.model_copy(update={"signature": hub.sign(canonical(task.body()))}).model_dump(
        mode="json"
    )


def _policy(**rules: Any) -> ReleasePolicy:
    return parse_policy({"federation": rules})


@pytest.fixture
def hub(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "hub.key")


def test_the_node_checks_the_hubs_signature(hub: Signer, tmp_path: Path) -> None:
    task = _task(hub)
    assert decide(task, hub.public_pem, _policy()).refused is None
    task["spec"]["analyses"][0]["name"] = "changed"  # one changed field after signing
    assert decide(task, hub.public_pem, _policy()).refused == (
        "the hub's signature over the task does not verify"
    )
    other = Signer.load_or_create(tmp_path / "other.key")
    assert "hub's signature" in str(decide(_task(other), hub.public_pem, _policy()).refused)
    wrong_hash = _task(hub, spec_hash="sha256:00")
    assert decide(wrong_hash, hub.public_pem, _policy()).refused == (
        "the study spec does not match its hash"
    )


def test_the_nodes_own_policy_decides(hub: Signer) -> None:
    task = _task(hub)
    assert decide(task, hub.public_pem, _policy(allowed_projects=["p2"])).refused == (
        "project p1 not allowed at this node"
    )
    assert decide(task, hub.public_pem, _policy(allowed_researchers=["bo"])).refused == (
        "researcher ana not allowed at this node"
    )
    no_comparative = parse_policy({"allowed_analyses": ["incidence", "characterization"]})
    assert decide(task, hub.public_pem, no_comparative).refused == (
        "analysis type comparative not allowed at this node"
    )
    assert decide(task, hub.public_pem, _policy(min_sites=4)).refused == (
        "the study has 3 sites; this node takes part in studies of at least 4"
    )
    assert decide(task, hub.public_pem, _policy()).needs_approval  # the default: each task
    assert not decide(task, hub.public_pem, _policy(pre_approved_projects=["p1"])).needs_approval
    assert not decide(task, hub.public_pem, _policy(approval="none")).needs_approval


def test_a_researchers_signature(hub: Signer, tmp_path: Path) -> None:
    unsigned = _task(hub)
    required = _policy(require_researcher_signature=True)
    assert "researcher's signature" in str(decide(unsigned, hub.public_pem, required).refused)
    ana = Signer.load_or_create(tmp_path / "ana.key")
    spec = fed.spec()
    good = ana.sign(submission_message(spec, "p1"))
    signed = _task(
        hub,
        researcher_key=ana.public_pem,
        researcher_signature=good,
        submitted_project="p1",
    )
    assert decide(signed, hub.public_pem, required).refused is None
    forged = _task(
        hub,
        researcher_key=ana.public_pem,
        researcher_signature=good,
        submitted_project="p2",  # the hub moved it to another project
    )
    assert "researcher's signature" in str(decide(forged, hub.public_pem, _policy()).refused)


def test_a_request_may_only_tighten_the_federation_rules() -> None:
    node = _policy(allowed_projects=["p1"], min_sites=2, review_results=True)
    assert tighten(node, {"federation": {"min_sites": 3}}, "r").federation.min_sites == 3
    for looser in (
        {"allowed_projects": ["p1", "p2"]},
        {"allowed_projects": None},
        {"min_sites": 1},
        {"review_results": False},
    ):
        with pytest.raises(PolicyError, match=r"\$\.federation\."):
            tighten(node, {"federation": looser}, "r")
    with pytest.raises(PolicyError, match="approval none"):
        tighten(_policy(), {"federation": {"approval": "none"}}, "r")


def test_problems_name_their_line() -> None:
    text = "version: x\nfederation:\n  approval: sometimes\n  min_sites: 0\n"
    assert line_of(text, ("federation", "min_sites")) == 4
    assert line_of(text, ("federation", "approval")) == 3
    assert line_of(text, ("federation", "missing")) == 2
    assert line_of('{"a": [1,\n 2]}', ("a", 1)) == 2


def test_a_cohort_in_words() -> None:
    from medlab.cohorts.model import parse_definition
    from medlab.cohorts.words import describe

    definition = parse_definition(
        {
            "concept_sets": [
                {
                    "id": 0,
                    "name": "apixaban",
                    "items": [{"concept_id": 43013024, "include_descendants": True}],
                },
                {"id": 1, "items": [{"concept_id": 192671}]},
            ],
            "primary": {
                "criteria": [
                    {"domain": "drug_exposure", "codeset_id": 0, "first_occurrence": True}
                ],
                "prior_days": 365,
            },
            "inclusion_rules": [
                {
                    "name": "no prior bleed",
                    "expression": {
                        "type": "ALL",
                        "criteria": [
                            {
                                "criterion": {"domain": "condition_occurrence", "codeset_id": 1},
                                "occurrence": {"type": "exactly", "count": 0},
                            }
                        ],
                    },
                }
            ],
            "end_strategy": {"type": "date_offset", "field": "start", "offset": 30},
        }
    )
    lines = describe(definition, {43013024: "apixaban"}.get)
    assert lines[0] == "concept set 0 (apixaban): 43013024 apixaban and descendants"
    assert lines[2].startswith(
        "entry: first drug exposure of concept set 0; with at least 365 days"
    )
    assert lines[3] == "then the first qualifying event per person"
    assert lines[4] == "inclusion rule 1 (no prior bleed): all of:"
    assert lines[5].strip().startswith("exactly 0 condition occurrence of concept set 1")
    assert lines[-1] == "ends: 30 days after the entry event's start date"
