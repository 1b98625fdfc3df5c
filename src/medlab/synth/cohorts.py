"""The cohorts of the planted comparative studies, as truth.json describes their design.

New users of a drug (the first exposure to the ingredient or any of its descendants, to the
end of observation) and outcomes (every occurrence of the condition, descendants included,
ending the day after it starts). Tests and benchmarks build their studies from these.
"""

from __future__ import annotations

from typing import Any


def new_users(ingredient: int) -> dict[str, Any]:
    """First exposure to the ingredient (or a descendant), to the end of observation."""
    return {
        "concept_sets": [
            {"id": 0, "items": [{"concept_id": ingredient, "include_descendants": True}]}
        ],
        "primary": {
            "criteria": [{"domain": "drug_exposure", "codeset_id": 0, "first_occurrence": True}]
        },
    }


def outcome(concept: int) -> dict[str, Any]:
    """Every occurrence of the condition (or a descendant), one day long."""
    return {
        "concept_sets": [
            {"id": 0, "items": [{"concept_id": concept, "include_descendants": True}]}
        ],
        "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
        "qualified_limit": "all",
        "end_strategy": {"type": "date_offset", "field": "start", "offset": 1},
    }
