"""A literal, row-by-row transcription of CohortMethod's population rules (the reference
the spec tests compare medlab against). Plain Python on lists of dicts, no pandas, so that it
shares nothing with the implementation under test.

Sources (OHDSI/CohortMethod):
- ``inst/sql/sql_server/CreateCohorts.sql`` (getDbCohortMethodData's cohort fetch),
- ``inst/sql/sql_server/GetOutcomes.sql`` (the outcome rows),
- ``R/DataLoadingSaving.R`` ``getDbCohortMethodData`` (its attrition labels),
- ``R/StudyPopulation.R`` ``createStudyPopulation``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

Row = dict[str, Any]


def _counts(rows: list[Row], label: str) -> tuple[str, int, int]:
    target = {r["person"] for r in rows if r["treatment"] == 1}
    comparator = {r["person"] for r in rows if r["treatment"] == 0}
    return label, len(target), len(comparator)


def fetch(
    raw: list[Row], periods: dict[int, list[tuple[dt.date, dt.date]]], s: dict[str, Any]
) -> tuple[list[Row], list[tuple[str, int, int]]]:
    """CreateCohorts.sql: raw rows {person, treatment, start, end}; periods per person."""
    attrition = [_counts(raw, "Original cohorts")]
    rows = [dict(r) for r in raw]
    dup = s.get("remove_duplicate_subjects", "keep all")
    if dup == "remove all":  # INNER JOIN (... COUNT(DISTINCT drug_concept_id) = 1)
        arms: dict[int, set[int]] = {}
        for r in raw:
            arms.setdefault(r["person"], set()).add(r["treatment"])
        rows = [r for r in rows if len(arms[r["person"]]) == 1]
    elif dup == "keep first":  # ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY start) = 1
        kept = []
        for person in sorted({r["person"] for r in rows}):
            mine = sorted((r for r in rows if r["person"] == person), key=lambda r: r["start"])
            first = [r for r in mine if r["start"] == mine[0]["start"]]
            if len({r["treatment"] for r in first}) == 1:  # a tie across cohorts: removed
                kept.append(first[0])
        rows = kept
    if s.get("first_exposure_only"):  # MIN(cohort_start_date), MIN(cohort_end_date)
        grouped: dict[tuple[int, int], list[Row]] = {}
        for r in rows:
            grouped.setdefault((r["person"], r["treatment"]), []).append(r)
        rows = [
            {
                "person": p,
                "treatment": t,
                "start": min(r["start"] for r in g),
                "end": min(r["end"] for r in g),
            }
            for (p, t), g in grouped.items()
        ]
    if s.get("restrict_to_common_period"):  # limits from the raw exposure table
        first = max(min(r["start"] for r in raw if r["treatment"] == t) for t in (0, 1))
        last = min(max(r["start"] for r in raw if r["treatment"] == t) for t in (0, 1))
        rows = [r for r in rows if first <= r["start"] <= last]
    joined = []
    for r in rows:  # INNER JOIN observation_period ... start BETWEEN op start AND op end
        for op_start, op_end in periods.get(r["person"], []):
            if op_start <= r["start"] <= op_end:
                joined.append({**r, "op_start": op_start, "op_end": op_end})
    washout = s.get("washout_period", 0)
    if washout:
        joined = [r for r in joined if (r["start"] - r["op_start"]).days >= washout]
    joined.sort(key=lambda r: (r["person"], r["start"], -r["treatment"]))
    for i, r in enumerate(joined, start=1):  # ROW_NUMBER() OVER (ORDER BY person, start)
        r["row"] = i
        r["days_from_obs_start"] = (r["start"] - r["op_start"]).days
        r["days_to_cohort_end"] = (r["end"] - r["start"]).days
        r["days_to_obs_end"] = (r["op_end"] - r["start"]).days
    labels = []
    if s.get("first_exposure_only"):
        labels.append("first exp. only")
    if dup == "remove all":
        labels.append("removed subs in both cohorts")
    elif dup == "keep first":
        labels.append("first cohort only")
    if s.get("restrict_to_common_period"):
        labels.append("restrict to common period")
    if washout:
        labels.append(f"{washout} days of obs. prior")
    if s.get("first_exposure_only") or dup != "keep all" or washout:
        label = " & ".join(labels)
        attrition.append(_counts(joined, label[0].upper() + label[1:]))
    else:
        attrition = [_counts(joined, "Original cohorts")]
    return joined, attrition


def outcomes(rows: list[Row], outcome_starts: dict[int, list[dt.date]]) -> list[tuple[int, int]]:
    """GetOutcomes.sql: DISTINCT (row_id, days_to_event) inside the row's period."""
    found = set()
    for r in rows:
        for day in outcome_starts.get(r["person"], []):
            days = (day - r["start"]).days
            if -days <= r["days_from_obs_start"] and days <= r["days_to_obs_end"]:
                found.add((r["row"], days))
    return sorted(found)


def study_population(
    rows: list[Row],
    events: list[tuple[int, int]],
    s: dict[str, Any],
    attrition: list[tuple[str, int, int]],
) -> tuple[list[Row], list[tuple[str, int, int]]]:
    """createStudyPopulation, step by step, for one outcome."""
    rows = [dict(r) for r in rows]
    attrition = list(attrition)
    rws, rwe = s.get("risk_window_start", 0), s.get("risk_window_end", 0)
    start_end = s.get("start_anchor", "cohort start") == "cohort end"
    end_end = s.get("end_anchor", "cohort end") == "cohort end"
    if s.get("remove_subjects_with_prior_outcome", True):
        lookback = s.get("prior_outcome_lookback", 99999)
        by_row = {r["row"]: r for r in rows}
        prior = set()
        for row, days in events:
            if row not in by_row:
                continue
            upper = rws + (by_row[row]["days_to_cohort_end"] if start_end else 0)
            if days > -lookback and days < upper:
                prior.add(row)
        rows = [r for r in rows if r["row"] not in prior]
        attrition.append(_counts(rows, "No prior outcome"))
    for r in rows:
        r["risk_start"] = rws + (r["days_to_cohort_end"] if start_end else 0)
        r["risk_end"] = rwe + (r["days_to_cohort_end"] if end_end else 0)
        r["risk_end"] = min(r["risk_end"], r["days_to_obs_end"])
        r["risk_end"] = min(r["risk_end"], r["risk_start"] + s.get("max_days_at_risk", 99999))
    if s.get("censor_at_new_risk_window") and len(rows) > 1:
        rows.sort(key=lambda r: (r["person"], r["risk_start"]))  # stable: row order kept
        cut = []
        for i in range(len(rows) - 1):
            a, b = rows[i], rows[i + 1]
            end_a = a["start"] + dt.timedelta(days=a["risk_end"])
            start_b = b["start"] + dt.timedelta(days=b["risk_start"])
            if a["person"] == b["person"] and end_a >= start_b:
                cut.append((i, start_b))
        for i, start_b in cut:
            rows[i]["risk_end"] = (start_b - dt.timedelta(days=1) - rows[i]["start"]).days
        if cut:
            rows = [r for r in rows if r["risk_end"] >= r["risk_start"]]
        attrition.append(_counts(rows, "Censoring at start of new time-at-risk"))
    minimum = s.get("min_days_at_risk", 1)
    if minimum != 0:
        rows = [r for r in rows if r["risk_end"] - r["risk_start"] >= minimum]
        attrition.append(_counts(rows, f"Have at least {minimum} days at risk"))
    for r in rows:
        during = sorted(
            d for row, d in events if row == r["row"] and r["risk_start"] <= d <= r["risk_end"]
        )
        r["outcome_count"] = len(during)
        r["time_at_risk"] = r["risk_end"] - r["risk_start"] + 1
        r["survival_time"] = during[0] - r["risk_start"] + 1 if during else r["time_at_risk"]
    rows.sort(key=lambda r: r["row"])
    return rows, attrition
