"""The release gate: the only path from a node's aggregates to anything outside the node.

``apply(policy, release, node)`` checks every element of a :class:`Release` against the
steward's :class:`ReleasePolicy` and returns a :class:`Released` holding only what may leave.
``node`` (:class:`NodeSide`) is the node the gate runs in: its differencing audit, the keys of
its persons (for the cell-key method) and the journal where every decision is written for the
steward; the researcher sees only which values were withheld, never why (the reason would tell
something about the data). Per element type:

- counts (:class:`Cells`, :class:`Steps`, model counts): a count below the minimum cell count,
  zero unless zeros are allowed, a count whose rounded value would fall below the minimum, or
  a count of a population the differencing audit flags, is withheld; the rest are protected
  (rounded, perturbed by cell key, or noised). In :class:`Cells` suppression takes the whole
  row, and a row whose complement (its denominator less the row) is disclosive is withheld
  too. Then complementary suppression: while the released rows and the table's additive
  margins determine a withheld value exactly (the value's coordinate is fixed in the solution
  space of the linear system), one more row is withheld, the smallest in a margin that pins
  it.
- nested steps: a step that removes fewer persons than the minimum cell count from the step
  before shows the earlier step's released count (the change itself would be a small cell).
- sums: released when at least ``min_group_size`` contribute and neither dominance rule fires,
  as the protected count, the mean and the SD, rounded until every count the released count
  allows admits whole numbers with that mean and SD (:mod:`medlab.privacy.precision`).
- models: refused with fewer than ``min_events_per_parameter`` events per parameter, fewer
  than ``min_degrees_of_freedom`` residual degrees of freedom, any event count of a group below
  the minimum cell count, or a group the audit flags; estimates at their kinds' precision.
- curves: at every point of the grid; values only where at least the minimum cell count is at
  risk, and a new step only once at least the minimum cell count of events has accumulated
  since the last shown one (a point in between repeats the last shown value), at-risk counts
  protected like counts and survival at the precision of a proportion of those at risk.
- statistics: released when they summarize at least ``min_group_size`` persons, a
  proportion's numerator and complement pass the count rule, and the audit does not flag
  the population; at their kind's precision.
- per-covariate balance: arms, holders and lackers, dominance (:mod:`.balance_rule`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from medlab.privacy import balance_rule, cellkey, dp
from medlab.privacy.audit import Auditor
from medlab.privacy.curves import curve_points
from medlab.privacy.margins import complementary
from medlab.privacy.persons import PersonKeys
from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.precision import mean_and_sd_steps, round_to
from medlab.privacy.release import (
    _GATE,
    WITHHELD,
    Balance,
    Cells,
    Curve,
    Decision,
    Element,
    Kind,
    Model,
    Population,
    Release,
    Released,
    Statistic,
    Steps,
    Sums,
)


@dataclass
class NodeSide:
    """What the gate uses of the node it runs in: the differencing audit, the persons' keys
    (cell-key method), the privacy loss this release may spend (differential privacy), and
    the journal of decisions (for the steward, never released)."""

    auditor: Auditor | None = None
    keys: PersonKeys | None = None
    loss: float = 0.0
    journal: list[Decision] = field(default_factory=list)


def count_rule(policy: ReleasePolicy, n: float) -> str | None:
    """Why a true count may not be shown, or None when it may (before protection)."""
    if n == 0:
        return None if policy.allow_zeros else "zero count"
    if n < policy.min_cell_count:
        return f"count below {policy.min_cell_count}"
    rounded = policy.round_count(int(n))
    if 0 < rounded < policy.min_cell_count:
        return f"rounded count below {policy.min_cell_count}"
    return None


def dominated(policy: ReleasePolicy, largest: tuple[float, ...], magnitude: float) -> str | None:
    """Which dominance rule a total of contributions (``largest`` of them, the sum of all
    their absolute values ``magnitude``) breaks, or None."""
    top = sorted((abs(v) for v in largest), reverse=True)
    d = policy.dominance
    if magnitude > 0 and sum(top[: d.n]) > d.k * magnitude:
        return f"dominance: the {d.n} largest exceed {d.k:.0%} of the total"
    if top and magnitude - sum(top[:2]) < d.p * top[0]:
        return f"dominance: p% rule (p = {d.p:.0%})"
    return None


def _salt(column: str) -> int:
    """Separates the cell keys of one population's columns (persons, entries, outcomes):
    the same population and column get the same perturbation in every table."""
    return int.from_bytes(hashlib.sha256(column.encode()).digest()[:4], "big")


def _elements_noised(release: Release) -> int:
    """How many quantities of a release share its privacy loss under differential privacy:
    each column of counts (and extras) of each element, each total of each sum."""
    quantities = 0
    for e in release.elements:
        if isinstance(e, Cells):
            columns = {c for row in e.counts.values() for c in row}
            columns |= {c for row in e.extras.values() for c in row}
            quantities += len(columns)
        elif isinstance(e, Steps):
            quantities += len({c for _, row in e.steps for c in row})
        elif isinstance(e, Sums):
            quantities += 1 + len(e.totals)
        elif isinstance(e, Model | Curve):
            quantities += 1
    return max(quantities, 1)


class _Gate:
    def __init__(self, policy: ReleasePolicy, release: Release, node: NodeSide) -> None:
        self.policy = policy
        self.release = release
        self.node = node
        self.protection: dict[str, Any] = {}
        self.dp_share = node.loss / _elements_noised(release) if node.loss else 0.0
        # The count each person count's population was shown with, so that the same
        # population counted again in the release (an attrition step, a model's arm, a
        # curve's start) shows the same number, never a second rounding of it.
        self.shown: dict[str, int | None] = {}
        # A cohort the release is about that the audit flags withholds every value in it.
        verdicts = [self._audited(root) for root in release.roots]
        self.withhold_all = any(verdicts)
        if self.withhold_all:
            self.record(
                release.analysis,
                "*",
                "a cohort within the minimum of one released before",
                "every value withheld",
            )

    # -- bookkeeping ------------------------------------------------------------------

    def record(self, element: str, item: str, rule: str, action: str) -> None:
        self.node.journal.append(Decision(element, item, rule, action))

    def _audited(self, population: Population | None) -> bool:
        """The differencing audit's verdict on a population (off under differential
        privacy, whose noise and budget bound what differencing learns)."""
        if self.node.auditor is None or self.policy.count_protection == "differential_privacy":
            return False
        return self.node.auditor.flagged(population)

    def flagged(self, element: str, item: str, population: Population | None) -> bool:
        """Whether the values about ``population`` are withheld by the audit."""
        if self.withhold_all:
            return True
        if self._audited(population):
            self.record(element, item, "within the minimum of an earlier release", "withheld")
            return True
        return False

    def digits(self, kind: Kind) -> int | None:
        precision = self.policy.precision
        return None if precision == "none" else int(getattr(precision, kind))

    # -- count protection --------------------------------------------------------------

    @property
    def dp_on(self) -> bool:
        return self.policy.count_protection == "differential_privacy"

    def protect(self, n: int, population: Population | None, column: str) -> int:
        """A count as it leaves the node (rounded or perturbed); DP noise is added per
        element in :meth:`noise`."""
        if self.policy.count_protection == "cell_key" and n > 0:
            if population is None or self.node.keys is None:
                raise ValueError("the cell-key method needs each count's persons and the keys")
            ck = self.policy.cell_key
            key = self.node.keys.cell_key(population.persons, _salt(column))
            floor = 0 if n < self.policy.min_cell_count else self.policy.min_cell_count
            return n + cellkey.perturbation(n, key, ck.max_perturbation, ck.variance, floor)
        return self.policy.round_count(n)

    def note(self, element: str) -> None:
        """Say how ``element``'s counts were protected (public: it depends on the policy)."""
        policy = self.policy
        info: dict[str, Any] = {"min_cell_count": policy.min_cell_count}
        if policy.count_protection == "rounding":
            info["mechanism"] = f"rounding ({policy.rounding})"
        elif policy.count_protection == "cell_key":
            ck = policy.cell_key
            info["mechanism"] = "cell key"
            info["max_perturbation"] = ck.max_perturbation
            info["noise_sd"] = cellkey.standard_deviation(ck.max_perturbation, ck.variance)
            info["interval"] = ck.max_perturbation
        info["precision"] = (
            "full" if policy.precision == "none" else policy.precision.model_dump(mode="json")
        )
        self.protection[element] = info

    def noise(
        self, element: str, values: list[float], sensitivity: float, integer: bool
    ) -> list[float] | None:
        """``values`` with differential-privacy noise for one person's ``sensitivity``, from
        this element's share of the release's loss; None when no bound was declared."""
        if sensitivity <= 0 or self.dp_share <= 0:
            return None
        settings = self.policy.differential_privacy
        noisy = dp.noisy_vector(
            values, sensitivity, settings.mechanism, self.dp_share, integer=integer
        )
        info = self.protection.setdefault(element, {})
        info.update(
            {
                "mechanism": settings.mechanism,
                "noise_scale": noisy.scale,
                "interval": noisy.half_width,
                ("epsilon" if settings.mechanism == "laplace" else "rho"): self.dp_share,
            }
        )
        return noisy.values

    # -- elements ----------------------------------------------------------------------

    def cells(self, cells: Cells) -> dict[str, Any]:
        self.note(cells.name)
        counts = {row: dict(c) for row, c in cells.counts.items()}
        extras = {row: dict(x) for row, x in cells.extras.items()}
        if self.dp_on:
            counts, extras, lost = self._noised_cells(cells, counts, extras)
        else:
            lost = set()
        suppressed: set[str] = set(lost)
        for row, row_counts in counts.items():
            if row in suppressed:
                continue
            if self.flagged(cells.name, row, cells.populations.get(row)):
                suppressed.add(row)
                continue
            for column, n in row_counts.items():
                reason = count_rule(self.policy, n)
                if reason:
                    suppressed.add(row)
                    self.record(cells.name, f"{row}.{column}", reason, "row withheld")
                    break
        for row, denominator in cells.complements.items():
            if row in suppressed or denominator not in counts:
                continue
            for column, n in counts[row].items():
                rest = counts[denominator].get(column, 0) - n
                reason = count_rule(self.policy, rest)
                if reason:
                    suppressed.add(row)
                    self.record(
                        cells.name, f"{row}.{column}", f"complement: {reason}", "row withheld"
                    )
                    break
        complementary(cells, counts, suppressed, self.record)
        out: dict[str, Any] = {}
        for row, row_counts in counts.items():
            names = (*row_counts, *extras.get(row, {}))
            if row in suppressed:
                out[row] = {c: None for c in names}
                continue
            population = cells.populations.get(row)
            shown: dict[str, Any] = {}
            for column, n in row_counts.items():
                shown[column] = int(n) if self.dp_on else self.protect(int(n), population, column)
            for column, x in extras.get(row, {}).items():
                shown[column] = (
                    float(round(x))
                    if self.dp_on
                    else float(self.protect(round(x), population, column))
                )
            out[row] = shown
        return out

    def _noised_cells(
        self,
        cells: Cells,
        counts: dict[str, dict[str, int]],
        extras: dict[str, dict[str, float]],
    ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]], set[str]]:
        """Counts and extras with DP noise per column; rows of a column with no declared
        sensitivity are withheld."""
        lost: set[str] = set()
        for table, integer in ((counts, True), (extras, False)):
            columns = sorted({c for row in table.values() for c in row})
            for column in columns:
                rows = [r for r in table if column in table[r]]
                noisy = self.noise(
                    cells.name,
                    [float(table[r][column]) for r in rows],
                    cells.sensitivity.get(column, 0.0),
                    integer,
                )
                if noisy is None:
                    self.record(cells.name, column, "no sensitivity bound for DP", "withheld")
                    lost |= set(rows)
                    continue
                for r, v in zip(rows, noisy, strict=True):
                    table[r][column] = max(int(v), 0) if integer else max(v, 0.0)  # type: ignore[assignment]
        return counts, extras, lost

    def steps(self, steps: Steps) -> list[dict[str, Any]]:
        self.note(steps.name)
        columns = sorted({c for _, row in steps.steps for c in row})
        values = {c: [float(row.get(c, 0)) for _, row in steps.steps] for c in columns}
        if self.dp_on:
            for c in columns:
                # A person is in every step up to the one that removes her.
                noisy = self.noise(steps.name, values[c], float(len(steps.steps)), True)
                values[c] = [max(v, 0.0) for v in noisy or [0.0] * len(steps.steps)]
        out: list[dict[str, Any]] = []
        # Per column, the true count behind the last shown count, and that shown count.
        anchor: dict[str, tuple[int, int]] = {}
        for i, (label, row) in enumerate(steps.steps):
            shown: dict[str, Any] = {"step": label}
            populations = steps.populations[i] if i < len(steps.populations) else {}
            for column in row:
                n = int(values[column][i])
                population = populations.get(column)
                shown[column] = self._step(steps.name, label, column, n, population, anchor)
                if population is not None:
                    self.shown.setdefault(population.key, shown[column])
            out.append(shown)
        return out

    def _step(
        self,
        element: str,
        label: str,
        column: str,
        n: int,
        population: Population | None,
        anchor: dict[str, tuple[int, int]],
    ) -> int | None:
        """One step's count as shown."""
        reason = count_rule(self.policy, n)
        if reason:
            self.record(element, f"{label}.{column}", reason, "withheld")
            return None
        if column in anchor and 0 < anchor[column][0] - n < self.policy.min_cell_count:
            self.record(
                element,
                f"{label}.{column}",
                f"fewer than {self.policy.min_cell_count} removed since the last shown",
                "shows the last shown count",
            )
            return anchor[column][1]
        if column in anchor and anchor[column][0] == n:
            return anchor[column][1]  # nobody removed: the same population
        if self.flagged(element, f"{label}.{column}", population):
            return None
        protected = n if self.dp_on else self.protect(n, population, column)
        anchor[column] = (n, protected)
        return protected

    def sums(self, sums: Sums) -> dict[str, Any]:
        self.note(sums.name)
        withheld: dict[str, Any] = {"n": None, "mean": None, "sd": None}
        reason = None
        if sums.n < self.policy.min_group_size:
            reason = f"fewer than {self.policy.min_group_size} contributors"
        elif not self.dp_on:  # under DP the noise bounds what one person moves
            reason = dominated(self.policy, sums.largest, sums.magnitude)
        if reason:
            self.record(sums.name, "totals", reason, "withheld")
            return withheld
        if self.flagged(sums.name, "totals", sums.population):
            return withheld
        total, squares = sums.totals.get("sum", 0.0), sums.totals.get("sum_squares", 0.0)
        if self.dp_on:
            noisy = [
                self.noise(sums.name, [v], bound, integer)
                for v, bound, integer in (
                    (float(sums.n), 1.0, True),
                    (total, sums.bounds.get("sum", 0.0), False),
                    (squares, sums.bounds.get("sum_squares", 0.0), False),
                )
            ]
            if any(v is None for v in noisy) or noisy[0][0] < 2:  # type: ignore[index]
                self.record(sums.name, "totals", "no bound or too few for DP", "withheld")
                return withheld
            n_dp, total, squares = (v[0] for v in noisy)  # type: ignore[index]
            n = max(round(n_dp), 2)
            mean = total / n
            sd = math.sqrt(max((squares - n * mean * mean) / (n - 1), 0.0))
            return {"n": n, "mean": mean, "sd": sd}
        n = self.protect(sums.n, sums.population, "n")
        band = self.policy.count_band(n) if sums.integer else (sums.n, sums.n)
        shown = mean_and_sd_steps(
            sums.n,
            total,
            squares,
            band,
            self.digits("mean"),
            sums.value_range if sums.integer else None,
        )
        if shown is None:
            self.record(sums.name, "totals", "no precision hides the count", "withheld")
            return withheld
        return {"n": n, "mean": shown[0], "sd": shown[1]}

    def model(self, model: Model) -> dict[str, Any]:
        self.note(model.name)
        policy = self.policy
        counts: dict[str, int | None] = {}
        small_group = False
        flagged = False
        for name, n in model.counts.items():
            if self.flagged(model.name, name, model.populations.get(name)):
                flagged = True
            reason = count_rule(policy, n)
            if reason:
                counts[name] = None
                self.record(model.name, name, reason, "withheld")
                small_group = small_group or name in model.event_counts
            else:
                population = model.populations.get(name)
                known = population is not None and population.key in self.shown
                counts[name] = (
                    self.shown[population.key]  # type: ignore[union-attr]
                    if known
                    else self.protect(int(n), population, name)
                )
        refusal = None
        if self.dp_on and not policy.differential_privacy.exact_models:
            refusal = "models are not released under differential privacy by this policy"
        elif model.events < policy.min_events_per_parameter * model.parameters:
            refusal = f"fewer than {policy.min_events_per_parameter} events per parameter"
        elif model.observations - model.parameters < policy.min_degrees_of_freedom:
            refusal = f"fewer than {policy.min_degrees_of_freedom} residual degrees of freedom"
        elif small_group:
            refusal = "a group's event count is below the minimum cell count"
        elif flagged:
            refusal = "a group is within the minimum of an earlier release"
        if refusal:
            self.record(model.name, "estimates", refusal, "model refused")
            withheld = {k: None for k in counts}
            return {"refused": WITHHELD, **{k: None for k in model.values}, **withheld}
        values = {
            k: round_to(v, self.digits(model.kinds.get(k, "ratio")))
            for k, v in model.values.items()
        }
        return {"refused": None, **values, **counts}

    def curve(self, curve: Curve) -> dict[str, Any]:
        self.note(curve.name)
        policy = self.policy
        out: dict[str, list[dict[str, Any]]] = {}
        for group, points in curve.groups.items():
            hidden = self.dp_on and not policy.differential_privacy.exact_models
            if hidden or self.flagged(curve.name, group, curve.populations.get(group)):
                out[group] = [{"time": t, "at_risk": None, "value": None} for t, *_ in points]
                if hidden:
                    self.record(curve.name, group, "curves not released under DP", "withheld")
                continue
            population = curve.populations.get(group)

            def protect(
                n: int, time: float, population: Population | None = population
            ) -> int | None:
                whole = population is not None and n == len(population)
                if whole and population.key in self.shown:  # type: ignore[union-attr]
                    return self.shown[population.key]  # type: ignore[union-attr]
                return self.protect(n, population, f"at_risk@{time:g}")

            shown, ended = curve_points(points, policy, self.digits("proportion"), protect)
            if ended:
                self.record(
                    curve.name, group, f"fewer than {policy.min_cell_count} at risk", "ends"
                )
            out[group] = shown
        return out

    def statistic(self, stat: Statistic) -> float | None:
        policy = self.policy
        reason = None
        if stat.n < policy.min_group_size:
            reason = f"fewer than {policy.min_group_size} persons"
        elif stat.numerator is not None and (
            count_rule(policy, stat.numerator) or count_rule(policy, stat.n - stat.numerator)
        ):
            reason = "its numerator or complement is a small count"
        if reason:
            self.record(stat.name, "value", reason, "withheld")
            return None
        if self.flagged(stat.name, "value", stat.population):
            return None
        min_step = 0.0
        if stat.kind == "proportion":
            low = policy.count_band(policy.round_count(stat.n))[0]
            min_step = 1.0 / max(low, 1)
        return round_to(stat.value, self.digits(stat.kind), min_step)

    def element(self, element: Element) -> Any:
        if isinstance(element, Cells):
            return self.cells(element)
        if isinstance(element, Steps):
            return self.steps(element)
        if isinstance(element, Sums):
            return self.sums(element)
        if isinstance(element, Model):
            return self.model(element)
        if isinstance(element, Curve):
            return self.curve(element)
        if isinstance(element, Balance):
            return balance_rule.released(self, element)
        return self.statistic(element)


def payload(released: Released) -> dict[str, Any]:
    """A released payload as JSON: what leaves the node, is signed and goes into evidence."""
    data = {
        "analysis": released.analysis,
        "site": released.site,
        "policy_version": released.policy_version,
        "policy_digest": released.policy_digest,
        "values": released.values,
        "labels": released.labels,
        "protection": released.protection,
    }
    parsed: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return parsed


def restore(data: dict[str, Any]) -> Released:
    """A payload a node's gate released, as released: kept by the node for reuse, or
    received by the hub with the node's signature over it checked
    (:func:`medlab.studies.combine.verify_output`)."""
    return Released(
        data["analysis"],
        data["site"],
        data["policy_version"],
        data["policy_digest"],
        data["values"],
        data["labels"],
        data["protection"],
        token=_GATE,
    )


def refusal(policy: ReleasePolicy, analysis: str, site: str, reason: str) -> Released:
    """A whole release refused before any data was read (``reason`` names only settings or
    bookkeeping: the policy's analysis types, a budget)."""
    return Released(
        analysis, site, policy.version, policy.digest(), {"refused": reason}, {}, {}, token=_GATE
    )


def apply(policy: ReleasePolicy, release: Release, node: NodeSide | None = None) -> Released:
    """What of ``release`` may leave the node under ``policy``; decisions go to
    ``node.journal``."""
    side = node or NodeSide()
    gate = _Gate(policy, release, side)
    if release.analysis not in policy.allowed_analyses:
        gate.record(release.analysis, "*", "analysis type not allowed by the policy", "refused")
        return refusal(
            policy, release.analysis, release.site, "analysis type not allowed by the node's policy"
        )
    values = {element.name: gate.element(element) for element in release.elements}
    # The audit's verdict on the release's cohorts, always present: it names the rule, and
    # since the identical population counts as near, it tells nothing about anyone.
    if gate.dp_on:
        gate.protection["audit"] = "left to the noise and the budget (differential privacy)"
    elif gate.withhold_all:
        gate.protection["audit"] = (
            f"every value withheld: a cohort of this release lies within "
            f"{policy.min_cell_count - 1} persons of one released before under another "
            "definition (the identical population included)"
        )
    else:
        gate.protection["audit"] = "the release's cohorts are no closer than the minimum"
    return Released(
        release.analysis,
        release.site,
        policy.version,
        policy.digest(),
        values,
        dict(release.labels),
        gate.protection,
        token=_GATE,
    )
