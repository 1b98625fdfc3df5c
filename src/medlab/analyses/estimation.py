"""Propensity scores, matching, stratification, IPTW, balance and the Cox outcome model.

Estimators are the chosen references themselves: scikit-learn's regularized logistic
regression for the propensity score, lifelines' Cox model (Efron ties, strata, weights with a
robust variance) and Kaplan-Meier. What medlab adds is CohortMethod's study logic around them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import sklearn
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.exceptions import ConvergenceError
from scipy import sparse
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from statsmodels.duration.hazard_regression import PHReg

Adjustment = Literal["none", "matching", "stratification", "iptw"]


class BalanceWarning(UserWarning):
    """A covariate stays imbalanced (|SMD| > 0.1) after adjustment."""


class EstimationWarning(UserWarning):
    """An estimate could not be made (no outcomes in an arm, no convergence)."""


_NAN = float("nan")
_Z = 1.959963984540054


def _sklearn_at_least(major: int, minor: int) -> bool:
    parts = sklearn.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def propensity_scores(
    x: sparse.csr_matrix,
    treatment: np.ndarray,
    penalty: Literal["l1", "l2"] = "l2",
    strength: float = 1.0,
) -> np.ndarray:
    """P(target | covariates) by regularized logistic regression (``strength`` is sklearn's C)."""
    # scikit-learn 1.8 names the penalty by l1_ratio; earlier releases by ``penalty``.
    kind = (
        {"l1_ratio": 1.0 if penalty == "l1" else 0.0}
        if _sklearn_at_least(1, 8)
        else {"penalty": penalty}
    )
    model = LogisticRegression(
        C=strength,
        solver="liblinear" if penalty == "l1" else "lbfgs",
        tol=1e-8,
        max_iter=5000,
        **kind,  # type: ignore[arg-type]
    )
    model.fit(x, treatment)
    return np.asarray(model.predict_proba(x)[:, 1])


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped away from 0 and 1."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.asarray(np.log(p / (1 - p)))


def preference_scores(ps: np.ndarray, treatment: np.ndarray) -> np.ndarray:
    """Walker et al. (2013): the PS with the treated share's odds taken out."""
    share = treatment.mean()
    x = logit(ps) - math.log(share / (1 - share))
    return np.asarray(1 / (1 + np.exp(-x)))


def match(
    ps: np.ndarray, treatment: np.ndarray, max_ratio: int = 1, caliper: float = 0.2
) -> np.ndarray:
    """Greedy nearest-neighbour matching on the logit of the PS within ``caliper`` standard
    deviations, up to ``max_ratio`` comparators per target (taken in rounds, as CohortMethod's
    matchOnPs does). Returns a stratum id per entry, -1 for unmatched ones."""
    score = logit(ps)
    width = caliper * float(np.std(score)) if caliper > 0 else math.inf
    targets = np.flatnonzero(treatment == 1)
    comparators = np.flatnonzero(treatment == 0)
    order = comparators[np.argsort(score[comparators], kind="stable")]
    values = score[order]
    used = np.zeros(len(order), dtype=bool)
    stratum = np.full(len(ps), -1, dtype=np.int64)
    matched = np.zeros(len(ps), dtype=np.int64)
    for round_index in range(max_ratio):
        for t in targets[np.argsort(score[targets], kind="stable")]:
            if matched[t] != round_index:  # only targets matched in every earlier round
                continue
            i = int(np.searchsorted(values, score[t]))
            best, best_gap = -1, width
            lo, hi = i - 1, i
            while lo >= 0 and used[lo]:
                lo -= 1
            while hi < len(order) and used[hi]:
                hi += 1
            for j in (lo, hi):
                if 0 <= j < len(order) and abs(values[j] - score[t]) <= best_gap:
                    best, best_gap = j, abs(values[j] - score[t])
            if best >= 0:
                used[best] = True
                stratum[order[best]] = t
                stratum[t] = t
                matched[t] += 1
    return stratum


def stratify(ps: np.ndarray, strata: int = 5) -> np.ndarray:
    """Strata of equal size on the PS (quintiles by default)."""
    edges = np.quantile(ps, np.linspace(0, 1, strata + 1)[1:-1])
    return np.searchsorted(edges, ps, side="right").astype(np.int64)


def iptw(
    ps: np.ndarray,
    treatment: np.ndarray,
    estimand: Literal["ate", "att"] = "att",
    max_weight: float = 10.0,
) -> np.ndarray:
    """Stabilized inverse probability of treatment weights, truncated at ``max_weight``."""
    share = treatment.mean()
    if estimand == "ate":
        w = np.where(treatment == 1, share / ps, (1 - share) / (1 - ps))
    else:
        w = np.where(treatment == 1, 1.0, (ps / (1 - ps)) * ((1 - share) / share))
    return np.minimum(w, max_weight)


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
) -> Estimate:
    """Cox proportional hazards on treatment (stratified or weighted as the adjustment asks)."""
    frame = population[["days", "outcome", "treatment", "person_id"]].copy()
    kwargs: dict[str, object] = {}
    if stratum is not None:
        frame["stratum"] = stratum
        kwargs["strata"] = ["stratum"]
    if weights is not None:
        frame["weight"] = weights
        kwargs["weights_col"] = "weight"
        kwargs["robust"] = True
    arms = frame.groupby("treatment")
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
    if stratum is not None and weights is None:
        # Many small strata (matched sets): statsmodels' PHReg is linear in the strata where
        # lifelines loops over them; both use Efron's method for ties.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = PHReg(
                    frame["days"],
                    frame[["treatment"]],
                    status=frame["outcome"],
                    strata=stratum,
                    ties="efron",
                ).fit()
        except (np.linalg.LinAlgError, ValueError) as exc:
            warnings.warn(
                f"{adjustment}: the Cox model did not converge ({exc})",
                EstimationWarning,
                stacklevel=2,
            )
            return Estimate(adjustment, *(_NAN,) * 6, *counts, max_abs_smd)
        b, se = float(fit.params[0]), float(fit.bse[0])
        if not (math.isfinite(b) and math.isfinite(se) and se > 0 and abs(b) + _Z * se < 700):
            # Monotone likelihood (every informative stratum has events in one arm only):
            # the coefficient runs off to infinity; there is no finite hazard ratio.
            warnings.warn(
                f"{adjustment}: the Cox model has no finite estimate (log HR {b:.3g}, "
                f"SE {se:.3g}); no hazard ratio",
                EstimationWarning,
                stacklevel=2,
            )
            return Estimate(adjustment, *(_NAN,) * 6, *counts, max_abs_smd)
        return Estimate(
            adjustment,
            math.exp(b),
            math.exp(b - _Z * se),
            math.exp(b + _Z * se),
            float(2 * norm.sf(abs(b / se))),
            b,
            se,
            *counts,
            max_abs_smd,
        )
    fitter = CoxPHFitter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter.fit(
                frame.drop(columns=["person_id"]),
                duration_col="days",
                event_col="outcome",
                **kwargs,
            )  # type: ignore[arg-type]
    except ConvergenceError as exc:
        warnings.warn(
            f"{adjustment}: the Cox model did not converge ({exc})".splitlines()[0],
            EstimationWarning,
            stacklevel=2,
        )
        return Estimate(adjustment, *(_NAN,) * 6, *counts, max_abs_smd)
    row = fitter.summary.loc["treatment"]
    return Estimate(
        adjustment,
        float(row["exp(coef)"]),
        float(row["exp(coef) lower 95%"]),
        float(row["exp(coef) upper 95%"]),
        float(row["p"]),
        float(row["coef"]),
        float(row["se(coef)"]),
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
