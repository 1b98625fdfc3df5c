"""A small federated study over the synthetic hospitals, for the federation's tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medlab.privacy.node_policy import set_policy
from medlab.privacy.policy import parse_policy
from medlab.synth.cohorts import new_users, outcome

APIXABAN, WARFARIN, GI_BLEED = 43013024, 1310149, 192671
SITES = ("hospital_a", "hospital_b", "hospital_c")


def spec(name: str = "federated apixaban") -> dict[str, Any]:
    """Incidence, a two-cohort characterization and a comparative analysis (fixed prior,
    two adjustments: quick)."""
    return {
        "name": name,
        "cohorts": [
            {"id": 1, "name": "apixaban new users", "definition": new_users(APIXABAN)},
            {"id": 2, "name": "warfarin new users", "definition": new_users(WARFARIN)},
            {"id": 3, "name": "GI bleed", "definition": outcome(GI_BLEED)},
        ],
        "analyses": [
            {"type": "incidence", "name": "bleeds", "target": 1, "outcome": 3},
            {"type": "characterization", "name": "table1", "cohorts": [1, 2]},
            {
                "type": "comparative",
                "name": "apixaban_vs_warfarin",
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {
                    "ps_prior": "normal",
                    "ps_variance": 1.0,
                    "adjustments": ["none", "stratification"],
                },
            },
        ],
    }


def copy_sites(source: Path, target: Path, sites: tuple[str, ...] = SITES) -> list[Path]:
    """Copies of the synthetic stores with their secrets (each its own node)."""
    target.mkdir(parents=True, exist_ok=True)
    stores = []
    for name in sites:
        for suffix in (".duckdb", ".secret"):
            shutil.copy(source / f"{name}{suffix}", target / f"{name}{suffix}")
        stores.append(target / f"{name}.duckdb")
    return stores


def federation_policy(store: Path, **rules: Any) -> None:
    """Set the node's policy: the default release rules with these federation rules."""
    set_policy(store, parse_policy({"version": "test-1", "federation": rules}, "test"))


def pooled_reference(stores: list[Path], settings: Any, bin_days: int = 30) -> Any:
    """statsmodels on the union of the sites' rows of a pooled model (``settings``: its
    ``ModelSettings``): the GLM, PHReg stratified by site with Breslow ties, or (binned) PHReg
    on the times rounded up to their ``bin_days`` bin; the fitted coefficients."""
    import numpy as np
    import statsmodels.api as sm
    from statsmodels.duration.hazard_regression import PHReg

    from medlab.analyses.federated import model as pooled
    from medlab.cdm.store import open_store

    designs = []
    for store in stores:
        with open_store(store, read_only=True) as con:
            designs.append(pooled.design(con, 1, 2, 3, settings))
    x = np.vstack([d.x for d in designs])
    y = np.concatenate([d.y for d in designs])
    if settings.model not in ("cox", "cox_binned"):
        family = sm.families.Binomial() if settings.model == "logistic" else sm.families.Poisson()
        offset = (
            None if settings.model == "logistic" else np.concatenate([d.offset for d in designs])
        )
        return sm.GLM(y, x, family=family, offset=offset).fit(tol=1e-12)
    time = np.concatenate([d.time for d in designs])
    if settings.model == "cox_binned":  # times rounded up to their bin's end, unstratified
        width, end = bin_days, bin_days * pooled.Grid.of(settings, bin_days).count
        status = y * (time <= end)
        binned = np.minimum(np.ceil(time / width) * width, end)
        return PHReg(binned, x, status=status, ties="breslow").fit()
    strata = np.concatenate([np.full(len(d.y), i) for i, d in enumerate(designs)])
    return PHReg(time, x, status=y, strata=strata, ties="breslow").fit()


def site_rows(stores: list[Path], settings: Any) -> list[Any]:
    """Each store's rows for pooled comparative estimates (cohorts 1, 2 and 3)."""
    from medlab.analyses.federated import comparative as pooled
    from medlab.cdm.store import open_store

    found = []
    for store in stores:
        with open_store(store, read_only=True) as con:
            found.append(pooled.site_rows(con, 1, 2, 3, settings))
    return found


def cross_validated_variance(
    sites: list[Any], settings: Any, chosen: list[str], min_cell_count: int = 10
) -> tuple[float, list[float]]:
    """The comparative analysis's cross-validation of the prior variance on the union of
    the sites' rows with folds cut within each site (a site too small to hold
    ``min_cell_count`` persons of each arm out in every fold holds none out): for each fold
    and grid variance the local penalized fit on the stacked training rows, its held-out
    log-likelihood, the variance with the highest mean."""
    import numpy as np
    from scipy import sparse

    from medlab.analyses import propensity
    from medlab.analyses.federated.ps_cv import site_folds

    x = sparse.vstack([s.design(chosen) for s in sites], format="csr")
    y = np.concatenate([s.treatment for s in sites])
    folds = settings.ps_cv_folds
    fold = np.concatenate(
        [site_folds(s.treatment, folds, settings.ps_cv_seed, min_cell_count) for s in sites]
    )
    totals: list[list[float]] = [[] for _ in propensity.GRID]
    for f in range(folds):
        train, test = fold != f, fold == f
        if not test.any() or len(set(y[train])) < 2:
            continue
        for i, variance in enumerate(propensity.GRID):
            fit = propensity._fit(x[train], y[train], settings.ps_prior, variance)
            p = np.clip(propensity._predict(x[test], fit.intercept, fit.beta), 1e-15, 1 - 1e-15)
            totals[i].append(float(np.sum(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p))))
    means = [float(np.mean(t)) for t in totals]
    return propensity.GRID[int(np.argmax(means))], means


def pooled_comparative_reference(
    sites: list[Any], settings: Any, chosen: list[str], variance: float | None = None
) -> dict[str, Any]:
    """The pooled comparative algorithm on the union of the sites' rows, with ``site`` as a
    stratum: the comparative analysis's own penalized PS fit on the stacked rows, the
    union's caliper spread and target share, matching and PS strata within each site, and
    one Cox fit (``medlab.analyses.cox.fit``) on the stacked adjusted rows stratified by
    site (and set/stratum); hazard ratio and Wald interval per adjustment."""
    import math

    import numpy as np
    import pandas as pd
    from scipy import sparse

    from medlab.analyses import cox, propensity
    from medlab.analyses.comparative import adjust

    x = sparse.vstack([s.design(chosen) for s in sites], format="csr")
    y = np.concatenate([s.treatment for s in sites])
    fit = propensity._fit(x, y, settings.ps_prior, variance or settings.ps_variance)
    scores = [
        np.round(
            propensity._predict(
                s.design(chosen)[s.population["row_id"].to_numpy() - 1], fit.intercept, fit.beta
            ),
            10,
        )
        for s in sites
    ]
    union = np.concatenate(scores)
    with np.errstate(divide="ignore"):
        logit = np.log(union / (1 - union))
    finite = logit[np.isfinite(logit)]  # as matchOnPs: the SD over the finite logits
    on_logit = settings.caliper_scale == "standardized_logit"
    spread = float(np.std(finite if on_logit else union, ddof=1))
    arms = np.concatenate([s.population["treatment"].to_numpy() for s in sites])
    share = float(arms.mean())
    out: dict[str, Any] = {"intercept": fit.intercept, "beta": fit.beta}
    for adjustment in settings.adjustments:
        frames, strata, weights = [], [], []
        for i, (s, sc) in enumerate(zip(sites, scores, strict=True)):
            a = adjust(adjustment, s.population, sc, settings, spread, share)
            frame = a.frame.assign(person_id=a.frame["person_id"].astype(str) + f"@{i}")
            frames.append(frame)
            inner = np.zeros(len(frame), dtype=np.int64) if a.stratum is None else a.stratum
            strata.append(i * 1_000_000 + inner)
            weights.append(np.ones(len(frame)) if a.weights is None else a.weights)
        frame = pd.concat(frames, ignore_index=True)
        weighted = adjustment == "iptw"
        fitted = cox.fit(
            frame["days"].to_numpy(),
            frame["outcome"].to_numpy(),
            frame["treatment"].to_numpy(dtype=float),
            weight=np.concatenate(weights) if weighted else None,
            stratum=np.concatenate(strata),
            ties=settings.cox_ties,
            interval="wald",
            robust=weighted and settings.iptw_variance == "robust",
            cluster=frame["person_id"].to_numpy() if weighted else None,
        )
        out[adjustment] = {
            "frame": frame,
            "weights": np.concatenate(weights),
            "hr": math.exp(fitted.log_hr),
            "ci_low": math.exp(fitted.low),
            "ci_high": math.exp(fitted.high),
        }
    return out
