"""Charlson comorbidity index, Romano adaptation, as OHDSI FeatureExtraction computes it.

Seventeen diagnosis categories, each defined by standard SNOMED ancestor concepts and all
their descendants in ``concept_ancestor`` (the ancestor concept ids and weights are those of
FeatureExtraction's ``CharlsonIndex.sql``). An entry's score is the sum of the weights of the
distinct categories with a condition era starting on or before the index date plus
``end_day``. As in FeatureExtraction, no hierarchy is applied: a person with both diabetes
categories scores both. Entries without any category score 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CharlsonCategory:
    """One diagnosis category: its weight and the ancestor concepts that define it."""

    category_id: int
    name: str
    weight: int
    ancestors: tuple[int, ...]


CATEGORIES: tuple[CharlsonCategory, ...] = (
    CharlsonCategory(1, "Myocardial infarction", 1, (4329847,)),
    CharlsonCategory(2, "Congestive heart failure", 1, (316139,)),
    CharlsonCategory(3, "Peripheral vascular disease", 1, (321052,)),
    CharlsonCategory(4, "Cerebrovascular disease", 1, (381591, 434056)),
    CharlsonCategory(5, "Dementia", 1, (4182210,)),
    CharlsonCategory(6, "Chronic pulmonary disease", 1, (4063381,)),
    CharlsonCategory(7, "Rheumatologic disease", 1, (257628, 134442, 80800, 80809, 256197, 255348)),
    CharlsonCategory(8, "Peptic ulcer disease", 1, (4247120,)),
    CharlsonCategory(9, "Mild liver disease", 1, (4064161, 4212540)),
    CharlsonCategory(10, "Diabetes (mild to moderate)", 1, (201820,)),
    CharlsonCategory(11, "Diabetes with chronic complications", 2, (443767, 442793)),
    CharlsonCategory(12, "Hemiplegia or paraplegia", 2, (192606, 374022)),
    CharlsonCategory(13, "Renal disease", 2, (4030518,)),
    CharlsonCategory(14, "Any malignancy", 2, (443392,)),
    CharlsonCategory(15, "Moderate to severe liver disease", 3, (4245975, 4029488, 192680, 24966)),
    CharlsonCategory(16, "Metastatic solid tumor", 6, (432851,)),
    CharlsonCategory(17, "AIDS", 6, (439727,)),
)


def _category_rows() -> str:
    return ", ".join(f"({c.category_id}, {c.weight}, {a})" for c in CATEGORIES for a in c.ancestors)


def scores_sql(entries: str, end_day: int = 0) -> str:
    """SQL yielding ``(row, score)`` for each row of ``entries`` (columns ``row``,
    ``person_id``, ``index_date``) that has at least one Charlson category; rows absent from
    the result score 0."""
    return f"""
        WITH charlson_ancestor(category_id, weight, ancestor_concept_id) AS (
                 VALUES {_category_rows()}),
             charlson_concept AS (
                 SELECT DISTINCT a.category_id, a.weight, ca.descendant_concept_id AS concept_id
                 FROM charlson_ancestor a
                 JOIN concept_ancestor ca ON ca.ancestor_concept_id = a.ancestor_concept_id),
             entry_category AS (
                 SELECT DISTINCT e.row, cc.category_id, cc.weight
                 FROM {entries} e
                 JOIN condition_era ce ON ce.person_id = e.person_id
                  AND ce.condition_era_start_date <= e.index_date + {int(end_day)}
                 JOIN charlson_concept cc ON cc.concept_id = ce.condition_concept_id)
        SELECT row, CAST(sum(weight) AS INTEGER) AS score FROM entry_category GROUP BY row"""
