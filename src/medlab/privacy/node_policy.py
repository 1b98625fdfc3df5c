"""The steward's release policy, kept in the node store.

The policy every release at a node is judged by is the one its steward set there with
``medlab node policy set STORE FILE`` (until then, medlab's strict defaults). Each setting is
kept with its time, who set it and its digest in ``medlab.release_policy`` (the history is
kept), and logged in the node's transparency log in the same transaction. A researcher or
operator may pass a policy with a request (``--policy``), and it may only tighten the node's:
:func:`effective` merges it onto the node's policy and refuses any setting that loosens it,
naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from medlab.cdm import outbox
from medlab.cdm.store import META_SCHEMA, open_store, rows_if_recorded
from medlab.errors import UsageError
from medlab.privacy.policy import ReleasePolicy, parse_policy, read_document, tighten

TABLE = f"{META_SCHEMA}.release_policy"
_CREATE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    version_no INTEGER PRIMARY KEY, set_at TIMESTAMP NOT NULL, set_by VARCHAR NOT NULL,
    digest VARCHAR NOT NULL, policy VARCHAR NOT NULL)"""


@dataclass(frozen=True)
class StoredPolicy:
    """The node's policy and when and by whom it was set (``version_no`` 0: the defaults,
    never set)."""

    policy: ReleasePolicy
    version_no: int
    set_at: str | None
    set_by: str | None


def current(con: duckdb.DuckDBPyConnection) -> StoredPolicy:
    """The policy in force on the node the connection is open on."""
    rows = rows_if_recorded(
        con,
        f"SELECT version_no, set_at, set_by, policy FROM {TABLE} ORDER BY version_no DESC LIMIT 1",
    )
    row = rows[0] if rows else None
    if row is None:
        return StoredPolicy(ReleasePolicy(), 0, None, None)
    number, set_at, set_by, text = row
    return StoredPolicy(
        parse_policy(json.loads(text), f"{TABLE} version {number}"),
        int(number),
        set_at.isoformat(timespec="seconds"),
        str(set_by),
    )


def node_policy(store: Path) -> StoredPolicy:
    """The policy in force on ``store``."""
    with open_store(store, read_only=True) as con:
        return current(con)


def set_policy(store: Path, policy: ReleasePolicy, by: str = "steward") -> StoredPolicy:
    """Make ``policy`` the node's policy (logged with its digest); returns it as stored."""
    if not by.strip():
        raise UsageError("say who sets the policy (--by)")
    with outbox.logged_transaction(store) as con:
        con.execute(_CREATE)
        before = current(con)
        number = before.version_no + 1
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        con.execute(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?)",
            [number, now, by, policy.digest(), policy.model_dump_json()],
        )
        outbox.stage(
            con,
            "policy_set",
            version_no=number,
            policy_version=policy.version,
            policy_digest=policy.digest(),
            previous_digest=before.policy.digest(),
            by=by,
        )
        stored = current(con)
    return stored


def effective(store: Path, request: Path | None) -> ReleasePolicy:
    """The policy a request to ``store`` is judged by: the node's, tightened by the policy
    file given with the request (``--policy``), which may not loosen any setting."""
    node = node_policy(store).policy
    if request is None:
        return node
    return tighten(node, read_document(request, "release policy"), str(request))


def describe(policy: ReleasePolicy) -> list[str]:
    """The policy in words, one line per rule."""
    k = policy.min_cell_count
    lines = [
        f"a count below {k} is suppressed"
        + ("" if policy.allow_zeros else ", and so is a zero")
        + "; a row whose complement or margins would reveal one is suppressed with it",
    ]
    if policy.count_protection == "rounding":
        rounding = {
            "none": "counts are shown exactly",
            "nearest5": "counts are rounded to the nearest 5",
            "midpoint6": "counts are rounded to midpoint-6 (6 * ceil(n / 6) - 3, OpenSAFELY)",
        }[policy.rounding]
        lines.append(rounding + "; person-time is rounded like counts")
    elif policy.count_protection == "cell_key":
        ck = policy.cell_key
        lines.append(
            f"counts move by a cell-key perturbation of at most ±{ck.max_perturbation} "
            f"(variance {ck.variance:g}), the same for the same persons every time"
        )
    else:
        lines.append("counts and sums carry differential-privacy noise, paid from the budget")
    if policy.precision == "none":
        lines.append("statistics are released at full precision")
    else:
        p = policy.precision
        lines.append(
            f"statistics at significant digits: ratios {p.ratio}, p-values {p.p_value}, "
            f"proportions {p.proportion}, SMDs {p.smd}, means and SDs {p.mean}"
        )
    d = policy.dominance
    lines.append(
        f"sums need {policy.min_group_size} contributors and pass dominance: the {d.n} largest "
        f"under {d.k:.0%} of the total, the rest at least {d.p:.0%} of the largest"
    )
    lines.append(
        f"models need {policy.min_events_per_parameter} events per parameter, "
        f"{policy.min_degrees_of_freedom} residual degrees of freedom and {k} events per arm"
    )
    dp = policy.differential_privacy
    if dp.enabled:
        loss = (
            f"epsilon {dp.epsilon_per_release:g}"
            if dp.mechanism == "laplace"
            else f"rho {dp.rho_per_release:g}"
        )
        lines.append(f"differentially private queries are on ({dp.mechanism}, {loss} each)")
    else:
        lines.append("differentially private queries are off")
    lines.append("analyses allowed: " + ", ".join(policy.allowed_analyses))
    lines.append(
        "record-level export is "
        + ("allowed after a k-anonymity check" if policy.record_level_export else "off")
    )
    f = policy.federation
    lines.append(
        "tasks from the hub: projects "
        + ("any" if f.allowed_projects is None else ", ".join(f.allowed_projects) or "none")
        + "; researchers "
        + ("any" if f.allowed_researchers is None else ", ".join(f.allowed_researchers) or "none")
        + f"; studies of at least {f.min_sites} site"
        + ("s" if f.min_sites != 1 else "")
    )
    if f.approval == "each_task":
        pre = f.pre_approved_projects
        lines.append(
            "the steward approves each task"
            + (f", except for the pre-approved projects {', '.join(pre)}" if pre else "")
        )
    else:
        lines.append("tasks the policy allows run without the steward's approval")
    lines.append(
        "the steward reviews each released payload before it is uploaded"
        if f.review_results
        else "released payloads are uploaded without a second review"
    )
    if f.require_researcher_signature:
        lines.append("a study must be signed by its researcher's registered key")
    return lines
