"""Study diagnostics and empirical calibration of comparative estimates, from released values.

For each estimate (one site's, or the pooled one) and its adjustment: the negative controls'
null distribution (EmpiricalCalibration ``fitNull``), the calibrated p-value and confidence
interval (``calibrateP``, ``calibrateConfidenceInterval`` on the error model, fitted with
positive controls when there are any, otherwise the null converted), and CohortMethod's
diagnostics with ``createCmDiagnosticThresholds``' defaults: max |SMD| after adjustment over
all covariates and over the table-1 covariates (< 0.1), equipoise (>= 0.2), MDRR (<= 10),
generalizability (max |SMD| of the estimate's population after vs before adjustment, < 1), EASE
(<= 0.25). An estimate is ``diagnostics: fail`` when any evaluated check fails, with the
failing checks named; a check with no released value is ``not evaluated``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medlab.analyses import calibration as cal
from medlab.analyses import meta


def _check(value: float | None, threshold: float, passes: bool | None) -> dict[str, Any]:
    return {"value": value, "threshold": threshold, "pass": passes}


def _at_most(value: float | None, threshold: float, strict: bool = False) -> dict[str, Any]:
    if value is None or not math.isfinite(value):
        return _check(value if value is None else None, threshold, None)
    return _check(value, threshold, value < threshold if strict else value <= threshold)


def calibrate(estimate: dict[str, Any], controls: list[dict[str, Any]]) -> dict[str, Any]:
    """The null, EASE and the calibrated estimate for one estimate and its controls."""
    negatives = [c for c in controls if c["true_log_hr"] == 0 and c["log_hr"] is not None]
    usable = [c for c in controls if c["log_hr"] is not None and c["se"]]
    if len(negatives) < 2:
        return {"negative_controls": len(negatives), "null": None, "ease": None}
    null = cal.fit_null(
        np.array([c["log_hr"] for c in negatives]), np.array([c["se"] for c in negatives])
    )
    if any(c["true_log_hr"] != 0 for c in usable):
        model = cal.fit_systematic_error_model(
            np.array([c["log_hr"] for c in usable]),
            np.array([c["se"] for c in usable]),
            np.array([c["true_log_hr"] for c in usable]),
        )
    else:
        model = cal.null_to_error_model(null)
    out: dict[str, Any] = {
        "negative_controls": len(negatives),
        "null": {"mean": null.mean, "sd": null.sd},
        "error_model": model.__dict__,
        "ease": cal.ease(null),
    }
    b, se = estimate.get("log_hr"), estimate.get("se")
    if b is None or not se:
        return out
    log_hr, low, high, cal_se = cal.calibrate_ci(model, b, se)
    if not all(math.isfinite(v) for v in (log_hr, low, high, cal_se)):
        return out  # the error model cannot be inverted at this estimate
    out.update(
        calibrated_p=cal.calibrate_p(null, b, se),
        calibrated_hr=math.exp(log_hr),
        calibrated_ci_low=math.exp(low),
        calibrated_ci_high=math.exp(high),
        calibrated_log_hr=log_hr,
        calibrated_se=cal_se,
    )
    return out


def diagnose(
    estimate: dict[str, Any], equipoise: float | None, calibrated: dict[str, Any]
) -> dict[str, Any]:
    """CohortMethod's pass/fail diagnostics for one estimate."""
    persons = [estimate.get("target_persons"), estimate.get("comparator_persons")]
    events = [estimate.get("target_events"), estimate.get("comparator_events")]
    mdrr = None
    if None not in persons and None not in events and sum(persons) > 0:  # type: ignore[arg-type]
        share = persons[0] / sum(persons)  # type: ignore[operator,arg-type]
        mdrr = cal.mdrr(share, float(sum(events)))  # type: ignore[arg-type]
    checks = {
        "max_abs_smd": _at_most(estimate.get("max_abs_smd"), cal.SDM_THRESHOLD, strict=True),
        "max_abs_smd_table1": _at_most(
            estimate.get("max_abs_smd_table1"), cal.SDM_THRESHOLD, strict=True
        ),
        "equipoise": (
            _check(None, cal.EQUIPOISE_THRESHOLD, None)
            if equipoise is None
            else _check(equipoise, cal.EQUIPOISE_THRESHOLD, equipoise >= cal.EQUIPOISE_THRESHOLD)
        ),
        "mdrr": _at_most(
            mdrr if mdrr is None or math.isfinite(mdrr) else math.inf, cal.MDRR_THRESHOLD
        ),
        "generalizability": _at_most(
            estimate.get("generalizability"), cal.GENERALIZABILITY_SDM_THRESHOLD, strict=True
        ),
        "ease": _at_most(calibrated.get("ease"), cal.EASE_THRESHOLD),
    }
    if mdrr is not None and not math.isfinite(mdrr):
        checks["mdrr"] = _check(None, cal.MDRR_THRESHOLD, False)
    failing = [name for name, c in checks.items() if c["pass"] is False]
    return {
        "diagnostics": "fail" if failing else "pass",
        "failing": failing,
        "not_evaluated": [name for name, c in checks.items() if c["pass"] is None],
        "checks": checks,
    }


def pooled_controls(per_site: list[dict[str, Any]], adjustment: str) -> list[dict[str, Any]]:
    """Each control's random-effects pooled estimate across the sites that released it."""
    by_outcome: dict[int, list[dict[str, Any]]] = {}
    for site in per_site:
        for c in site.get("controls", []):
            if c["adjustment"] == adjustment:
                by_outcome.setdefault(c["outcome"], []).append(c)
    out = []
    for outcome, rows in by_outcome.items():
        usable = [r for r in rows if r["log_hr"] is not None and r["se"]]
        row = {"outcome": outcome, "true_log_hr": rows[0]["true_log_hr"], "adjustment": adjustment}
        if usable:
            pooled = meta.random_effects([r["log_hr"] for r in usable], [r["se"] for r in usable])
            row.update(log_hr=pooled.log_hr, se=pooled.se, hr=pooled.hr, sites=pooled.sites)
        else:
            row.update(log_hr=None, se=None, hr=None, sites=0)
        out.append(row)
    return out


def assess(
    estimate: dict[str, Any], controls: list[dict[str, Any]], equipoise: float | None
) -> dict[str, Any]:
    """Calibration and diagnostics of one estimate, merged into one record."""
    mine = [c for c in controls if c["adjustment"] == estimate["adjustment"]]
    calibrated = calibrate(estimate, mine)
    return {**calibrated, **diagnose(estimate, equipoise, calibrated)}
