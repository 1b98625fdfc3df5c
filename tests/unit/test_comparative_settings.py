"""Comparative settings: the earlier PS names, concept negative controls made into cohorts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medlab.analyses.comparative import ComparativeSettings
from medlab.studies.spec import StudySpec


def test_ps_penalty_l2_is_exactly_a_normal_prior_and_l1_is_refused_with_the_replacement() -> None:
    s = ComparativeSettings.model_validate({"ps_penalty": "l2", "ps_strength": 0.5})
    assert (s.ps_prior, s.ps_variance) == ("normal", 0.5)
    assert ComparativeSettings.model_validate({"ps_strength": 2.0}).ps_prior == "normal"
    with pytest.raises(ValidationError, match="ps_prior: laplace"):
        ComparativeSettings.model_validate({"ps_penalty": "l1"})
    with pytest.raises(ValidationError, match="not both"):
        ComparativeSettings.model_validate({"ps_penalty": "l2", "ps_prior": "laplace"})
    assert ComparativeSettings().ps_prior == "laplace" and ComparativeSettings().ps_variance is None


def _spec(controls: list[object]) -> dict[str, object]:
    cohort = {
        "concept_sets": [{"id": 0, "items": [{"concept_id": 1}]}],
        "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
    }
    return {
        "name": "s",
        "cohorts": [{"id": i, "name": str(i), "definition": cohort} for i in (1, 2, 5, 7)],
        "analyses": [
            {
                "type": "comparative",
                "name": "c",
                "target": 1,
                "comparator": 2,
                "outcome": 7,
                "settings": {"negative_controls": controls},
            }
        ],
    }


def test_concept_negative_controls_become_first_occurrence_cohorts() -> None:
    spec = StudySpec.model_validate(_spec([5, {"concept_id": 81151}]))
    made = [c for c in spec.cohorts if c.id not in (1, 2, 5, 7)]
    assert [c.id for c in made] == [2_000_000_000]  # far from the ids people write
    definition = made[0].definition
    assert definition is not None
    assert definition.primary.criteria[0].first_occurrence
    assert definition.concept_sets[0].items[0].include_descendants
    assert spec.analyses[0].settings.negative_controls == [5, 2_000_000_000]  # type: ignore[union-attr]


def test_bad_controls_are_named() -> None:
    with pytest.raises(ValidationError, match="refers to cohort 9"):
        StudySpec.model_validate(_spec([9]))
    with pytest.raises(ValidationError, match="each control outcome once"):
        StudySpec.model_validate(_spec([{"concept_id": 81151}, {"concept_id": 81151}]))
    with pytest.raises(ValidationError, match="cannot be the target, comparator or outcome"):
        StudySpec.model_validate(_spec([7]))
