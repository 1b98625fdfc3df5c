"""The researcher's Python SDK: ``medlab.Client(url, token)``.

>>> client = Client("http://127.0.0.1:8400", token)          # doctest: +SKIP
>>> study = client.submit(load_spec(Path("study.yaml")))      # doctest: +SKIP
>>> study.wait(timeout=600).state                             # doctest: +SKIP
'completed'
>>> study.results()["analyses"][0]["name"]                    # doctest: +SKIP

``MEDLAB_HUB_URL`` and ``MEDLAB_TOKEN`` stand in for a URL or token not given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from medlab.errors import UsageError
from medlab.federation.client.office import HubError, Office
from medlab.federation.common.messages import StudyStatus, submission_message
from medlab.ledger.keys import Signer
from medlab.studies.spec import StudySpec

__all__ = ["Client", "HubError", "Study"]


class Client(Office):
    """A user's connection to the hub (``http`` given: an ``httpx.Client`` to use,
    for example one on an in-process hub)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        http: httpx.Client | None = None,
        key: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        url = url or os.environ.get("MEDLAB_HUB_URL")
        token = token or os.environ.get("MEDLAB_TOKEN")
        if http is None and not url:
            raise UsageError("no hub: give --hub URL or set MEDLAB_HUB_URL")
        if not token:
            raise UsageError("no token: give --token T or set MEDLAB_TOKEN")
        self.http = http or httpx.Client(base_url=str(url), timeout=timeout)
        self.headers = {"authorization": f"Bearer {token}"}
        self.signer = Signer.load_or_create(key) if key is not None else None

    def submit(
        self,
        spec: StudySpec | dict[str, Any],
        project: str | None = None,
        min_sites: int = 1,
        deadline_seconds: int = 86400,
        nodes: list[str] | None = None,
        epsilon: float = 0.0,
        rho: float = 0.0,
    ) -> Study:
        """Submit a study (cohort files already resolved) and return it; ``epsilon`` and
        ``rho``: the most privacy budget it may spend at each node (a governed hub holds it
        on the project's agreements)."""
        document = spec.model_dump(mode="json") if isinstance(spec, StudySpec) else spec
        body: dict[str, Any] = {
            "spec": document,
            "project": project,
            "min_sites": min_sites,
            "deadline_seconds": deadline_seconds,
            "nodes": nodes,
            "epsilon": epsilon,
            "rho": rho,
        }
        if self.signer is not None:
            body["signature"] = self.signer.sign(submission_message(document, project))
        found = self._call("POST", "/api/v1/studies", json=body).json()
        return Study(self, found["study_id"])

    def study(self, study_id: str) -> Study:
        """A study submitted before."""
        return Study(self, study_id)


class Study:
    """A submitted study."""

    def __init__(self, client: Client, study_id: str) -> None:
        self.client = client
        self.id = study_id

    def status(self) -> StudyStatus:
        """The study's state and each node's task."""
        found = self.client._call("GET", f"/api/v1/studies/{self.id}").json()
        return StudyStatus.model_validate(found)

    def wait(self, timeout: float = 3600.0, every: float = 0.5) -> StudyStatus:
        """The status once the study has ended — completed, failed, rejected, withdrawn or
        refused (``TimeoutError`` past ``timeout`` seconds)."""
        until = time.monotonic() + timeout
        while True:
            status = self.status()
            if status.state not in ("submitted", "running"):
                return status
            if time.monotonic() >= until:
                raise TimeoutError(f"{self.id} still running after {timeout:g} s")
            time.sleep(every)

    def file(self, name: str) -> bytes:
        """One result file."""
        return self.client._call("GET", f"/api/v1/studies/{self.id}/files/{name}").content

    def results(self) -> dict[str, Any]:
        """``results.json`` of a completed study."""
        import json

        data: dict[str, Any] = json.loads(self.file("results.json"))
        return data

    def fetch(self, out: Path) -> list[Path]:
        """Write every result file into ``out`` (the files ``medlab study run`` writes)."""
        status = self.status()
        if status.state != "completed":
            raise UsageError(f"{self.id} is {status.state}: {status.reason or 'no results yet'}")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in status.files:
            if "/" in name or name.startswith("."):
                raise UsageError(f"the hub named a file {name!r}; refused")
            path = out / name
            path.write_bytes(self.file(name))
            written.append(path)
        return written
