"""The node's own word on data-use agreements: what its steward signs, and every rule the
agent re-checks on a task against the copy it signed (never the hub's word)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from tests import federation as fed

from medlab.errors import UsageError
from medlab.federation.common.messages import Task, agreement_message
from medlab.federation.node import agreements
from medlab.federation.node.inbox import Agreements
from medlab.ledger import parties
from medlab.ledger.keys import verify
from medlab.privacy import budget
from medlab.privacy.node_policy import node_policy
from medlab.studies.spec import StudySpec
from medlab.synth.cohorts import new_users, outcome


@pytest.fixture
def store(synth_small: Path, tmp_path: Path) -> Path:
    (found,) = fed.copy_sites(synth_small, tmp_path, ("hospital_a",))
    fed.federation_policy(found, require_agreement=True)
    return found


LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)


def _terms(**changes: Any) -> dict[str, Any]:
    terms = {
        "agreement": "ag_1",
        "project": "p1",
        "node": "hospital_a",
        "analyses": ["incidence"],
        "domains": ["condition_occurrence", "drug_exposure"],
        "policy_version": "test-1",
        "epsilon": 2.0,
        "rho": 0.0,
        "expires_at": LATER.isoformat(timespec="seconds"),
        "state": "draft",  # the hub's view of it comes along and is ignored
    }
    return terms | changes


def _task(**changes: Any) -> Task:
    fields: dict[str, Any] = {
        "task_id": "tk_1",
        "study_id": "st_1",
        "node": "hospital_a",
        "spec": {},
        "spec_hash": "sha256:x",
        "project": "p1",
        "researcher": "alan",
        "min_sites": 1,
        "sites": 1,
        "deadline": "2030-01-01T00:00:00+00:00",
        "issued_at": "2026-01-01T00:00:00+00:00",
        "hub_key_id": "k",
        "agreement": "ag_1",
        "epsilon": 1.0,
        "rho": 0.0,
    }
    return Task.model_validate(fields | changes)


def _spec(analysis: str = "incidence", domain: str = "condition_occurrence") -> StudySpec:
    cohort = outcome(fed.GI_BLEED)
    cohort["primary"]["criteria"][0]["domain"] = domain
    analyses = {
        "incidence": {"type": "incidence", "name": "i", "target": 1, "outcome": 3},
        "feasibility": {"type": "feasibility", "name": "f", "cohort": 1},
    }
    return StudySpec.model_validate(
        {
            "name": "s",
            "cohorts": [
                {"id": 1, "name": "t", "definition": new_users(fed.APIXABAN)},
                {"id": 3, "name": "o", "definition": cohort},
            ],
            "analyses": [analyses[analysis]],
        }
    )


def test_signing_checks_the_terms_records_them_and_grants_the_budget(store: Path) -> None:
    for bad, words in (
        ({"node": "hospital_b"}, "is for node hospital_b"),
        ({"policy_version": "old-1"}, "policy version old-1"),
        ({"expires_at": "2020-01-01T00:00:00+00:00"}, "date has passed"),
    ):
        with pytest.raises(UsageError, match=words):
            agreements.sign(store, _terms(**bad), "sam")
    assert Agreements(store).all() == []
    assert budget.status(store, "p1").epsilon_granted == 0.0
    signature = agreements.sign(store, _terms(), "sam")
    message = agreement_message(_terms())
    assert verify(parties.node(store).signer.public_pem, message, signature)
    assert budget.status(store, "p1").epsilon_granted == 2.0
    (kept,) = Agreements(store).all()
    assert (kept.state, kept.signed_by, "state" in kept.terms) == ("signed", "sam", False)
    with pytest.raises(UsageError, match="signed at this node already"):
        agreements.sign(store, _terms(), "sam")
    # A later agreement's budget comes on top of what the project spent here before.
    budget.charge(store, "p1", epsilon=1.5, query_key="q", purpose="test")
    agreements.sign(store, _terms(agreement="ag_2", epsilon=3.0), "sam")
    after = budget.status(store, "p1")
    assert (after.epsilon_granted, after.epsilon_remaining) == (4.5, 3.0)


def test_every_task_is_checked_against_the_signed_copy(store: Path) -> None:
    policy = node_policy(store).policy
    check = agreements.check
    assert "under a data-use agreement" in str(check(store, _task(agreement=None), _spec(), policy))
    assert "not signed at this node" in str(check(store, _task(), _spec(), policy))
    agreements.sign(store, _terms(), "sam")
    assert check(store, _task(), _spec(), policy) is None
    assert "is for project p1" in str(check(store, _task(project="p2"), _spec(), policy))
    assert "feasibility is outside" in str(check(store, _task(), _spec("feasibility"), policy))
    assert "domain measurement is outside" in str(
        check(store, _task(), _spec(domain="measurement"), policy)
    )
    assert "epsilon cap" in str(check(store, _task(epsilon=3.0), _spec(), policy))
    assert "epsilon cap" in str(check(store, _task(epsilon=None), _spec(), policy))
    fed.federation_policy(store, require_agreement=True, min_sites=2)  # same version: fine
    assert check(store, _task(), _spec(), node_policy(store).policy) is None
    changed = node_policy(store).policy.model_copy(update={"version": "test-2"})
    assert "policy is now test-2" in str(check(store, _task(), _spec(), changed))
    Agreements(store).move("ag_1", "suspended", "signed", "a complaint")
    assert "suspended at this node" in str(check(store, _task(), _spec(), policy))
    with pytest.raises(UsageError, match="not signed"):
        Agreements(store).move("ag_1", "suspended", "signed", None)
    Agreements(store).move("ag_1", "signed", "suspended", None)
    assert check(store, _task(), _spec(), policy) is None


def test_a_request_cannot_loosen_require_agreement(store: Path) -> None:
    from medlab.errors import PolicyError
    from medlab.privacy.policy import tighten

    ours = node_policy(store).policy
    assert ours.federation.require_agreement
    with pytest.raises(PolicyError, match="require_agreement is false"):
        tighten(ours, {"federation": {"require_agreement": False}}, "the request")
