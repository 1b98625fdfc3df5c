"""Schemathesis against the hub's own OpenAPI document: generated requests to every
endpoint, as the operator and as a researcher, a bounded number of examples with a fixed
seed (derandomized). No answer is a 5xx, and every answer conforms to the document: its
status code is declared, its content type and body match the declared schema."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests import federation as fed
from tests import governance as g

from medlab.federation.hub.app import create_app
from medlab.federation.hub.service import init_hub
from medlab.governance import audit

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 120  # over the whole API, per user


def test_the_hub_api_holds_to_its_openapi_document(synth_small: Path, tmp_path: Path) -> None:
    (store,) = fed.copy_sites(synth_small, tmp_path / "nodes", ("hospital_a",))
    fed.federation_policy(store, approval="each_task")
    hub = init_hub(tmp_path / "hub")
    app = create_app(hub)
    lab = g.build(hub, TestClient(app, base_url="http://hub"), [store], analyses=["incidence"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    document = schema.raw_schema
    assert document["openapi"].startswith("3.1")
    for user in ("olga", "rita"):
        headers = {"authorization": f"Bearer {lab.tokens[user]}"}

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(headers=headers))
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        conforms()
    # It reached the endpoints: most operations were called, and refusals came back too.
    calls = [e for e in audit.events(hub.party.log_dir) if e["type"] == "api"]
    assert len({e["operation"] for e in calls}) >= 20
    assert {e["status"] for e in calls} >= {200, 201, 404, 422}
