"""Stratification, IPTW, balance, the Cox outcome model and Kaplan-Meier curves.

The propensity model is :mod:`medlab.analyses.propensity` (Cyclops-style), matching
:mod:`medlab.analyses.matching` (CohortMethod's matcher) and the Cox model
:mod:`medlab.analyses.cox`; this module holds the rest of CohortMethod's study logic around
them, and Kaplan-Meier curves by lifelines.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from scipy import sparse

from medlab.analyses import cox as coxmodel
from medlab.analyses.matching import match_on_ps

Adjustment = Literal["none", "matching", "stratification", "iptw"]
Estimand = Literal["ate", "att"]

__all__ = ["match_on_ps"]


class BalanceWarning(UserWarning):
    """A covariate stays imbalanced (|SMD| > 0.1) after adjustment."""


class EstimationWarning(UserWarning):
    """An estimate could not be made (no outcomes in an arm, no convergence)."""


_NAN = float("nan")


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.asarray(np.log(p / (1 - p)))


def preference_scores(ps: np.ndarray, treatment: np.ndarray) -> np.ndarray:
    """Walker et al. (2013), as CohortMethod's ``computePreferenceScore``: the PS with the
    treated share's odds taken out (scores above 0.9999999 capped there first)."""
    share = treatment.mean()
    capped = np.minimum(ps, 0.9999999)
    x = logit(capped) - math.log(share / (1 - share))
    return np.asarray(1 / (1 + np.exp(-x)))


def stratify(ps: np.ndarray, strata: int = 5) -> np.ndarray:
    """Strata of equal size on the PS (quintiles by default)."""
    edges = np.quantile(ps, np.linspace(0, 1, strata + 1)[1:-1])
    return np.searchsorted(edges, ps, side="right").astype(np.int64)


def iptw(
    ps: np.ndarray,
    treatment: np.ndarray,
    estimand: Estimand = "att",
    max_weight: float = 10.0,
    share: float | None = None,
) -> np.ndarray:
    """CohortMethod's stabilized weights (``computeIptw``), truncated at ``max_weight`` as
    ``truncateIptw`` does. ATT: target P(T), comparator P(C) ps/(1 - ps); ATE: target
    P(T)/ps, comparator P(C)/(1 - ps); P(T) and P(C) are the arms' shares of the rows
    (``share``: P(T) given, e.g. the union's in a pooled fit)."""
    share = float(np.mean(treatment == 1)) if share is None else share
    with np.errstate(divide="ignore"):
        if estimand == "ate":
            w = np.where(treatment == 1, share / ps, (1 - share) / (1 - ps))
        else:
            w = np.where(treatment == 1, share, (1 - share) * ps / (1 - ps))
    return np.asarray(np.minimum(w, max_weight))


def standardized_differences(
    x: sparse.csr_matrix, treatment: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per covariate, (mean_t - mean_c) / sqrt((var_t + var_c) / 2), optionally weighted."""
    w = np.ones(x.shape[0]) if weights is None else weights
    out = []
    for arm in (1, 0):
        rows = treatment == arm
        wa = w[rows]
        xa = x[rows]
        total = wa.sum()
        mean = np.asarray(xa.T @ wa).ravel() / total
        mean_sq = np.asarray(xa.multiply(xa).T @ wa).ravel() / total
        out.append((mean, np.maximum(mean_sq - mean**2, 0.0)))
    (mt, vt), (mc, vc) = out
    pooled = np.sqrt((vt + vc) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        smd = np.where(pooled > 0, (mt - mc) / pooled, 0.0)
    return np.asarray(smd)


@dataclass(frozen=True)
class Estimate:
    """One adjustment's hazard ratio with the persons and events in each arm."""

    adjustment: Adjustment
    hr: float
    ci_low: float
    ci_high: float
    p: float
    log_hr: float
    se: float
    target_persons: int
    comparator_persons: int
    target_events: int
    comparator_events: int
    max_abs_smd: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON form the study results use (a missing number is null)."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in self.__dict__.items()
        }


def cox(
    population: pd.DataFrame,
    adjustment: Adjustment,
    stratum: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    max_abs_smd: float | None = None,
    ties: coxmodel.Ties = "breslow",
    interval: coxmodel.Interval = "profile",
    robust: bool = True,
) -> Estimate:
    """Cox proportional hazards on treatment (stratified or weighted as the adjustment asks;
    a weighted fit's variance is robust unless ``robust`` is false)."""
    arms = population.groupby("treatment")
    persons = arms["person_id"].nunique()
    events = arms["outcome"].sum()
    counts = (
        int(persons.get(1, 0)),
        int(persons.get(0, 0)),
        int(events.get(1, 0)),
        int(events.get(0, 0)),
    )
    if counts[0] == 0 or counts[1] == 0 or counts[2] == 0 or counts[3] == 0:
        warnings.warn(
            f"{adjustment}: an arm has no persons or no outcomes; no hazard ratio",
            EstimationWarning,
            stacklevel=2,
        )
        return Estimate(adjustment, *(_NAN,) * 6, *counts, max_abs_smd)
    try:
        fitted = coxmodel.fit(
            population["days"].to_numpy(),
            population["outcome"].to_numpy(),
            population["treatment"].to_numpy(dtype=float),
            weight=weights,
            stratum=stratum,
            ties=ties,
            interval=interval,
            robust=robust and weights is not None,
            cluster=population["person_id"].to_numpy() if weights is not None else None,
        )
    except coxmodel.NoEstimate as exc:
        # Monotone likelihood (e.g. every informative matched set has events in one arm
        # only): the coefficient runs off to infinity; there is no finite hazard ratio.
        warnings.warn(
            f"{adjustment}: the Cox model has no finite estimate ({exc}); no hazard ratio",
            EstimationWarning,
            stacklevel=2,
        )
        return Estimate(adjustment, *(_NAN,) * 6, *counts, max_abs_smd)
    b, se = fitted.log_hr, fitted.se
    return Estimate(
        adjustment,
        math.exp(b),
        math.exp(fitted.low),
        math.exp(fitted.high),
        fitted.p,
        b,
        se,
        *counts,
        max_abs_smd,
    )


def kaplan_meier(
    population: pd.DataFrame,
    weights: np.ndarray | None = None,
    step: int = 30,
    horizon: int = 1800,
) -> list[dict[str, object]]:
    """Survival per arm at every point of the day grid ``0, step, …, horizon`` (fixed by the
    settings, never by the data), with the number at risk and the (unweighted) events since
    the previous grid point; an arm with nobody has survival 1 and nobody at risk."""
    rows = []
    grid = np.arange(0, horizon + step, step)
    for arm, name in ((1, "target"), (0, "comparator")):
        part = population[population["treatment"] == arm]
        if part.empty:
            rows += [
                {"arm": name, "day": float(t), "survival": 1.0, "at_risk": 0.0, "events": 0.0}
                for t in grid
            ]
            continue
        w = None if weights is None else weights[population["treatment"].to_numpy() == arm]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lifelines notes that IPTW weights are not counts
            fitter = KaplanMeierFitter().fit(part["days"], part["outcome"], weights=w)
        survival = fitter.survival_function_at_times(grid).to_numpy()
        days = part["days"].to_numpy()
        event_days = days[part["outcome"].to_numpy() == 1]
        previous = -1.0
        for t, s in zip(grid, survival, strict=True):
            rows.append(
                {
                    "arm": name,
                    "day": float(t),
                    "survival": float(s),
                    "at_risk": float((days >= t).sum()),
                    "events": float(((event_days > previous) & (event_days <= t)).sum()),
                }
            )
            previous = float(t)
    return rows
