"""The comparative study population and its covariates, built inside a node.

Every rule is OHDSI CohortMethod's, in its order and with its attrition labels, in two
stages as CohortMethod runs them:

1. ``getDbCohortMethodData`` (CohortMethod ``R/DataLoadingSaving.R`` and
   ``inst/sql/sql_server/CreateCohorts.sql``): subjects in both cohorts removed (or only
   the first cohort kept) over every exposure row, the first exposure per subject and cohort
   (``MIN(cohort_start_date)``, ``MIN(cohort_end_date)``), the common period taken from
   *every* exposure row of both cohorts before any filter, the entry's start inside an
   observation period, and the washout (days of observation before the start).
2. ``createStudyPopulation`` (CohortMethod ``R/StudyPopulation.R``): subjects with the
   outcome in ``(-prior_outcome_lookback, risk_window_start)`` days of the cohort start
   removed, the risk window (clipped to the observation period's end and to
   ``max_days_at_risk``), censoring at a new risk window across both arms, and at least
   ``min_days_at_risk`` days at risk (``riskEnd - riskStart >= minDaysAtRisk``).

The outcome rows are CohortMethod's ``GetOutcomes.sql``: distinct outcome start days of the
person inside the entry's observation period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import sparse

from medlab.analyses import charlson
from medlab.fields import Days, NonNegativeDays

Duplicates = Literal["keep all", "keep first", "remove all"]


class PopulationSettings(BaseModel):
    """``getDbCohortMethodData``'s and ``createStudyPopulation``'s settings, snake_case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    washout_period: NonNegativeDays = 0
    first_exposure_only: bool = False
    remove_duplicate_subjects: Duplicates = "keep all"
    restrict_to_common_period: bool = False
    remove_subjects_with_prior_outcome: bool = True
    # CohortMethod's default lookback, 99999 days, means "any time before".
    prior_outcome_lookback: Annotated[int, Field(ge=0, le=99999)] = 99999
    risk_window_start: Days = 0
    start_anchor: Literal["cohort start", "cohort end"] = "cohort start"
    risk_window_end: Days = 0
    end_anchor: Literal["cohort start", "cohort end"] = "cohort end"
    min_days_at_risk: NonNegativeDays = 1
    max_days_at_risk: Annotated[int, Field(ge=0, le=99999)] = 99999
    censor_at_new_risk_window: bool = False

    @model_validator(mode="before")
    @classmethod
    def _both_cohorts(cls, data: Any) -> Any:
        """``remove_subjects_in_both_cohorts`` (CohortMethod's logical form of
        ``removeDuplicateSubjects``) still reads: true is "remove all", false "keep all"."""
        if isinstance(data, dict) and "remove_subjects_in_both_cohorts" in data:
            data = dict(data)
            flag = data.pop("remove_subjects_in_both_cohorts")
            if not isinstance(flag, bool):
                raise ValueError("remove_subjects_in_both_cohorts: give true or false")
            value = "remove all" if flag else "keep all"
            if data.get("remove_duplicate_subjects", value) != value:
                raise ValueError(
                    "remove_subjects_in_both_cohorts and remove_duplicate_subjects disagree; "
                    "give remove_duplicate_subjects only"
                )
            data["remove_duplicate_subjects"] = value
        return data


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


@dataclass(frozen=True)
class Exposures:
    """The fetched target and comparator entries (one row per entry, ``row_id`` ordered by
    person and start as CohortMethod numbers them) and the attrition so far."""

    frame: pd.DataFrame
    steps: list[AttritionStep]


def _fetch_label(s: PopulationSettings) -> str | None:
    """getDbCohortMethodData's one attrition label for its filters (None: no such step)."""
    if not (s.first_exposure_only or s.remove_duplicate_subjects != "keep all" or s.washout_period):
        return None
    parts = []
    if s.first_exposure_only:
        parts.append("first exp. only")
    if s.remove_duplicate_subjects == "remove all":
        parts.append("removed subs in both cohorts")
    elif s.remove_duplicate_subjects == "keep first":
        parts.append("first cohort only")
    if s.restrict_to_common_period:
        parts.append("restrict to common period")
    if s.washout_period:
        parts.append(f"{s.washout_period} days of obs. prior")
    label = " & ".join(parts)
    return label[0].upper() + label[1:]


def exposures(
    con: duckdb.DuckDBPyConnection, target_id: int, comparator_id: int, s: PopulationSettings
) -> Exposures:
    """The entries getDbCohortMethodData fetches (CreateCohorts.sql's filters, in its order)."""
    raw = con.execute(
        """SELECT subject_id AS person_id,
                  CASE WHEN cohort_definition_id = ? THEN 1 ELSE 0 END AS treatment,
                  cohort_start_date AS start_date, cohort_end_date AS end_date
           FROM results.cohort WHERE cohort_definition_id IN (?, ?)
           ORDER BY person_id, start_date, treatment DESC, end_date""",
        [target_id, target_id, comparator_id],
    ).df()
    for column in ("start_date", "end_date"):
        raw[column] = pd.to_datetime(raw[column])
    original = _count(raw, "Original cohorts")
    frame = raw
    if s.remove_duplicate_subjects == "remove all":
        arms = frame.groupby("person_id")["treatment"].nunique()
        frame = frame[frame["person_id"].map(arms) == 1]
    elif s.remove_duplicate_subjects == "keep first" and len(frame):
        # ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY cohort_start_date) = 1. A tie
        # on the first date across the two cohorts has no first cohort: createStudyPopulation
        # removes such subjects; so does medlab (the SQL would keep an arbitrary row).
        first = frame.groupby("person_id")["start_date"].transform("min")
        head = frame[frame["start_date"] == first]
        tied = head.groupby("person_id")["treatment"].nunique() > 1
        head = head[~head["person_id"].map(tied)]
        frame = head.groupby("person_id").head(1)
    if s.first_exposure_only and len(frame):
        frame = (
            frame.groupby(["person_id", "treatment"], as_index=False)
            .agg(start_date=("start_date", "min"), end_date=("end_date", "min"))
            .loc[:, ["person_id", "treatment", "start_date", "end_date"]]
        )
    if s.restrict_to_common_period and len(raw):
        # The limits come from every exposure row of both cohorts (the raw table).
        by_arm = raw.groupby("treatment")["start_date"]
        if raw["treatment"].nunique() < 2:
            frame = frame.iloc[0:0]
        else:
            period_start, period_end = by_arm.min().max(), by_arm.max().min()
            frame = frame[
                (frame["start_date"] >= period_start) & (frame["start_date"] <= period_end)
            ]
    con.register("medlab_entries", frame[["person_id", "start_date"]].drop_duplicates())
    try:
        periods = con.execute(
            """SELECT e.person_id, e.start_date,
                      op.observation_period_start_date AS op_start,
                      op.observation_period_end_date AS op_end
               FROM medlab_entries e JOIN observation_period op ON op.person_id = e.person_id
                AND CAST(e.start_date AS DATE) BETWEEN op.observation_period_start_date
                                                   AND op.observation_period_end_date"""
        ).df()
    finally:
        con.unregister("medlab_entries")
    for column in ("start_date", "op_start", "op_end"):
        periods[column] = pd.to_datetime(periods[column])
    frame = frame.merge(periods, on=["person_id", "start_date"], how="inner")
    frame["days_from_obs_start"] = (frame["start_date"] - frame["op_start"]).dt.days
    if s.washout_period:
        frame = frame[frame["days_from_obs_start"] >= s.washout_period]
    frame = frame.sort_values(["person_id", "start_date", "treatment"], ascending=[1, 1, 0])
    frame = frame.reset_index(drop=True)
    frame["row_id"] = np.arange(1, len(frame) + 1)
    frame["days_to_cohort_end"] = (frame["end_date"] - frame["start_date"]).dt.days
    frame["days_to_obs_end"] = (frame["op_end"] - frame["start_date"]).dt.days
    label = _fetch_label(s)
    steps = [original, _count(frame, label)] if label else [_count(frame, "Original cohorts")]
    return Exposures(frame, steps)


def outcome_days(
    con: duckdb.DuckDBPyConnection, entries: pd.DataFrame, outcome_id: int
) -> pd.DataFrame:
    """GetOutcomes.sql: per entry, the distinct days from its start to each outcome start of
    the person inside the entry's observation period."""
    con.register(
        "medlab_rows", entries[["row_id", "person_id", "start_date", "op_start", "op_end"]]
    )
    try:
        found = con.execute(
            """SELECT DISTINCT r.row_id,
                      date_diff('day', CAST(r.start_date AS DATE), o.cohort_start_date)
                        AS days_to_event
               FROM medlab_rows r JOIN results.cohort o
                 ON o.subject_id = r.person_id AND o.cohort_definition_id = ?
                AND o.cohort_start_date BETWEEN CAST(r.op_start AS DATE)
                                            AND CAST(r.op_end AS DATE)""",
            [outcome_id],
        ).df()
    finally:
        con.unregister("medlab_rows")
    return found.astype({"row_id": np.int64, "days_to_event": np.int64})


def outcome_population(
    fetched: Exposures, events: pd.DataFrame, s: PopulationSettings
) -> tuple[pd.DataFrame, list[AttritionStep]]:
    """createStudyPopulation on the fetched entries for one outcome: one row per entry with
    its risk window, time at risk, survival time (``days``) and outcome; and the attrition."""
    population = fetched.frame.copy()
    steps = list(fetched.steps)
    start_is_end = s.start_anchor == "cohort end"
    if s.remove_subjects_with_prior_outcome:
        joined = events.merge(population[["row_id", "days_to_cohort_end"]], on="row_id")
        upper = s.risk_window_start + (joined["days_to_cohort_end"] if start_is_end else 0)
        prior = joined[
            (joined["days_to_event"] > -s.prior_outcome_lookback)
            & (joined["days_to_event"] < upper)
        ]["row_id"]
        population = population[~population["row_id"].isin(prior)]
        steps.append(_count(population, "No prior outcome"))
    population = population.assign(
        risk_start=s.risk_window_start + (population["days_to_cohort_end"] if start_is_end else 0),
        risk_end=s.risk_window_end
        + (population["days_to_cohort_end"] if s.end_anchor == "cohort end" else 0),
    )
    population["risk_end"] = population["risk_end"].where(
        population["risk_end"] <= population["days_to_obs_end"], population["days_to_obs_end"]
    )
    longest = population["risk_start"] + s.max_days_at_risk
    population["risk_end"] = population["risk_end"].where(
        population["risk_end"] <= longest, longest
    )
    if s.censor_at_new_risk_window and len(population) > 1:
        # As CohortMethod: order by person and risk-start offset (a stable sort on row order),
        # then cut each window the day before the same person's next window starts, in
        # either arm; windows then ending before they start are dropped.
        population = population.sort_values(["person_id", "risk_start"], kind="stable")
        day = pd.Timedelta(days=1)
        starts = population["start_date"] + population["risk_start"] * day
        ends = population["start_date"] + population["risk_end"] * day
        next_start = starts.shift(-1)
        same = population["person_id"].eq(population["person_id"].shift(-1))
        cut = same & (ends >= next_start)
        new_end = (next_start - day - population["start_date"]).dt.days
        population["risk_end"] = np.where(cut, new_end, population["risk_end"]).astype(np.int64)
        if cut.any():  # as CohortMethod, only when some window was cut
            population = population[population["risk_end"] >= population["risk_start"]]
        steps.append(_count(population, "Censoring at start of new time-at-risk"))
    if s.min_days_at_risk != 0:
        population = population[
            population["risk_end"] - population["risk_start"] >= s.min_days_at_risk
        ]
        steps.append(_count(population, f"Have at least {s.min_days_at_risk} days at risk"))
    during = events.merge(population[["row_id", "risk_start", "risk_end"]], on="row_id")
    during = during[
        (during["days_to_event"] >= during["risk_start"])
        & (during["days_to_event"] <= during["risk_end"])
    ]
    counts = during.groupby("row_id")["days_to_event"].agg(["size", "min"])
    population = population.sort_values("row_id").reset_index(drop=True)
    population["outcome_count"] = population["row_id"].map(counts["size"]).fillna(0).astype(int)
    population["outcome"] = (population["outcome_count"] > 0).astype(int)
    population["time_at_risk"] = population["risk_end"] - population["risk_start"] + 1
    first = population["row_id"].map(counts["min"])
    population["days"] = np.where(
        population["outcome"] == 1,
        first - population["risk_start"] + 1,
        population["time_at_risk"],
    ).astype(np.int64)
    day = pd.Timedelta(days=1)
    population["risk_start_date"] = population["start_date"] + population["risk_start"] * day
    population["risk_end_date"] = population["start_date"] + population["risk_end"] * day
    return population.reset_index(drop=True), steps


def study_population(
    con: duckdb.DuckDBPyConnection,
    target_id: int,
    comparator_id: int,
    outcome_id: int,
    s: PopulationSettings,
) -> tuple[pd.DataFrame, list[AttritionStep]]:
    """getDbCohortMethodData then createStudyPopulation for one outcome."""
    fetched = exposures(con, target_id, comparator_id, s)
    return outcome_population(fetched, outcome_days(con, fetched.frame, outcome_id), s)


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
    scales: dict[str, float] | None = None,
) -> Covariates:
    """Demographics (age group, gender, index year, and age in years as a continuous
    covariate), conditions any time before index, the Charlson comorbidity index, and
    conditions, drugs and procedures in the window before index (drugs descending from
    ``exclude_ingredients`` left out, as CohortMethod leaves out the exposures). ``scales``:
    fixed divisors of the continuous covariates (default: each one's maximum here)."""
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
        ages = con.execute(
            """SELECT e.row, year(CAST(e.start_date AS DATE)) - p.year_of_birth
               FROM medlab_population e JOIN person p USING (person_id)"""
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
    # Age in years and the Charlson index, each scaled to 0..1 by its maximum as
    # FeatureExtraction's tidyCovariates normalizes continuous covariates before the
    # propensity model.
    columns, names = [binary], list(ids)
    for name, values in (("age", ages), ("charlson_index", scores)):
        top = max((float(v) for _, v in values if v is not None), default=0.0)
        if scales is not None:
            top = scales[name]
        if top <= 0:
            continue
        kept = [(r, float(v)) for r, v in values if v is not None and v != 0]
        column = sparse.csr_matrix(
            ([v / top for _, v in kept], ([r for r, _ in kept], [0] * len(kept))),
            shape=(len(entries), 1),
        )
        columns.append(column)
        names.append(name)
    return Covariates(sparse.hstack(columns, format="csr"), names)
