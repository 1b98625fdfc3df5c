"""Charlson index: hand-scored patients over a tiny vocabulary and condition eras."""

from __future__ import annotations

import duckdb

from medlab.analyses import charlson

MI, HEART_FAILURE, DIABETES, DIABETES_COMPLICATED, METASTATIC = (
    4329847,
    316139,
    201820,
    443767,
    432851,
)
MI_SUBTYPE, T2DM = 1_000_001, 201826


def _scores(eras: list[tuple[int, int, str]], end_day: int = 0) -> dict[int, int]:
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE concept_ancestor(ancestor_concept_id INTEGER,
                                         descendant_concept_id INTEGER)"""
    )
    ancestors = [(c, c) for c in (MI, HEART_FAILURE, DIABETES, DIABETES_COMPLICATED, METASTATIC)]
    ancestors += [(MI, MI_SUBTYPE), (DIABETES, T2DM)]
    con.executemany("INSERT INTO concept_ancestor VALUES (?, ?)", ancestors)
    con.execute(
        """CREATE TABLE condition_era(person_id INTEGER, condition_concept_id INTEGER,
                                      condition_era_start_date DATE)"""
    )
    con.executemany("INSERT INTO condition_era VALUES (?, ?, CAST(? AS DATE))", eras)
    con.execute(
        """CREATE TABLE entries AS SELECT * FROM (VALUES (0, 1, DATE '2020-06-01'),
           (1, 2, DATE '2020-06-01'), (2, 3, DATE '2020-06-01'), (3, 1, DATE '2010-01-01'))
           t(row, person_id, index_date)"""
    )
    return dict(con.execute(charlson.scores_sql("entries", end_day)).fetchall())


def test_scores_sum_distinct_category_weights_up_to_the_index_date() -> None:
    eras = [
        (1, MI, "2019-01-01"),
        (1, MI_SUBTYPE, "2019-05-01"),  # same category again: still weight 1
        (1, T2DM, "2018-01-01"),  # descendant of diabetes: 1
        (1, DIABETES_COMPLICATED, "2020-06-01"),  # on the index date: 2
        (1, METASTATIC, "2020-06-02"),  # after index: not counted
        (2, HEART_FAILURE, "2020-01-01"),
        (2, 999, "2020-01-01"),  # not a Charlson concept
        (3, 999, "2000-01-01"),
    ]
    scores = _scores(eras)
    # person 1 at 2020-06-01: MI 1 + diabetes 1 + complicated diabetes 2; at 2010: nothing.
    assert scores == {0: 4, 1: 1}


def test_end_day_moves_the_window_end() -> None:
    eras = [(1, METASTATIC, "2020-06-02"), (1, MI, "2020-06-01")]
    assert _scores(eras, end_day=1) == {0: 7}
    assert _scores(eras, end_day=-1) == {}


def test_weights_are_those_of_feature_extraction() -> None:
    weights = {c.name: c.weight for c in charlson.CATEGORIES}
    assert len(weights) == 17
    assert weights["Metastatic solid tumor"] == 6 and weights["AIDS"] == 6
    assert weights["Moderate to severe liver disease"] == 3
    assert sum(weights.values()) == 33
