"""The SDK's governance calls (part of :class:`medlab.federation.client.sdk.Client`): users
and tokens, organisations, nodes, projects and members, agreements, approvals, usage and
the audit trail. Each is one REST call; the hub checks the caller's role on every one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from medlab.errors import MedlabError, UsageError
from medlab.federation.common.messages import StudyStatus


def _when(moment: dt.datetime | str | None) -> str | None:
    if moment is None or isinstance(moment, str):
        return moment
    return moment.isoformat()


class HubError(MedlabError):
    """The hub refused a request; the message is its problem detail."""

    exit_code = 10

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        errors = problem.get("errors") or []
        where = "; ".join(f"{e.get('path')}: {e.get('message')}" for e in errors[:5])
        detail = problem.get("detail") or problem.get("title") or "refused"
        super().__init__(f"the hub answered {status}: {detail}" + (f" ({where})" if where else ""))
        self.status = status
        self.problem = problem


class Office:
    """Calls to the hub's API with this client's token (``http``, ``headers``), and the
    governance ones."""

    http: httpx.Client
    headers: dict[str, str]

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, headers=self.headers, **kw)
        except httpx.HTTPError as exc:
            raise UsageError(f"the hub did not answer ({exc})") from None
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:200]}
            raise HubError(response.status_code, problem)
        return response

    def _json(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        kept = {k: v for k, v in params.items() if v is not None}
        if body is None:
            return self._call(method, path, params=kept).json()
        return self._call(method, path, json=body, params=kept).json()

    # -- who -----------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        """Who this client's token belongs to."""
        found: dict[str, Any] = self._json("GET", "/api/v1/me")
        return found

    def add_organisation(self, name: str, kind: str) -> dict[str, Any]:
        """Add an organisation (operator)."""
        return dict(self._json("POST", "/api/v1/organisations", {"name": name, "kind": kind}))

    def organisations(self) -> list[dict[str, Any]]:
        """Every organisation."""
        return list(self._json("GET", "/api/v1/organisations"))

    def add_user(
        self,
        name: str,
        role: str,
        organisation: str | None = None,
        public_key: str | None = None,
        scopes: list[str] | None = None,
        days: int = 90,
    ) -> dict[str, Any]:
        """Add a user (operator); the answer carries their first token, shown once."""
        body = {
            "name": name,
            "role": role,
            "organisation": organisation,
            "public_key": public_key,
            "scopes": scopes,
            "days": days,
        }
        return dict(self._json("POST", "/api/v1/users", body))

    def users(self) -> list[dict[str, Any]]:
        """Every user (operator, auditor)."""
        return list(self._json("GET", "/api/v1/users"))

    def add_token(
        self, user: str, scopes: list[str] | None = None, days: int = 90
    ) -> dict[str, Any]:
        """Another token for ``user`` (the operator, or the user for themself)."""
        body = {"scopes": scopes, "days": days}
        return dict(self._json("POST", f"/api/v1/users/{user}/tokens", body))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token."""
        return dict(self._json("DELETE", f"/api/v1/tokens/{token_id}"))

    # -- nodes and projects ----------------------------------------------------------------

    def add_node(self, name: str, public_key: str, organisation: str) -> dict[str, Any]:
        """Register a node of a hospital organisation (operator)."""
        body = {"name": name, "public_key": public_key, "organisation": organisation}
        return dict(self._json("POST", "/api/v1/nodes", body))

    def nodes(self) -> list[dict[str, Any]]:
        """Every node."""
        return list(self._json("GET", "/api/v1/nodes"))

    def add_project(
        self,
        name: str,
        organisation: str,
        purpose: str,
        lead: str,
        ends: dt.datetime | str,
        starts: dt.datetime | str | None = None,
    ) -> dict[str, Any]:
        """Open a project with its lead (operator)."""
        body = {
            "name": name,
            "organisation": organisation,
            "purpose": purpose,
            "lead": lead,
            "starts": _when(starts),
            "ends": _when(ends),
        }
        return dict(self._json("POST", "/api/v1/projects", body))

    def projects(self) -> list[dict[str, Any]]:
        """The projects you may see."""
        return list(self._json("GET", "/api/v1/projects"))

    def project(self, name: str) -> dict[str, Any]:
        """One project and its members."""
        return dict(self._json("GET", f"/api/v1/projects/{name}"))

    def add_member(self, project: str, user: str, role: str) -> dict[str, Any]:
        """Add a member (the operator, or the project's lead)."""
        body = {"user": user, "role": role}
        return dict(self._json("POST", f"/api/v1/projects/{project}/members", body))

    # -- agreements ----------------------------------------------------------------------

    def add_agreement(
        self,
        project: str,
        node: str,
        analyses: list[str],
        domains: list[str],
        policy_version: str,
        expires_at: dt.datetime | str,
        epsilon: float = 0.0,
        rho: float = 0.0,
    ) -> dict[str, Any]:
        """Draft an agreement of ``project`` with ``node``."""
        body = {
            "node": node,
            "analyses": analyses,
            "domains": domains,
            "policy_version": policy_version,
            "epsilon": epsilon,
            "rho": rho,
            "expires_at": _when(expires_at),
        }
        return dict(self._json("POST", f"/api/v1/projects/{project}/agreements", body))

    def agreements(self, project: str) -> list[dict[str, Any]]:
        """The project's agreements you may see."""
        return list(self._json("GET", f"/api/v1/projects/{project}/agreements"))

    def agreement(self, agreement_id: str) -> dict[str, Any]:
        """One agreement."""
        return dict(self._json("GET", f"/api/v1/agreements/{agreement_id}"))

    def move_agreement(
        self,
        agreement_id: str,
        state: str,
        signature: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Move an agreement (signed: with the node's signature; active, suspended, expired)."""
        body = {"state": state, "signature": signature, "reason": reason}
        return dict(self._json("POST", f"/api/v1/agreements/{agreement_id}/state", body))

    # -- studies -------------------------------------------------------------------------

    def studies(self) -> list[dict[str, Any]]:
        """The studies you may see."""
        return list(self._json("GET", "/api/v1/studies"))

    def approve(self, study_id: str) -> StudyStatus:
        """Approve a submitted study (its project's lead, or the operator as reviewer)."""
        found = self._json("POST", f"/api/v1/studies/{study_id}/approvals", {})
        return StudyStatus.model_validate(found)

    def reject(self, study_id: str, reason: str) -> StudyStatus:
        """Reject a submitted study."""
        found = self._json("POST", f"/api/v1/studies/{study_id}/rejection", {"reason": reason})
        return StudyStatus.model_validate(found)

    def withdraw(self, study_id: str, reason: str) -> StudyStatus:
        """Withdraw your own submitted study."""
        found = self._json("POST", f"/api/v1/studies/{study_id}/withdrawal", {"reason": reason})
        return StudyStatus.model_validate(found)

    # -- usage and audit -----------------------------------------------------------------

    def usage(self, project: str) -> dict[str, Any]:
        """A project's metered usage and budgets."""
        return dict(self._json("GET", f"/api/v1/projects/{project}/usage"))

    def usage_csv(self, project: str | None = None) -> str:
        """Usage per project and node, as CSV (the billing export)."""
        params = {} if project is None else {"project": project}
        return self._call("GET", "/api/v1/usage.csv", params=params).text

    def audit(
        self,
        user: str | None = None,
        project: str | None = None,
        study: str | None = None,
        since: dt.datetime | str | None = None,
    ) -> list[dict[str, Any]]:
        """The hub's audit trail, filtered (operator, auditor)."""
        return list(
            self._json(
                "GET", "/api/v1/audit", user=user, project=project, study=study, since=_when(since)
            )
        )
