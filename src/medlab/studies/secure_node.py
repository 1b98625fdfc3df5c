"""A node's side of an analysis fitted on secure sums (a pooled model, a comparative
analysis's pooled estimates, incidence and characterization tables summed when a node
releases no site-level numbers): in round 1 whether it may contribute (and what the set-up
needs: its propensity covariates, its tables' skeleton), then its message of each
secure-aggregation round (:mod:`medlab.studies.secure` is the hub's side). It signs one
survivor set per query, and per fit (any sum over the same people) a set that only ever
shrinks, by dropouts, or (policy ``federation.after_dropout: end``, and always when it
releases no site-level numbers) never changes (:func:`guard_survivors`).

Before it answers, the node checks what the hub asks: its own name and key among the
parties, the threshold no lower than its ``min_sites``, a majority of the parties and 2, and
its contribution within its own small-count rules (:func:`medlab.analyses.federated.model.
withheld`, :func:`medlab.analyses.federated.comparative.withheld`). A request that fails a
check, or a protocol message that is forged or inconsistent, ends this node's part in the
analysis (``aborted``, with the reason) and never the task. Every message sent is logged in
the node's transparency log (its digest, never the vector).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from medlab.analyses.federated import comparative as pooled_cm
from medlab.analyses.federated import model as pooled
from medlab.analyses.scope import Scope
from medlab.cdm.identity import identity
from medlab.cdm.store import open_store
from medlab.ledger.keys import canonical
from medlab.ledger.parties import Party
from medlab.privacy import secure_tables
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import Population, Release
from medlab.privacy.secagg import rounds
from medlab.privacy.secagg.protocol import SecAggError
from medlab.recent import Recent
from medlab.studies.spec import (
    CharacterizationAnalysis,
    ComparativeAnalysis,
    FederatedModelAnalysis,
    IncidenceAnalysis,
    SecureAnalysis,
)


@dataclass(frozen=True)
class Tables:
    """An incidence or characterization analysis's releases at this node (node-internal),
    before any gate: summed across sites when a node releases no site-level numbers."""

    releases: tuple[Release, ...]


Rows = pooled.Design | pooled_cm.SiteRows | Tables


def sessions_of(store: Path) -> rounds.Sessions:
    """Where the node of ``store`` keeps its open sessions: beside its identity key."""
    return rounds.Sessions(identity(store).key.with_suffix(".secagg"))


# The rows of the most recently used (node, study, analysis) sets: a round asks every node for
# every analysis in turn, so the set must hold a whole study's (or the rounds would evict the
# very rows they are about to ask for).
_DESIGNS: Recent[Rows] = Recent(32)


def _design(
    a: SecureAnalysis,
    store: Path,
    fingerprint: str,
    spec_hash: str,
    tables: Callable[[], list[Release]] | None,
) -> Rows:
    """The analysis's rows at this node, built once per study and data snapshot within a
    process (every round of a fit asks for the same rows; another study may give its
    cohort ids other definitions); ``tables``: an incidence or characterization analysis's
    local steps."""

    def build() -> Rows:
        if isinstance(a, IncidenceAnalysis | CharacterizationAnalysis):
            if tables is None:
                raise ValueError(f"{a.name}: the node gives no local steps for its tables")
            return Tables(tuple(tables()))
        with open_store(store, read_only=True) as con:
            if isinstance(a, FederatedModelAnalysis):
                return pooled.design(con, a.target, a.comparator, a.outcome, a.settings)
            return pooled_cm.site_rows(con, a.target, a.comparator, a.outcome, a.settings)

    key = (str(store.resolve()), fingerprint, spec_hash, a.model_dump_json())
    return _DESIGNS.get(key, build)


def _check(asked: dict[str, Any], site: str, party: Party, policy: ReleasePolicy) -> None:
    keys = asked.get("keys")
    request = asked.get("secure")
    if not isinstance(keys, dict) or not isinstance(request, list) or not request:
        raise SecAggError("the round names no parties or no secure-aggregation request")
    if keys.get(site) != party.signer.public_pem:
        raise SecAggError("the parties the hub names do not include this node under its key")
    least = max(2, policy.federation.min_sites, len(keys) // 2 + 1)
    for one in request:
        t = one.get("threshold") if isinstance(one, dict) else None
        if not isinstance(t, int) or t < least:
            raise SecAggError(f"the threshold {t} is below this node's least, {least}")


def _setup(a: SecureAnalysis, d: Rows, policy: ReleasePolicy) -> dict[str, Any]:
    """Round 1's message: ``withheld`` with the reason, or ``ready`` (and the covariates
    this site may list, for pooled estimates)."""
    dp = policy.differential_privacy
    exact = policy.count_protection != "differential_privacy" or dp.exact_models
    if isinstance(d, Tables):
        try:
            shape = [secure_tables.skeleton(r) for r in d.releases]
        except secure_tables.NotATable as exc:
            return {"withheld": str(exc)}
        # The full skeleton from a node that releases no site-level numbers (the reason the
        # tables are summed at all); every node's digest, which all must share.
        found = {"ready": True, "shape_digest": secure_tables.digest({"tables": shape})}
        return found if policy.federation.release_site_level else {**found, "shape": shape}
    if isinstance(a, FederatedModelAnalysis):
        assert isinstance(d, pooled.Design)
        reason = pooled.withheld(d, a.settings, policy.min_cell_count, exact)
        if reason:
            return {"withheld": reason}
        binned = a.settings.model == "cox_binned"
        return {"ready": True, **({"bin_days": policy.event_bin_days} if binned else {})}
    assert isinstance(a, ComparativeAnalysis) and isinstance(d, pooled_cm.SiteRows)
    assert a.settings.pooled is not None
    reason = pooled_cm.withheld(d, policy.min_cell_count, exact)
    if reason:
        return {"withheld": reason}
    most = a.settings.pooled.max_covariates
    return {"ready": True, "covariates": pooled_cm.candidates(d, policy.min_cell_count, most)}


def _values(
    a: SecureAnalysis, d: Rows, query: Any, size: int, policy: ReleasePolicy
) -> list[float]:
    """This node's vector for the round's query."""
    if not isinstance(query, dict):
        raise ValueError("the round asks no query")
    if isinstance(d, Tables):
        found = [v for r in d.releases for v in secure_tables.numbers(r)]
        if len(found) != size:
            raise ValueError(f"{len(found)} numbers do not fit the session's {size}")
        return found
    if isinstance(a, FederatedModelAnalysis):
        assert isinstance(d, pooled.Design)
        grid = None
        if a.settings.model == "cox_binned":
            width = query.get("bin_days")
            if not isinstance(width, int) or not policy.event_bin_days <= width <= 3650:
                raise ValueError(
                    f"the event-time bins of {width} days are finer than this node's "
                    f"{policy.event_bin_days}"
                )
            grid = pooled.Grid.of(a.settings, width)
        return pooled.contribution(d, a.settings, query.get("beta", []), grid)
    assert isinstance(a, ComparativeAnalysis) and isinstance(d, pooled_cm.SiteRows)
    chosen = query.get("covariates")
    most = a.settings.pooled.max_covariates if a.settings.pooled else 0
    if not isinstance(chosen, list) or len(chosen) > most:
        raise ValueError(f"the query names no covariates or more than {most}")
    if not all(isinstance(c, str) for c in chosen):
        raise ValueError("the query names a covariate that is not a name")
    return pooled_cm.values(d, a.settings, chosen, query, size, policy.min_cell_count)


def _size(request: Any) -> int:
    size = request.get("length") if isinstance(request, dict) else None
    return size if isinstance(size, int) else 0


def _populations(a: SecureAnalysis, d: Rows, scope: Scope) -> list[Population]:
    """The persons a model's contribution is about: its study population by arm (its cohorts
    are audited with the study's other releases)."""
    assert not isinstance(d, Tables)
    assert not isinstance(a, IncidenceAnalysis | CharacterizationAnalysis)
    if isinstance(d, pooled.Design):
        persons, arm = d.persons, d.treatment
    else:
        persons = d.population["person_id"].to_numpy()
        arm = d.population["treatment"].to_numpy()
    roots = (a.target, a.comparator, a.outcome)
    settings = a.settings.model_dump(mode="json", exclude={"pooled"})
    return [
        scope.derived(
            f"secure_{a.type}",
            roots,
            settings,
            name,
            persons=frozenset(int(p) for p in persons[arm == value]),
        )
        for name, value in (("target", 1), ("comparator", 0))
    ]


_FLAGGED = "the differencing audit flags a population it is about"


def _digests(a: SecureAnalysis, scope: Scope | None) -> dict[int, str | None]:
    cohorts = [getattr(a, k) for k in ("target", "comparator", "outcome") if hasattr(a, k)]
    cohorts += list(getattr(a, "cohorts", []) or [])
    return {c: scope.cohorts.get(c) for c in cohorts} if scope else {}


def _fit_of(a: SecureAnalysis, scope: Scope | None, fingerprint: str) -> str:
    """Whose sums a session's are, whatever the analysis, its settings or step: the people
    of these cohort definitions in this data snapshot."""
    people = sorted({str(d) for d in _digests(a, scope).values()})
    return hashlib.sha256(canonical({"cohorts": people, "snapshot": fingerprint})).hexdigest()


def _what(a: SecureAnalysis, scope: Scope | None, fingerprint: str, query: Any) -> str:
    """What a session's sum is of: the analysis (not its name), its cohorts' definitions,
    the data snapshot and the query."""
    digests = _digests(a, scope)
    body = {
        "analysis": a.model_dump(mode="json", exclude={"name"}),
        "cohorts": digests,
        "snapshot": fingerprint,
        "query": query,
    }
    return hashlib.sha256(canonical(body)).hexdigest()


def _after_dropout(policy: ReleasePolicy) -> str:
    """``end`` when the node releases no site-level numbers, else its policy's choice."""
    return policy.federation.after_dropout if policy.federation.release_site_level else "end"


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial_path = path.with_suffix(".partial")
    fd = os.open(partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data))
    partial_path.replace(path)


def _name(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def remember_query(directory: Path, session: str, what: str, fit: str | None = None) -> None:
    """Record which query, and whose sums (``fit``: the cohorts and snapshot, any
    analysis or step, :func:`_fit_of`), this node masked its input for in ``session``."""
    _write(directory / "queries" / f"{_name(session)}.json", {"what": what, "fit": fit})


def _recorded(path: Path) -> list[str] | None:
    return json.loads(path.read_text())["survivors"] if path.exists() else None


def guard_survivors(
    directory: Path, session: str, survivors: Any, after_dropout: str = "continue"
) -> list[str]:
    """Refuse to sign, for ``session``, a survivor set other than the one an earlier session
    of the very same query was summed over (at this node, in any study): two sums of one
    query over sets one node apart give that node's contribution by subtraction. Across
    every sum over the same people (the steps of a fit, its reruns with other settings,
    other analyses of the same cohorts on the same snapshot: two sums at nearby points are
    nearly one query) the set may only shrink (``after_dropout: continue``) or never change
    (``end``): a hub that leaves a live node out of one step, claiming it dropped, learns
    at most its sums near one point, and never gets it back into these sums.
    Returns the parties dropped since the fit's last set (logged by the caller)."""
    asked = directory / "queries" / f"{_name(session)}.json"
    if not asked.exists() or not isinstance(survivors, list):
        return []
    memo = json.loads(asked.read_text())
    wanted = sorted(str(s) for s in survivors)
    ledger = directory / "answered" / f"{memo['what'][:32]}.json"
    before = _recorded(ledger)
    if before is not None and before != wanted:
        raise SecAggError(
            "this query was summed over other survivors before; a second set would give "
            "a node's contribution by subtraction"
        )
    fit = directory / "fits" / f"{str(memo.get('fit'))[:32]}.json"
    earlier = _recorded(fit) if memo.get("fit") else None
    dropped = sorted(set(earlier) - set(wanted)) if earlier is not None else []
    if (earlier is not None and earlier != wanted) and (
        after_dropout == "end" or not set(wanted) < set(earlier)
    ):
        raise SecAggError(
            f"this fit was summed over {', '.join(earlier)} before; this node signs "
            + ("no other set" if after_dropout == "end" else "only fewer of them")
            + " (a second set would give a node's sums by subtraction)"
        )
    if before is None:
        _write(ledger, {"survivors": wanted})
    if memo.get("fit") and earlier != wanted:
        _write(fit, {"survivors": wanted})
    return dropped


def _audit_tables(
    d: Tables, found: dict[str, Any], audit: Callable[[list[Population]], list[bool]]
) -> tuple[dict[str, Any], Tables]:
    """The audit over the tables' cohorts (one flagged withholds the contribution) and their
    rows and sums (a flagged one is contributed as nobody's, and named for the hub to
    withhold): the set-up message and the tables to contribute."""
    roots = [p for r in d.releases for p in r.roots]
    items = [(i, item, p) for i, r in enumerate(d.releases) for item, p in secure_tables.items(r)]
    flags = audit([*roots, *(p for _, _, p in items)])
    if any(flags[: len(roots)]):
        return {"withheld": _FLAGGED}, d
    flagged = [(i, item) for (i, item, _), f in zip(items, flags[len(roots) :], strict=True) if f]
    kept = tuple(
        secure_tables.without(r, {item for j, item in flagged if j == i})
        for i, r in enumerate(d.releases)
    )
    rows = [[i, element, row] for i, (element, row) in flagged]
    return {**found, "withheld_rows": rows}, Tables(kept)


def node_step(
    a: SecureAnalysis,
    store: Path,
    site: str,
    policy: ReleasePolicy,
    party: Party,
    round_: int,
    asked: dict[str, Any] | None,
    spec_hash: str,
    fingerprint: str,
    audit: Callable[[list[Population]], list[bool]] | None = None,
    scope: Scope | None = None,
    tables: Callable[[], list[Release]] | None = None,
) -> dict[str, Any] | None:
    """What this node sends for ``a`` in ``round_`` (None: nothing). ``audit`` with
    ``scope``: the node's differencing audit, which sees the populations the contribution
    is about and withholds it when it flags one (a table's flagged rows: those rows)."""
    if round_ > 1 and asked is None:
        return None  # nothing asked of this analysis in this round
    tabled = isinstance(a, IncidenceAnalysis | CharacterizationAnalysis)
    if tabled and policy.count_protection == "differential_privacy":
        found: dict[str, Any] = {"withheld": "the node protects counts by differential privacy"}
        if round_ == 1:
            party.log("secure_model", spec_hash=spec_hash, analysis=a.name, round=1, **found)
        return found if round_ == 1 else None
    d = _design(a, store, fingerprint, spec_hash, tables)
    found = _setup(a, d, policy)
    # Every round: the audit gives a population the decision it got the first time.
    if "ready" in found and audit and scope:
        if isinstance(d, Tables):
            found, d = _audit_tables(d, found, audit)
        elif any(audit(_populations(a, d, scope))):
            found = {"withheld": _FLAGGED}
    if round_ == 1:
        logged = {k: v for k, v in found.items() if k in ("ready", "withheld", "shape_digest")}
        party.log("secure_model", spec_hash=spec_hash, analysis=a.name, round=round_, **logged)
        return found
    if asked is None or "withheld" in found:
        return None
    sent = []
    try:
        _check(asked, site, party, policy)
        keys: dict[str, str] = asked["keys"]
        directory = sessions_of(store).directory
        for request in asked["secure"]:  # the current session's phase, and the next's
            if request.get("phase") == "consistency":
                dropped = guard_survivors(
                    directory,
                    str(request.get("session")),
                    request.get("survivors"),
                    _after_dropout(policy),
                )
                if dropped:
                    party.log(
                        "secure_survivors_shrank",
                        spec_hash=spec_hash,
                        analysis=a.name,
                        session=request["session"],
                        dropped=dropped,
                    )
            message = rounds.node_round(
                sessions_of(store),
                site,
                party.signer,
                keys.get,
                request,
                partial(_values, a, d, asked.get("query"), _size(request), policy),
            )
            if request.get("phase") == "mask":
                what = _what(a, scope, fingerprint, asked.get("query"))
                fit = _fit_of(a, scope, fingerprint)
                remember_query(directory, str(request["session"]), what, fit)
            digest = "sha256:" + hashlib.sha256(canonical(message)).hexdigest()
            party.log(
                "secure_sum",
                spec_hash=spec_hash,
                analysis=a.name,
                round=round_,
                session=request["session"],
                phase=request["phase"],
                message=digest,
            )
            sent.append(
                {"session": request["session"], "phase": request["phase"], "message": message}
            )
    except (SecAggError, ValueError) as exc:
        party.log("secure_sum_aborted", spec_hash=spec_hash, analysis=a.name, round=round_)
        return {"messages": sent, "aborted": str(exc)}
    return {"messages": sent}
