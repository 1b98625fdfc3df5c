"""Named cohort definitions used by the spec tests (and rendered for every dialect)."""

from __future__ import annotations

from typing import Any

CONCEPT_SETS = [
    {"id": 0, "name": "condition A", "items": [{"concept_id": 100, "include_descendants": True}]},
    {"id": 1, "name": "drug X", "items": [{"concept_id": 200, "include_descendants": True}]},
    {"id": 2, "name": "condition B", "items": [{"concept_id": 102}]},
    {"id": 3, "name": "lab", "items": [{"concept_id": 300}]},
    {
        "id": 4,
        "name": "A but not subtype",
        "items": [
            {"concept_id": 100, "include_descendants": True},
            {"concept_id": 101, "is_excluded": True},
        ],
    },
    {
        "id": 5,
        "name": "A with mapped codes",
        "items": [{"concept_id": 100, "include_mapped": True}],
    },
    {"id": 6, "name": "procedure", "items": [{"concept_id": 400}]},
    {"id": 7, "name": "observation", "items": [{"concept_id": 500}]},
    {"id": 8, "name": "device", "items": [{"concept_id": 600}]},
    {"id": 9, "name": "inpatient visit", "items": [{"concept_id": 9201}]},
    {"id": 10, "name": "ICD code for A", "items": [{"concept_id": 900}]},
]

PRIOR = {"start": {"coeff": -1}, "end": {"days": 1, "coeff": -1}}  # any time before index
YEAR_BEFORE = {"start": {"days": 365, "coeff": -1}, "end": {"days": 0, "coeff": 1}}


def definition(*criteria: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A definition with the shared concept sets."""
    primary = extra.pop("primary", {})
    return {
        "concept_sets": CONCEPT_SETS,
        "primary": {"criteria": list(criteria), **primary},
        **extra,
    }


def occurs(
    criterion: dict[str, Any],
    window: dict[str, Any],
    kind: str = "at_least",
    count: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """A correlated criterion."""
    return {
        "criterion": criterion,
        "start_window": window,
        "occurrence": {"type": kind, "count": count, **extra.pop("occurrence", {})},
        **extra,
    }


A = {"domain": "condition_occurrence", "codeset_id": 0}
B = {"domain": "condition_occurrence", "codeset_id": 2}
X = {"domain": "drug_exposure", "codeset_id": 1}
SAME_DAY_END = {"type": "date_offset", "field": "start", "offset": 0}

DEFINITIONS: dict[str, dict[str, Any]] = {
    "condition_with_descendants": definition(A),
    "excluded_concepts": definition({"domain": "condition_occurrence", "codeset_id": 4}),
    "mapped_codes": definition({"domain": "condition_occurrence", "codeset_id": 5}),
    "first_occurrence": definition(
        {**X, "first_occurrence": True}, end_strategy=SAME_DAY_END, qualified_limit="all"
    ),
    "limit_first": definition(
        X, primary={"limit": "first"}, end_strategy=SAME_DAY_END, qualified_limit="all"
    ),
    "limit_last": definition(
        X, primary={"limit": "last"}, end_strategy=SAME_DAY_END, qualified_limit="all"
    ),
    "limit_all": definition(X, end_strategy=SAME_DAY_END, qualified_limit="all"),
    "prior_observation": definition(A, primary={"prior_days": 365}),
    "post_observation": definition(A, primary={"post_days": 365}),
    "age_attribute": definition({**A, "age": {"op": "gte", "value": 41}}),
    "gender_attribute": definition({**A, "gender": [8532]}),
    "visit_type_attribute": definition({**A, "visit_type": [9201]}),
    "days_supply_attribute": definition({**X, "days_supply": {"op": "gte", "value": 60}}),
    "measurement_value": definition(
        {
            "domain": "measurement",
            "codeset_id": 3,
            "value_as_number": {"op": "bt", "value": 140, "extent": 200},
            "unit": [8876],
        }
    ),
    "start_date_range": definition({**A, "start_date": {"op": "gt", "value": "2012-01-01"}}),
    "era_length": definition(
        {"domain": "drug_era", "codeset_id": 1, "duration": {"op": "gte", "value": 60}}
    ),
    "other_domains": definition(
        {"domain": "procedure_occurrence", "codeset_id": 6},
        {"domain": "observation", "codeset_id": 7},
        {"domain": "device_exposure", "codeset_id": 8},
        {"domain": "death"},
        end_strategy=SAME_DAY_END,
        qualified_limit="all",
    ),
    "no_prior_condition": definition(
        X,
        primary={"limit": "first"},
        inclusion_rules=[
            {"name": "no prior B", "expression": {"criteria": [occurs(B, PRIOR, "exactly", 0)]}}
        ],
    ),
    "two_in_a_year": definition(
        X,
        inclusion_rules=[
            {
                "name": "2+ A in the year before",
                "expression": {"criteria": [occurs(A, YEAR_BEFORE, "at_least", 2)]},
            }
        ],
    ),
    "at_most_one": definition(
        X,
        inclusion_rules=[
            {
                "name": "at most 1 A before",
                "expression": {"criteria": [occurs(A, PRIOR, "at_most", 1)]},
            }
        ],
    ),
    "distinct_days": definition(
        X,
        inclusion_rules=[
            {
                "name": "A on 2+ distinct days",
                "expression": {
                    "criteria": [
                        occurs(A, PRIOR, "at_least", 2, occurrence={"distinct": "start_date"})
                    ]
                },
            }
        ],
    ),
    "same_visit": definition(
        X,
        inclusion_rules=[
            {
                "name": "A in the same visit",
                "expression": {
                    "criteria": [
                        occurs(
                            A,
                            {"start": {"days": 30, "coeff": -1}, "end": {"days": 30, "coeff": 1}},
                            restrict_visit=True,
                        )
                    ]
                },
            }
        ],
    ),
    "after_index_end": definition(
        {**X, "first_occurrence": True},
        end_strategy=SAME_DAY_END,
        inclusion_rules=[
            {
                "name": "A within 30 days after exposure end",
                "expression": {
                    "criteria": [
                        occurs(
                            A,
                            {
                                "start": {"days": 0, "coeff": 1},
                                "end": {"days": 30, "coeff": 1},
                                "use_index_end": True,
                            },
                        )
                    ]
                },
            }
        ],
    ),
    "nested_groups": definition(
        X,
        inclusion_rules=[
            {
                "name": "A, or both B and female",
                "expression": {
                    "type": "ANY",
                    "criteria": [occurs(A, PRIOR)],
                    "groups": [
                        {
                            "type": "ALL",
                            "criteria": [occurs(B, PRIOR)],
                            "demographics": [{"gender": [8532]}],
                        }
                    ],
                },
            }
        ],
    ),
    "at_least_two_of_three": definition(
        X,
        inclusion_rules=[
            {
                "name": "2 of: A, B, age 50+",
                "expression": {
                    "type": "AT_LEAST",
                    "count": 2,
                    "criteria": [occurs(A, PRIOR), occurs(B, PRIOR)],
                    "demographics": [{"age": {"op": "gte", "value": 50}}],
                },
            }
        ],
    ),
    "at_most_zero_of": definition(
        X,
        inclusion_rules=[
            {
                "name": "none of A, B",
                "expression": {
                    "type": "AT_MOST",
                    "count": 0,
                    "criteria": [occurs(A, PRIOR), occurs(B, PRIOR)],
                },
            }
        ],
    ),
    "two_rules_attrition": definition(
        X,
        primary={"limit": "first"},
        inclusion_rules=[
            {"name": "male", "expression": {"demographics": [{"gender": [8507]}]}},
            {
                "name": "born before 1960",
                "expression": {"demographics": [{"age": {"op": "gt", "value": 50}}]},
            },
        ],
    ),
    "expression_limit_after_rules": definition(
        X,
        end_strategy=SAME_DAY_END,
        qualified_limit="all",
        expression_limit="first",
        inclusion_rules=[{"name": "A before", "expression": {"criteria": [occurs(A, PRIOR)]}}],
    ),
    "qualified_limit_before_rules": definition(
        X,
        end_strategy=SAME_DAY_END,
        qualified_limit="first",
        inclusion_rules=[{"name": "A before", "expression": {"criteria": [occurs(A, PRIOR)]}}],
    ),
    "additional_criteria": definition(
        X, additional={"criteria": [occurs(B, PRIOR)]}, end_strategy=SAME_DAY_END
    ),
    "ignore_observation_period": definition(
        X,
        primary={"limit": "first"},
        inclusion_rules=[
            {
                "name": "A ever before, even unobserved",
                "expression": {"criteria": [occurs(A, PRIOR, ignore_observation_period=True)]},
            }
        ],
    ),
    "correlated_on_entry": definition(
        {**X, "correlated": {"criteria": [occurs(B, PRIOR)]}},
        end_strategy=SAME_DAY_END,
        qualified_limit="all",
    ),
    "end_of_observation": definition(X, primary={"limit": "first"}),
    "offset_from_start": definition(
        X,
        primary={"limit": "first"},
        end_strategy={"type": "date_offset", "field": "start", "offset": 30},
    ),
    "offset_from_end": definition(
        X,
        primary={"limit": "first"},
        end_strategy={"type": "date_offset", "field": "end", "offset": 7},
    ),
    "drug_era_end": definition(
        X,
        primary={"limit": "first"},
        end_strategy={"type": "drug_era", "codeset_id": 1, "gap_days": 30, "offset": 7},
    ),
    "drug_era_override": definition(
        X,
        primary={"limit": "first"},
        end_strategy={
            "type": "drug_era",
            "codeset_id": 1,
            "gap_days": 0,
            "days_supply_override": 10,
        },
    ),
    "censoring_event": definition(X, primary={"limit": "first"}, censoring=[B]),
    "era_collapse": definition(
        X,
        qualified_limit="all",
        era_pad_days=15,
        end_strategy={"type": "date_offset", "field": "end", "offset": 0},
    ),
    "censor_window": definition(
        X,
        qualified_limit="all",
        end_strategy={"type": "date_offset", "field": "end", "offset": 0},
        censor_window={"start": "2010-01-15", "end": "2010-06-30"},
    ),
    "source_concept": definition({"domain": "condition_occurrence", "source_codeset_id": 10}),
    "value_as_concept": definition(
        {"domain": "measurement", "codeset_id": 3, "value_as_concept": [9999]}
    ),
    "refills_and_quantity": definition(
        {**X, "refills": {"op": "gte", "value": 1}, "quantity": {"op": "lt", "value": 100}}
    ),
    "visit_duration": definition(
        {"domain": "visit_occurrence", "codeset_id": 9, "duration": {"op": "gte", "value": 3}}
    ),
    "era_occurrences": definition(
        {"domain": "drug_era", "codeset_id": 1, "occurrence_count": {"op": "gte", "value": 2}}
    ),
    "type_concepts_excluded": definition({**A, "type_concepts": [32020], "type_exclude": True}),
    "event_end_window": definition(
        X,
        primary={"limit": "first"},
        inclusion_rules=[
            {
                "name": "an A episode still going at index",
                "expression": {
                    "criteria": [
                        {
                            "criterion": A,
                            "start_window": {"start": {"coeff": -1}, "end": {"days": 0}},
                            "end_window": {
                                "start": {"days": 0, "coeff": 1},
                                "end": {"coeff": 1},
                                "use_event_end": True,
                            },
                        }
                    ]
                },
            }
        ],
    ),
    "observation_period_entry": definition(
        {"domain": "observation_period", "duration": {"op": "gte", "value": 3650}},
        end_strategy={"type": "date_offset", "field": "start", "offset": 365},
    ),
    "condition_era_entry": definition(
        {"domain": "condition_era", "codeset_id": 0, "age": {"op": "lt", "value": 45}}
    ),
    "measurement_details": definition(
        {
            "domain": "measurement",
            "codeset_id": 3,
            "operator": [4172704],
            "range_high": {"op": "lt", "value": 140},
        }
    ),
    "status_and_route": definition(
        {**A, "condition_status": [32902]},
        {**X, "route": [4132161]},
        qualified_limit="all",
        end_strategy=SAME_DAY_END,
    ),
    "era_age_at_end": definition(
        {"domain": "condition_era", "codeset_id": 0, "age_at_end": {"op": "gte", "value": 41}}
    ),
}
