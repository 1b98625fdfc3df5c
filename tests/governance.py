"""A governed lab for tests: a hub in authorized mode with an operator, one hospital
organisation and steward per node, a pharma organisation with a lead and an analyst, a CRO
researcher outside the project, an auditor, a project and an active agreement at every
node (signed at the node with its key, countersigned by the operator)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.federation.client.sdk import Client
from medlab.federation.hub.service import Hub
from medlab.federation.node import agreements
from medlab.ledger import parties
from medlab.privacy.node_policy import node_policy
from tests import federation as fed

ANALYSES = ["incidence", "characterization", "comparative"]
DOMAINS = ["drug_exposure", "condition_occurrence"]


@dataclass
class Lab:
    """The parties of a governed lab, each with their own client."""

    hub: Hub
    http: Any
    stores: list[Path]
    clients: dict[str, Client] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    agreements: dict[str, str] = field(default_factory=dict)  # node -> agreement id

    def __getitem__(self, user: str) -> Client:
        return self.clients[user]

    def add(self, user: str, token: str) -> Client:
        self.tokens[user] = token
        self.clients[user] = Client(token=token, http=self.http)
        return self.clients[user]


def steward_of(store: Path) -> str:
    """The steward user of a node."""
    return f"steward-{store.stem}"


def build(
    hub: Hub,
    http: Any,
    stores: list[Path],
    project: str = "apixaban-safety",
    epsilon: float = 0.0,
    analyses: list[str] | None = None,
    expires_in: dt.timedelta = dt.timedelta(days=180),
) -> Lab:
    """The governed lab over ``hub`` (authorized mode, just created) and ``stores``."""
    lab = Lab(hub, http, stores)
    op = lab.add("olga", hub.bootstrap("olga"))
    for org, kind in (("pharma-x", "pharma"), ("cro-y", "cro"), ("regulator-z", "regulator")):
        op.add_organisation(org, kind)
    for store in stores:
        org = f"org-{store.stem}"
        op.add_organisation(org, "hospital")
        op.add_node(store.stem, parties.node(store).signer.public_pem, org)
        lab.add(steward_of(store), op.add_user(steward_of(store), "steward", org)["token"])
    for user, role, org in (
        ("rita", "researcher", "pharma-x"),
        ("alan", "researcher", "pharma-x"),
        ("carl", "researcher", "cro-y"),
        ("aude", "auditor", "regulator-z"),
        ("otto", "operator", "operator"),
    ):
        lab.add(user, op.add_user(user, role, org)["token"])
    now = dt.datetime.now(dt.UTC)
    op.add_project(
        project, "pharma-x", "bleeding on apixaban", "rita", now + dt.timedelta(days=365)
    )
    lab["rita"].add_member(project, "alan", "analyst")
    for store in stores:
        sign(lab, store, project, epsilon, analyses or ANALYSES, now + expires_in)
    return lab


def sign(
    lab: Lab,
    store: Path,
    project: str,
    epsilon: float,
    analyses: list[str],
    expires_at: dt.datetime,
) -> str:
    """Draft (the lead), sign at the node (its steward) and activate (the operator) the
    project's agreement at ``store``'s node; returns its id."""
    version = node_policy(store).policy.version
    drafted = lab["rita"].add_agreement(
        project, store.stem, analyses, DOMAINS, version, expires_at, epsilon=epsilon
    )
    steward = steward_of(store)
    signature = agreements.sign(store, lab[steward].agreement(drafted["agreement"]), steward)
    lab[steward].move_agreement(drafted["agreement"], "signed", signature)
    lab["olga"].move_agreement(drafted["agreement"], "active")
    lab.agreements[store.stem] = drafted["agreement"]
    return str(drafted["agreement"])


def approve_everywhere(stores: list[Path]) -> None:
    """Node policies that take the study without a steward's click (the test drives the
    hub's approvals; node approvals are tested on their own)."""
    for store in stores:
        fed.federation_policy(store, approval="none", require_agreement=True)
