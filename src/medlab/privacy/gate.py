"""The release gate: the only path from a node's aggregates to anything outside the node.

``apply(policy, release)`` checks every element of a :class:`Release` against the steward's
:class:`ReleasePolicy` and returns a :class:`Released` holding only what may leave, plus a
record of every decision. Per element type:

- counts (:class:`Cells`, :class:`Steps`, model counts): a count below the minimum cell count,
  or zero unless zeros are allowed, is suppressed; the rest are rounded. In :class:`Cells`
  suppression takes the whole row, and a row whose complement (its denominator less the row) is
  disclosive is suppressed too. Then complementary suppression: while the released rows and
  the table's additive margins determine a suppressed value exactly (the value's coordinate is
  fixed in the solution space of the linear system), one more row is suppressed, the smallest
  in a margin that pins it.
- nested steps: a step that removes fewer persons than the minimum cell count from the step
  before shows the earlier step's released count (the change itself would be a small cell).
- sums: released when at least ``min_group_size`` contribute and neither dominance rule fires,
  with the count rounded and the totals scaled to it (the mean is kept exact).
- models: refused with fewer than ``min_events_per_parameter`` events per parameter, fewer
  than ``min_degrees_of_freedom`` residual degrees of freedom, or any event count of a group
  below the minimum cell count (an estimate and its person counts would let one solve for it).
- curves: points only where at least the minimum cell count is at risk, and a step only once
  at least the minimum cell count of events has accumulated since the last shown step.
- statistics: released when they summarize at least ``min_group_size`` persons.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.release import (
    _GATE,
    Cells,
    Curve,
    Decision,
    Model,
    Release,
    Released,
    Statistic,
    Steps,
    Sums,
)


class _Recorder:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def __call__(self, element: str, item: str, rule: str, action: str) -> None:
        self.decisions.append(Decision(element, item, rule, action))


def count_rule(policy: ReleasePolicy, n: float) -> str | None:
    """Why a true count may not be shown, or None when it may (before rounding)."""
    if n == 0:
        return None if policy.allow_zeros else "zero count"
    if n < policy.min_cell_count:
        return f"count below {policy.min_cell_count}"
    rounded = policy.round_count(int(n))
    if 0 < rounded < policy.min_cell_count:
        return f"rounded count below {policy.min_cell_count}"
    return None


def _determined(cells: Cells, column: str, suppressed: set[str]) -> list[str]:
    """Suppressed rows whose ``column`` value the released rows and the margins pin down."""
    unknown = sorted(
        {
            r
            for c in cells.constraints
            if column in c.columns
            for r in (c.total, *c.parts)
            if r in suppressed
        }
    )
    if not unknown:
        return []
    index = {r: i for i, r in enumerate(unknown)}
    rows = []
    for c in cells.constraints:
        if column not in c.columns:
            continue
        row = np.zeros(len(unknown))
        for r, sign in [(c.total, -1.0)] + [(p, 1.0) for p in c.parts]:
            if r in index:
                row[index[r]] += sign
        if row.any():
            rows.append(row)
    if not rows:
        return []
    a = np.array(rows)
    # x = x0 + N z; a coordinate is pinned when its row of the null-space basis N is zero.
    _, s, vt = np.linalg.svd(a)
    rank = int((s > 1e-9 * max(1.0, s.max())).sum())
    null = vt[rank:].T
    pinned = np.abs(null).max(axis=1) < 1e-9 if null.size else np.ones(len(unknown), bool)
    return [r for r in unknown if pinned[index[r]]]


def _value(cells: Cells, row: str, column: str) -> float:
    if column in cells.counts.get(row, {}):
        return cells.counts[row][column]
    return cells.extras.get(row, {}).get(column, 0.0)


def _cells(policy: ReleasePolicy, cells: Cells, record: _Recorder) -> dict[str, Any]:
    suppressed: set[str] = set()
    for row, counts in cells.counts.items():
        for column, n in counts.items():
            reason = count_rule(policy, n)
            if reason:
                suppressed.add(row)
                record(cells.name, f"{row}.{column}", reason, "row suppressed")
                break
    for row, denominator in cells.complements.items():
        if row in suppressed or denominator not in cells.counts:
            continue
        for column, n in cells.counts[row].items():
            rest = cells.counts[denominator].get(column, 0) - n
            reason = count_rule(policy, rest)
            if reason:
                suppressed.add(row)
                record(cells.name, f"{row}.{column}", f"complement: {reason}", "row suppressed")
                break
    columns = sorted({col for c in cells.constraints for col in c.columns})
    changed = True
    while changed:
        changed = False
        for column in columns:
            pinned = _determined(cells, column, suppressed)
            if not pinned:
                continue
            target = pinned[0]
            margins = [
                c
                for c in cells.constraints
                if column in c.columns and target in (c.total, *c.parts)
            ]
            candidates = [
                r
                for c in margins
                for r in (*c.parts, c.total)
                if r not in suppressed and r in cells.counts
            ]
            if not candidates:  # pinned through a chain of margins: widen to all of them
                margins = [c for c in cells.constraints if column in c.columns]
                candidates = [
                    r
                    for c in margins
                    for r in (*c.parts, c.total)
                    if r not in suppressed and r in cells.counts
                ]
            if not candidates:  # every row of every margin is already hidden
                break
            # The smallest part first (it costs least to hide); a total only as a last resort.
            totals = {c.total for c in margins}
            pick = min(candidates, key=lambda r: (r in totals, _value(cells, r, column), r))
            suppressed.add(pick)
            record(
                cells.name,
                pick,
                f"complementary: would reveal {target}.{column} from the margins",
                "row suppressed",
            )
            changed = True
            break
    out: dict[str, Any] = {}
    for row, counts in cells.counts.items():
        if row in suppressed:
            out[row] = {c: None for c in (*counts, *cells.extras.get(row, {}))}
            continue
        out[row] = {c: policy.round_count(int(n)) for c, n in counts.items()}
        out[row].update(cells.extras.get(row, {}))
    return out


def _steps(policy: ReleasePolicy, steps: Steps, record: _Recorder) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Per column, the true count behind the last shown count, and that shown count.
    anchor: dict[str, tuple[int, int]] = {}
    for label, counts in steps.steps:
        shown: dict[str, Any] = {"step": label}
        for column, n in counts.items():
            reason = count_rule(policy, n)
            if reason:
                shown[column] = None
                record(steps.name, f"{label}.{column}", reason, "suppressed")
                continue
            if column in anchor and 0 < anchor[column][0] - n < policy.min_cell_count:
                shown[column] = anchor[column][1]
                record(
                    steps.name,
                    f"{label}.{column}",
                    f"fewer than {policy.min_cell_count} removed since the last shown count",
                    "shows the last shown count",
                )
                continue
            shown[column] = policy.round_count(int(n))
            anchor[column] = (int(n), shown[column])
        out.append(shown)
    return out


def _sums(policy: ReleasePolicy, sums: Sums, record: _Recorder) -> dict[str, Any]:
    reason = None
    largest = sorted((abs(v) for v in sums.largest), reverse=True)
    d = policy.dominance
    if sums.n < policy.min_group_size:
        reason = f"fewer than {policy.min_group_size} contributors"
    elif sums.magnitude > 0 and sum(largest[: d.n]) > d.k * sums.magnitude:
        reason = f"dominance: the {d.n} largest exceed {d.k:.0%} of the total"
    elif largest and sums.magnitude - sum(largest[:2]) < d.p * largest[0]:
        reason = f"dominance: p% rule (p = {d.p:.0%})"
    if reason:
        record(sums.name, "totals", reason, "suppressed")
        return {"n": None, **{k: None for k in sums.totals}}
    # Totals scaled to the rounded count, so that released totals and count stay consistent
    # (the mean is exact; the exact count is not shown through the back door).
    n = policy.round_count(sums.n)
    return {"n": n, **{k: v * n / sums.n for k, v in sums.totals.items()}}


def _model(policy: ReleasePolicy, model: Model, record: _Recorder) -> dict[str, Any]:
    counts: dict[str, int | None] = {}
    small_group = False
    for name, n in model.counts.items():
        reason = count_rule(policy, n)
        if reason:
            counts[name] = None
            record(model.name, name, reason, "suppressed")
            small_group = small_group or name in model.event_counts
        else:
            counts[name] = policy.round_count(int(n))
    refusal = None
    if model.events < policy.min_events_per_parameter * model.parameters:
        refusal = f"fewer than {policy.min_events_per_parameter} events per parameter"
    elif model.observations - model.parameters < policy.min_degrees_of_freedom:
        refusal = f"fewer than {policy.min_degrees_of_freedom} residual degrees of freedom"
    elif small_group:
        refusal = "a group's event count is below the minimum cell count"
    if refusal:
        record(model.name, "estimates", refusal, "model refused")
        return {"refused": refusal, **{k: None for k in model.values}, **counts}
    return {"refused": None, **model.values, **counts}


def _curve(policy: ReleasePolicy, curve: Curve, record: _Recorder) -> dict[str, Any]:
    out: dict[str, list[dict[str, float]]] = {}
    for group, points in curve.groups.items():
        shown: list[dict[str, float]] = []
        pending = 0.0
        cut = False
        for time, at_risk, events, value in points:
            if at_risk < policy.min_cell_count:
                cut = True
                break
            pending += events
            if not shown or pending >= policy.min_cell_count:
                shown.append(
                    {"time": time, "at_risk": policy.round_count(round(at_risk)), "value": value}
                )
                pending = 0.0
        if cut:
            record(
                curve.name,
                group,
                f"fewer than {policy.min_cell_count} at risk",
                f"curve ends at time {shown[-1]['time'] if shown else 0:g}",
            )
        if len(shown) < len(points):
            record(
                curve.name,
                group,
                f"steps grouped to at least {policy.min_cell_count} events",
                f"{len(shown)} of {len(points)} points shown",
            )
        out[group] = shown
    return out


def _statistic(policy: ReleasePolicy, stat: Statistic, record: _Recorder) -> float | None:
    if stat.n < policy.min_group_size:
        record(stat.name, "value", f"fewer than {policy.min_group_size} persons", "suppressed")
        return None
    return stat.value


def apply(policy: ReleasePolicy, release: Release) -> Released:
    """What of ``release`` may leave the node under ``policy``, with every decision made."""
    record = _Recorder()
    if release.analysis not in policy.allowed_analyses:
        record(release.analysis, "*", "analysis type not allowed by the policy", "refused")
        return Released(
            release.analysis,
            release.site,
            policy.version,
            policy.digest(),
            {},
            {},
            tuple(record.decisions),
            token=_GATE,
        )
    values: dict[str, Any] = {}
    for element in release.elements:
        if isinstance(element, Cells):
            values[element.name] = _cells(policy, element, record)
        elif isinstance(element, Steps):
            values[element.name] = _steps(policy, element, record)
        elif isinstance(element, Sums):
            values[element.name] = _sums(policy, element, record)
        elif isinstance(element, Model):
            values[element.name] = _model(policy, element, record)
        elif isinstance(element, Curve):
            values[element.name] = _curve(policy, element, record)
        else:
            values[element.name] = _statistic(policy, element, record)
    return Released(
        release.analysis,
        release.site,
        policy.version,
        policy.digest(),
        values,
        dict(release.labels),
        tuple(record.decisions),
        token=_GATE,
    )
