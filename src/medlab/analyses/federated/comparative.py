"""Pooled comparative estimates on secure sums: one propensity model fitted across every
site, then per adjustment one Cox model stratified by site, fitted on the sites' summed
partial likelihoods — the estimate CohortMethod's algorithm gives on the union of the sites'
rows with ``site`` as a stratum.

Round 1 (:func:`setup`): each site says whether it may take part and lists its propensity
covariates held by at least ``min_cell_count`` and at most all but ``min_cell_count`` of its
entries (its most prevalent ``pooled_max_covariates``); the hub keeps those listed by the
most sites (:func:`choose`). Continuous covariates are scaled by fixed divisors (age in years
/ 100, the Charlson index / 20), not by a site's own maximum, so that every site's column
means the same.

Then every round is one secure sum, of one of three stages (:func:`values`):

1. ``ps``: the federated propensity model (:mod:`.ps`: the comparative analysis's Laplace or
   normal prior at its ``ps_variance``, fixed or cross-validated across sites first in
   ``cv`` rounds, :mod:`.ps_cv`), every site's log-likelihood, gradient and
   information at the current coefficients, with its rows and target rows;
2. ``moments``: on each site's study population scored by that model, the rows, target rows
   and the sums of the logit score and of its square (and of the score and its square) —
   the union's share of target rows (IPTW's stabilization) and the union's standard
   deviation of the logit score, by which a standardized caliper is scaled (CohortMethod's
   ``matchOnPs`` takes it over the whole population and then matches within each stratum);
3. ``outcome``: per adjustment, at the coefficient the hub asks for, the site's log partial
   likelihood, score, information and (IPTW) Lin-Wei meat on its adjusted rows — matched
   sets and PS strata formed inside the site, weights from the pooled score — with the
   persons and events per arm. The hub runs :func:`medlab.analyses.cox.maximize` on the sums
   for all adjustments in lockstep.

The hub drives the whole fit by replay (:func:`drive`): it reruns the estimators on the sums
received so far and stops where they ask for the next one. The interval is Wald's (a profile
interval would take a round per likelihood evaluation).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from scipy import sparse, stats

from medlab.analyses import cox as coxmodel
from medlab.analyses.comparative import ComparativeSettings, adjust
from medlab.analyses.federated import ps, ps_cv
from medlab.analyses.population import covariates, exposures, outcome_days, outcome_population
from medlab.analyses.propensity import _predict
from medlab.privacy.precision import round_to

_Z = float(stats.norm.ppf(0.975))
SCALES = {"age": 100.0, "charlson_index": 20.0}
CONTINUOUS = frozenset(SCALES)
SLOT = 8  # per adjustment: ll, score, information, meat, persons and events per arm
MOMENTS = 7
METHODS = {
    "none": "Cox stratified by site",
    "matching": "Cox stratified by site and matched set (pooled PS, matched within site)",
    "stratification": "Cox stratified by site and PS stratum (pooled PS, strata within site)",
    "iptw": "weighted Cox stratified by site (pooled PS), robust variance",
}


@dataclass(frozen=True)
class SiteRows:
    """One site's entries (node-internal): the propensity rows (every fetched entry), their
    covariates, and the outcome's study population (``row_id``: its propensity row, 1-based)."""

    treatment: np.ndarray
    matrix: sparse.csr_matrix
    ids: list[str]
    population: pd.DataFrame

    def design(self, chosen: Sequence[str]) -> sparse.csr_matrix:
        """The propensity rows' columns ``chosen`` (a covariate this site lacks is zeros)."""
        index = {name: i for i, name in enumerate(self.ids)}
        columns = [
            self.matrix[:, [index[c]]]
            if c in index
            else sparse.csr_matrix((self.matrix.shape[0], 1))
            for c in chosen
        ]
        if not columns:
            return sparse.csr_matrix((self.matrix.shape[0], 0))
        return sparse.hstack(columns, format="csr")


def site_rows(
    con: duckdb.DuckDBPyConnection,
    target: int,
    comparator: int,
    outcome: int,
    settings: ComparativeSettings,
) -> SiteRows:
    """The site's rows for the pooled analysis."""
    s = settings.population
    fetched = exposures(con, target, comparator, s)
    population, _ = outcome_population(fetched, outcome_days(con, fetched.frame, outcome), s)
    cov = covariates(con, fetched.frame, settings.exclude_ingredients, scales=SCALES)
    treatment = fetched.frame["treatment"].to_numpy(dtype=float)
    return SiteRows(treatment, cov.matrix, cov.ids, population.reset_index(drop=True))


def withheld(rows: SiteRows, min_cell_count: int, exact: bool) -> str | None:
    """Why this site may not take part (None: it may): its counts must be exact, and each
    arm must hold ``min_cell_count`` persons among the propensity rows and in the study
    population (its own outcomes may be fewer: only pooled counts are released)."""
    if not exact:
        return (
            "the node protects counts by differential privacy; pooled estimates need exact "
            "sums (the policy's differential_privacy.exact_models allows them)"
        )
    arms = rows.population["treatment"].to_numpy()
    counts = {
        "target entries": int(rows.treatment.sum()),
        "comparator entries": int(len(rows.treatment) - rows.treatment.sum()),
        "target persons at risk": int((arms == 1).sum()),
        "comparator persons at risk": int((arms == 0).sum()),
    }
    for what, n in counts.items():
        if n < min_cell_count:
            return f"its contribution would show {what} below {min_cell_count}"
    return None


def candidates(rows: SiteRows, min_cell_count: int, most: int) -> list[str]:
    """The site's covariates fit to list: held by at least ``min_cell_count`` entries and
    lacked by at least as many (continuous ones: nonzero in as many), most prevalent first."""
    n = rows.matrix.shape[0]
    held = np.asarray((rows.matrix != 0).sum(axis=0)).ravel()
    fit = [
        (int(h), name)
        for h, name in zip(held, rows.ids, strict=True)
        if h >= min_cell_count and (name in CONTINUOUS or n - h >= min_cell_count)
    ]
    fit.sort(key=lambda item: (-item[0], item[1]))
    return [name for _, name in fit[:most]]


def choose(listed: Mapping[str, Sequence[str]], most: int) -> list[str]:
    """The pooled model's covariates: those listed by the most sites (then by their best
    average rank), at most ``most``, in name order."""
    votes: Counter[str] = Counter()
    ranks: dict[str, list[int]] = {}
    for names in listed.values():
        for rank, name in enumerate(names):
            votes[name] += 1
            ranks.setdefault(name, []).append(rank)
    order = sorted(votes, key=lambda c: (-votes[c], sum(ranks[c]) / len(ranks[c]), c))
    return sorted(order[:most])


def ps_length(k: int) -> int:
    """The ``ps`` stage's values: the penalized model's sums, then rows and target rows."""
    return (k + 1) * (k + 2) // 2 + (k + 1) + 1 + 2


def km_grid(settings: ComparativeSettings) -> np.ndarray:
    """The Kaplan-Meier grid: day 0, every ``km_step_days``, up to the horizon."""
    step, horizon = settings.km_step_days, settings.km_horizon_days
    return np.arange(0, horizon + step, step, dtype=float)


def _km_size(settings: ComparativeSettings) -> int:
    bins = len(km_grid(settings)) - 1
    return len(settings.adjustments) * 2 * (4 * bins + 2)


def length(settings: ComparativeSettings, k: int, stage: str | None = None) -> int:
    """A session's vector length: a cross-validation round's (``stage`` cv), or the longest
    other stage's (shorter ones are zero-padded)."""
    if stage == "cv":
        return ps_cv.length(k, settings.ps_cv_folds)
    outcome = SLOT * len(settings.adjustments) + _km_size(settings)
    return max(ps_length(k), MOMENTS, outcome)


def _km_sums(frame: pd.DataFrame, weights: np.ndarray | None, grid: np.ndarray) -> list[float]:
    """Per arm, on the grid ``t_0 < t_1 < ...``: the (weighted) persons at risk after each
    point (days > t_j) and the (weighted) events in each bin (t_(j-1), t_j]; then both
    unweighted (the gate's rules count persons)."""
    out: list[float] = []
    w_all = np.ones(len(frame)) if weights is None else np.asarray(weights, dtype=float)
    for arm in (1, 0):
        rows = frame["treatment"].to_numpy() == arm
        days = frame["days"].to_numpy(dtype=float)[rows]
        event = frame["outcome"].to_numpy()[rows] == 1
        for w in (w_all[rows], np.ones(int(rows.sum()))):
            out += [float(w[days > t].sum()) for t in grid]
            out += [
                float(w[event & (days > a) & (days <= b)].sum())
                for a, b in itertools.pairwise(grid)
            ]
    return out


def km_curves(
    settings: ComparativeSettings, values: Sequence[float]
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """The pooled curves from the summed :func:`_km_sums` of every adjustment: per arm, at
    each grid point (time, persons at risk after it, events since the previous point,
    survival ``prod (1 - d_l / n_l)`` over the bins so far, ``n_l`` the weighted persons at
    risk entering bin ``l``)."""
    grid = km_grid(settings)
    bins = len(grid) - 1
    per_arm = 4 * bins + 2
    curves: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    for j, adjustment in enumerate(settings.adjustments):
        curves[adjustment] = {}
        for a, arm in enumerate(("target", "comparator")):
            start = (2 * j + a) * per_arm
            part = np.asarray(values[start : start + per_arm])
            n_w, d_w = part[: bins + 1], part[bins + 1 : 2 * bins + 1]
            n_u, d_u = part[2 * bins + 1 : 3 * bins + 2], part[3 * bins + 2 :]
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = np.where(n_w[:-1] > 0, 1 - d_w / np.where(n_w[:-1] > 0, n_w[:-1], 1), 1)
            survival = np.r_[1.0, np.cumprod(factor)]
            events = np.r_[0.0, d_u]
            curves[adjustment][arm] = [
                (float(t), float(n), float(e), float(s))
                for t, n, e, s in zip(grid, n_u, events, survival, strict=True)
            ]
    return curves


def _coefficients(query: Mapping[str, Any], k: int) -> tuple[float, np.ndarray]:
    b0 = query.get("intercept")
    beta = np.asarray(query.get("beta", []), dtype=float)
    if not isinstance(b0, int | float) or beta.shape != (k,) or not np.all(np.isfinite(beta)):
        raise ValueError(f"the propensity coefficients must be an intercept and {k} numbers")
    return float(b0), beta


def _pooled_scores(rows: SiteRows, x: sparse.csr_matrix, b0: float, beta: np.ndarray) -> np.ndarray:
    """The pooled model's scores of the study population (rounded as the local fit's)."""
    index = rows.population["row_id"].to_numpy() - 1
    return np.round(_predict(x[index], b0, beta), 10)


def _outcome_slot(
    adjusted: Any, at: float | None, ties: coxmodel.Ties, robust: bool
) -> list[float]:
    frame = adjusted.frame
    arm = frame["treatment"].to_numpy()
    event = frame["outcome"].to_numpy()
    counts = [
        float((arm == 1).sum()),
        float((arm == 0).sum()),
        float(((arm == 1) & (event == 1)).sum()),
        float(((arm == 0) & (event == 1)).sum()),
    ]
    if at is None or not event.any():
        return [0.0, 0.0, 0.0, 0.0, *counts]
    data = coxmodel.RiskData(
        frame["days"].to_numpy(),
        event,
        arm.astype(float),
        adjusted.weights,
        adjusted.stratum,
    )
    ll, score, info, _ = data.sums(at, ties)
    meat = data.meat(at, frame["person_id"].to_numpy()) if robust else 0.0
    return [ll, score, info, meat, *counts]


def values(
    rows: SiteRows,
    settings: ComparativeSettings,
    chosen: Sequence[str],
    query: Mapping[str, Any],
    size: int,
    min_cell_count: int,
) -> list[float]:
    """The site's vector for one round (see the module's stages), zero-padded to ``size``
    (``min_cell_count``: the node's, below which it holds no fold out)."""
    x = rows.design(chosen)
    stage = query.get("stage")
    if stage == "cv":
        found = ps_cv.values(
            x,
            rows.treatment,
            query.get("points"),
            settings.ps_cv_folds,
            settings.ps_cv_seed,
            min_cell_count,
        )
        return _padded(found, size)
    b0, beta = _coefficients(query, len(chosen))
    if stage == "ps":
        y = rows.treatment
        found = [*ps.sums(x, y, b0, beta).flat(), float(len(y)), float(y.sum())]
    elif stage == "moments":
        scores = _pooled_scores(rows, x, b0, beta)
        arm = rows.population["treatment"].to_numpy()
        # CohortMethod's matchOnPs takes the SD over the finite logits (a score of exactly 0
        # or 1 has none), as match_on_ps does.
        with np.errstate(divide="ignore"):
            raw = np.log(scores / (1 - scores))
        logit = raw[np.isfinite(raw)]
        found = [
            float(len(scores)),
            float((arm == 1).sum()),
            float(len(logit)),
            float(logit.sum()),
            float((logit**2).sum()),
            float(scores.sum()),
            float((scores**2).sum()),
        ]
    elif stage == "outcome":
        spread, share = query.get("spread"), query.get("share")
        at = query.get("at")
        if not isinstance(spread, int | float) or not isinstance(share, int | float):
            raise ValueError("the outcome stage names no caliper spread or target share")
        if not isinstance(at, dict):
            raise ValueError("the outcome stage names no coefficients")
        scores = _pooled_scores(rows, x, b0, beta)
        found, curves = [], []
        for adjustment in settings.adjustments:
            b = at.get(adjustment)
            if b is not None and not (isinstance(b, int | float) and math.isfinite(b)):
                raise ValueError(f"the coefficient of {adjustment} is not a number")
            adjusted = adjust(
                adjustment, rows.population, scores, settings, float(spread), float(share)
            )
            robust = adjustment == "iptw" and settings.iptw_variance == "robust"
            found += _outcome_slot(adjusted, b, settings.cox_ties, robust)
            if query.get("km"):
                curves += _km_sums(adjusted.frame, adjusted.weights, km_grid(settings))
        found += curves
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return _padded(found, size)


def _padded(found: list[float], size: int) -> list[float]:
    if len(found) > size:
        raise ValueError(f"{len(found)} values do not fit the session's {size}")
    return [*found, *([0.0] * (size - len(found)))]


class _Pending(Exception):
    def __init__(self, query: dict[str, Any]) -> None:
        self.query = query


@dataclass(frozen=True)
class Outcome:
    """One adjustment's pooled fit (``log_hr`` None: no finite estimate, ``reason`` why)."""

    adjustment: str
    log_hr: float | None
    se: float | None
    counts: tuple[int, int, int, int]  # persons and events per arm
    reason: str | None = None


@dataclass(frozen=True)
class Finished:
    """The pooled analysis's fits."""

    model: ps.FederatedPs
    variance: float | None  # the prior variance: fixed, or chosen by cross-validation
    ps_rows: tuple[int, int]  # rows and target rows of the propensity model
    moments: list[float]
    outcomes: list[Outcome]
    km: dict[str, dict[str, list[tuple[float, float, float, float]]]]
    sums: int


def _spread(settings: ComparativeSettings, m: list[float]) -> float:
    """The union's standard deviation of the (logit) score (``nan``: fewer than 2 rows)."""
    if settings.caliper_scale == "standardized_logit":
        count, total, squares = m[2], m[3], m[4]
    else:
        count, total, squares = m[0], m[5], m[6]
    if count < 2:
        return math.nan
    return math.sqrt(max(squares - total * total / count, 0.0) / (count - 1))


def drive(
    settings: ComparativeSettings, chosen: Sequence[str], sums: Sequence[Sequence[float]]
) -> dict[str, Any] | Finished:
    """The next round's query (the stage and its inputs), or the fits when ``sums`` (one
    per round after the first, in order) finish them."""
    k = len(chosen)
    recorded = iter(sums)

    def take(query: dict[str, Any]) -> list[float]:
        found = next(recorded, None)
        if found is None:
            raise _Pending(query)
        return list(found)

    def ps_round(b0: float, beta: np.ndarray) -> ps.PsSums:
        query = {"stage": "ps", "intercept": b0, "beta": beta.tolist()}
        got = take(query)[: ps_length(k)]
        taken.append(got)
        return ps.PsSums.unflat(got[:-2], k)

    taken: list[list[float]] = []
    variance = settings.ps_variance
    try:
        if settings.ps_prior != "none" and variance is None:
            variance, _ = ps_cv.cross_validate(k, settings.ps_prior, settings.ps_cv_folds, take)
        model = ps.fit(ps_round, k, settings.ps_prior, variance)
        rows = (round(taken[-1][-2]), round(taken[-1][-1]))
        coefficients = {"intercept": model.intercept, "beta": model.coefficients.tolist()}
        moments = take({"stage": "moments", **coefficients})[:MOMENTS]
        spread = _spread(settings, moments)
        share = moments[1] / moments[0] if moments[0] else math.nan
        base = {"stage": "outcome", **coefficients, "spread": spread, "share": share}
        if not (math.isfinite(spread) and math.isfinite(share)):
            raise ValueError("the pooled study population is empty")
        outcomes, first = _outcomes(settings, base, take)
    except _Pending as pending:
        return pending.query
    km = km_curves(settings, first[SLOT * len(settings.adjustments) :])
    return Finished(model, variance, rows, moments, outcomes, km, len(sums))


def _outcomes(
    settings: ComparativeSettings,
    base: dict[str, Any],
    take: Callable[[dict[str, Any]], list[float]],
) -> tuple[list[Outcome], list[float]]:
    """Every adjustment's Newton fit, in lockstep: each round holds a slot per adjustment,
    evaluated at that fit's next coefficient (None once it is done); the first round also
    holds the Kaplan-Meier sums. The fits, and the first round's sum."""
    adjustments = list(settings.adjustments)
    rounds: list[list[float]] = []

    def replay(j: int) -> tuple[str, Any]:
        """Adjustment ``j``'s fit on the rounds so far: ("ask", beta), ("done", fit) or
        ("none", reason); the fit's last evaluation is at its maximum."""
        seen = iter(rounds)
        last: list[float] = []

        class _More(Exception):
            def __init__(self, beta: float) -> None:
                self.beta = beta

        def sums(beta: float) -> tuple[float, float, float]:
            nonlocal last
            got = next(seen, None)
            if got is None:
                raise _More(beta)
            last = got[SLOT * j : SLOT * (j + 1)]
            return last[0], last[1], last[2]

        try:
            beta, _, info = coxmodel.maximize(sums)
        except _More as more:
            return "ask", more.beta
        except coxmodel.NoEstimate as exc:
            return "none", (str(exc), last)
        return "done", (beta, info, last)

    while True:
        states = [replay(j) for j in range(len(adjustments))]
        asks = {
            a: s[1] if s[0] == "ask" else None for a, s in zip(adjustments, states, strict=True)
        }
        if all(v is None for v in asks.values()):
            break
        rounds.append(take({**base, "at": asks, **({} if rounds else {"km": True})}))
    out = []
    for j, (adjustment, (kind, found)) in enumerate(zip(adjustments, states, strict=True)):
        slot = rounds[-1][SLOT * j : SLOT * (j + 1)] if rounds else [0.0] * SLOT
        counts = tuple(round(v) for v in slot[4:8])
        if kind == "none":
            out.append(Outcome(adjustment, None, None, counts, found[0]))  # type: ignore[arg-type]
            continue
        beta, info, last = found
        se = math.sqrt(1 / info)
        if adjustment == "iptw" and settings.iptw_variance == "robust":
            if settings.cox_ties == "efron":
                out.append(
                    Outcome(
                        adjustment,
                        None,
                        None,
                        counts,  # type: ignore[arg-type]
                        "the robust variance with Efron ties is not pooled",
                    )
                )
                continue
            se = math.sqrt(last[3]) / info
        out.append(Outcome(adjustment, beta, se, counts))  # type: ignore[arg-type]
    return out, rounds[0] if rounds else []


def released(
    outcome: Outcome,
    round_count: Callable[[int], int],
    min_cell_count: int,
    per_parameter: int,
    digits: tuple[int | None, int | None],
    sites: list[str],
) -> dict[str, Any]:
    """One adjustment's pooled estimate as results show it (``results.json``'s ``pooled``
    objects): its hazard ratio, Wald interval and p-value at the given precision (ratio,
    p-value digits), the persons and events per arm as the count rule rounds them, or why it
    is withheld (an arm's persons or events below ``min_cell_count``, fewer events than
    ``per_parameter``, no finite estimate)."""
    ratio_digits, p_digits = digits
    persons_t, persons_c, events_t, events_c = outcome.counts
    body: dict[str, Any] = {
        "adjustment": outcome.adjustment,
        "hr": None,
        "ci_low": None,
        "ci_high": None,
        "p": None,
        "method": METHODS[outcome.adjustment],
        "ci": "wald",
        "sites": sites,
    }
    shown = {
        "target persons": persons_t,
        "comparator persons": persons_c,
        "target events": events_t,
        "comparator events": events_c,
    }
    reason = outcome.reason
    for what, n in shown.items():
        if reason is None and n < min_cell_count:
            reason = f"the pooled {what} fall below {min_cell_count}"
    if reason is None and events_t + events_c < per_parameter:
        reason = f"fewer than {per_parameter} pooled events per parameter"
    if reason is not None or outcome.log_hr is None or outcome.se is None:
        return {**body, "withheld": reason or "no estimate"}
    b, se = outcome.log_hr, outcome.se
    p = 2 * stats.norm.sf(abs(b / se)) if se > 0 else None
    return {
        **body,
        "hr": round_to(math.exp(b), ratio_digits),
        "ci_low": round_to(math.exp(b - _Z * se), ratio_digits),
        "ci_high": round_to(math.exp(b + _Z * se), ratio_digits),
        "p": round_to(p, p_digits),
        "target_persons": round_count(persons_t),
        "comparator_persons": round_count(persons_c),
        "target_events": round_count(events_t),
        "comparator_events": round_count(events_c),
    }
