"""The comparative study population and its covariates, built inside a node.

Settings mean what they mean in OHDSI CohortMethod's ``createStudyPopulation``: washout
(minimum prior observation), first exposure only, removing subjects in both cohorts,
restricting to the common calendar period, removing subjects with a prior outcome within a
lookback before the risk window, a risk window anchored on cohort start or end (clipped to
the observation period), a minimum number of days at risk, and censoring at a new risk window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from medlab.analyses import charlson
from medlab.fields import Days, NonNegativeDays


class PopulationSettings(BaseModel):
    """createStudyPopulation's settings, snake_case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    washout_period: NonNegativeDays = 0
    first_exposure_only: bool = False
    remove_subjects_in_both_cohorts: bool = False
    restrict_to_common_period: bool = False
    remove_subjects_with_prior_outcome: bool = True
    # CohortMethod's default lookback, 99999 days, means "any time before".
    prior_outcome_lookback: Annotated[int, Field(ge=0, le=99999)] = 99999
    risk_window_start: Days = 0
    start_anchor: Literal["cohort start", "cohort end"] = "cohort start"
    risk_window_end: Days = 0
    end_anchor: Literal["cohort start", "cohort end"] = "cohort end"
    min_days_at_risk: NonNegativeDays = 1
    censor_at_new_risk_window: bool = False


@dataclass(frozen=True)
class AttritionStep:
    """Persons per arm left after one step (and who they are, node-internal)."""

    step: str
    target_persons: int
    comparator_persons: int
    target: frozenset[int] = frozenset()
    comparator: frozenset[int] = frozenset()


def arm_persons(frame: pd.DataFrame, arm: int) -> frozenset[int]:
    """The distinct persons of one arm (1 target, 0 comparator) of a population frame."""
    return frozenset(int(p) for p in frame.loc[frame["treatment"] == arm, "person_id"].unique())


def _count(frame: pd.DataFrame, step: str) -> AttritionStep:
    target, comparator = arm_persons(frame, 1), arm_persons(frame, 0)
    return AttritionStep(step, len(target), len(comparator), target, comparator)


def study_population(
    con: duckdb.DuckDBPyConnection,
    target_id: int,
    comparator_id: int,
    outcome_id: int,
    s: PopulationSettings,
) -> tuple[pd.DataFrame, list[AttritionStep]]:
    """One row per entry: treatment, index date, days at risk, outcome; and the attrition."""
    frame = con.execute(
        """SELECT c.subject_id AS person_id,
                  CASE WHEN c.cohort_definition_id = ? THEN 1 ELSE 0 END AS treatment,
                  c.cohort_start_date AS start_date, c.cohort_end_date AS end_date,
                  op.observation_period_start_date AS op_start,
                  op.observation_period_end_date AS op_end
           FROM results.cohort c
           JOIN observation_period op ON op.person_id = c.subject_id
            AND c.cohort_start_date BETWEEN op.observation_period_start_date
                                        AND op.observation_period_end_date
           WHERE c.cohort_definition_id IN (?, ?)
           ORDER BY person_id, treatment, start_date""",
        [target_id, target_id, comparator_id],
    ).df()
    for column in ("start_date", "end_date", "op_start", "op_end"):
        frame[column] = pd.to_datetime(frame[column])
    steps = [_count(frame, "original cohorts")]
    frame = frame.sort_values(["person_id", "treatment", "start_date"]).reset_index(drop=True)
    if s.first_exposure_only:
        frame = frame.groupby(["person_id", "treatment"]).head(1)
        steps.append(_count(frame, "first exposure only"))
    if s.remove_subjects_in_both_cohorts:
        arms = frame.groupby("person_id")["treatment"].nunique()
        frame = frame[frame["person_id"].map(arms) == 1]
        steps.append(_count(frame, "removed subjects in both cohorts"))
    if s.restrict_to_common_period and len(frame):
        first = frame.groupby("treatment")["start_date"].min().max()
        last = frame.groupby("treatment")["start_date"].max().min()
        frame = frame[(frame["start_date"] >= first) & (frame["start_date"] <= last)]
        steps.append(_count(frame, "restricted to the common period"))
    if s.washout_period:
        frame = frame[(frame["start_date"] - frame["op_start"]).dt.days >= s.washout_period]
        steps.append(_count(frame, f"at least {s.washout_period} days of prior observation"))
    # The next entry of the same person in the same cohort, among the entries still kept.
    frame = frame.sort_values(["person_id", "treatment", "start_date"])
    frame["next_start"] = frame.groupby(["person_id", "treatment"])["start_date"].shift(-1)
    day = pd.Timedelta(days=1)
    start_base = frame["start_date"] if s.start_anchor == "cohort start" else frame["end_date"]
    end_base = frame["start_date"] if s.end_anchor == "cohort start" else frame["end_date"]
    frame = frame.assign(
        risk_start=start_base + s.risk_window_start * day,
        risk_end=(end_base + s.risk_window_end * day).where(
            lambda x: x <= frame["op_end"], frame["op_end"]
        ),
    )
    if s.censor_at_new_risk_window:
        next_risk = frame["next_start"] + s.risk_window_start * day - day
        frame["risk_end"] = frame["risk_end"].where(
            frame["next_start"].isna() | (frame["risk_end"] <= next_risk), next_risk
        )
    outcomes = con.execute(
        "SELECT subject_id AS person_id, cohort_start_date AS outcome_date FROM results.cohort "
        "WHERE cohort_definition_id = ?",
        [outcome_id],
    ).df()
    outcomes["outcome_date"] = pd.to_datetime(outcomes["outcome_date"])
    frame = frame.reset_index(drop=True)
    frame["entry"] = np.arange(len(frame))
    joined = frame[["entry", "person_id", "risk_start", "risk_end"]].merge(outcomes, on="person_id")
    if s.remove_subjects_with_prior_outcome:
        prior = joined[
            (joined["outcome_date"] < joined["risk_start"])
            # Compared in days, never as a date: 99999 days before an entry in 1951 is before
            # the earliest date pandas can hold.
            & ((joined["risk_start"] - joined["outcome_date"]).dt.days <= s.prior_outcome_lookback)
        ]["entry"].unique()
        frame = frame[~frame["entry"].isin(prior)]
        steps.append(_count(frame, "no prior outcome"))
    frame = frame[(frame["risk_end"] - frame["risk_start"]).dt.days + 1 >= s.min_days_at_risk]
    steps.append(_count(frame, f"at least {s.min_days_at_risk} day(s) at risk"))
    during = (
        joined[
            (joined["outcome_date"] >= joined["risk_start"])
            & (joined["outcome_date"] <= joined["risk_end"])
        ]
        .groupby("entry")["outcome_date"]
        .min()
    )
    frame = frame.assign(outcome_date=frame["entry"].map(during))
    frame["outcome"] = frame["outcome_date"].notna().astype(int)
    stop = frame["outcome_date"].fillna(frame["risk_end"])
    frame["days"] = (stop - frame["risk_start"]).dt.days + 1
    columns = ["person_id", "treatment", "start_date", "risk_start", "risk_end", "days", "outcome"]
    return frame[columns].reset_index(drop=True), steps


@dataclass(frozen=True)
class Covariates:
    """A sparse entries × covariates matrix and the covariate ids."""

    matrix: sparse.csr_matrix
    ids: list[str]


def covariates(
    con: duckdb.DuckDBPyConnection,
    population: pd.DataFrame,
    exclude_ingredients: list[int],
    window: tuple[int, int] = (-365, 0),
) -> Covariates:
    """Demographics, conditions any time before index, the Charlson comorbidity index, and
    conditions, drugs and procedures in the window before index (drugs descending from
    ``exclude_ingredients`` left out, as CohortMethod leaves out the exposures)."""
    entries = population[["person_id", "start_date"]].copy()
    entries["row"] = np.arange(len(entries))
    con.register("medlab_population", entries)
    try:
        placeholders = ", ".join("?" for _ in exclude_ingredients) or "NULL"
        rows = con.execute(
            f"""WITH excluded AS (SELECT descendant_concept_id AS c FROM concept_ancestor
                                  WHERE ancestor_concept_id IN ({placeholders})),
                 e AS (SELECT row, person_id, CAST(start_date AS DATE) AS d
                       FROM medlab_population)
            SELECT row, 'age_group:' || ((year(e.d) - p.year_of_birth) // 5) * 5
            FROM e JOIN person p USING (person_id)
            UNION ALL SELECT row, 'gender:' || p.gender_concept_id
            FROM e JOIN person p USING (person_id)
            UNION ALL SELECT row, 'index_year:' || year(e.d) FROM e
            UNION ALL SELECT DISTINCT e.row, 'condition:' || x.condition_concept_id
            FROM e JOIN condition_occurrence x ON x.person_id = e.person_id
             AND x.condition_start_date BETWEEN e.d + ? AND e.d + ?
            UNION ALL SELECT DISTINCT e.row, 'condition_any_time_prior:' || x.condition_concept_id
            FROM e JOIN condition_occurrence x ON x.person_id = e.person_id
             AND x.condition_start_date <= e.d
            UNION ALL SELECT DISTINCT e.row, 'drug:' || x.drug_concept_id
            FROM e JOIN drug_exposure x ON x.person_id = e.person_id
             AND x.drug_exposure_start_date BETWEEN e.d + ? AND e.d + ?
            WHERE x.drug_concept_id NOT IN (SELECT c FROM excluded)
            UNION ALL SELECT DISTINCT e.row, 'procedure:' || x.procedure_concept_id
            FROM e JOIN procedure_occurrence x ON x.person_id = e.person_id
             AND x.procedure_date BETWEEN e.d + ? AND e.d + ?""",
            [*exclude_ingredients, *window, *window, *window],
        ).fetchall()
        scores = con.execute(
            charlson.scores_sql(
                "(SELECT row, person_id, CAST(start_date AS DATE) AS index_date"
                " FROM medlab_population)"
            )
        ).fetchall()
    finally:
        con.unregister("medlab_population")
    ids = sorted({name for _, name in rows})
    index = {name: i for i, name in enumerate(ids)}
    data = np.ones(len(rows))
    r = np.array([row for row, _ in rows], dtype=np.int64)
    c = np.array([index[name] for _, name in rows], dtype=np.int64)
    binary = sparse.csr_matrix((data, (r, c)), shape=(len(entries), len(ids)))
    binary.data[:] = 1.0  # a concept recorded twice in the window is still one covariate
    # The Charlson index, scaled to 0..1 by its maximum as FeatureExtraction's tidyCovariates
    # normalizes continuous covariates before the propensity model.
    top = max((score for _, score in scores), default=0)
    if top == 0:
        return Covariates(binary, ids)
    score = sparse.csr_matrix(
        (
            [s / top for _, s in scores],
            ([row for row, _ in scores], [0] * len(scores)),
        ),
        shape=(len(entries), 1),
    )
    return Covariates(sparse.hstack([binary, score], format="csr"), [*ids, "charlson_index"])
