"""The study specification: cohorts (inline, medlab or ATLAS/Circe files) and analyses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medlab.analyses.characterization import CharacterizationSettings
from medlab.analyses.comparative import ComparativeSettings
from medlab.analyses.federated.model import ModelSettings
from medlab.analyses.incidence import IncidenceSettings
from medlab.analyses.scope import Calendar
from medlab.analyses.utilization import MAX_PATHWAYS, pathway_count
from medlab.cohorts.model import CohortDefinition, load_definition
from medlab.errors import DefinitionError
from medlab.fields import CohortId, ConceptId
from medlab.inputs import read_document

CONTROL_COHORT_IDS = 2_000_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Analysis names become file names (``NAME_estimates.csv``) and so may not carry path
# separators or shell metacharacters.
AnalysisName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]


class StudyCohort(_Model):
    """A cohort of the study: an inline definition, or a file (medlab or Circe JSON/YAML)."""

    id: CohortId
    name: str
    definition: CohortDefinition | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StudyCohort:
        if (self.definition is None) == (self.file is None):
            raise ValueError("give exactly one of 'definition' or 'file'")
        return self


class IncidenceAnalysis(_Model):
    """Incidence of an outcome cohort in a target cohort's time at risk."""

    type: Literal["incidence"] = "incidence"
    name: AnalysisName
    target: CohortId
    outcome: CohortId
    settings: IncidenceSettings = IncidenceSettings()


class CharacterizationAnalysis(_Model):
    """Covariates of one or two cohorts (with standardized differences for two)."""

    type: Literal["characterization"] = "characterization"
    name: AnalysisName
    cohorts: Annotated[list[CohortId], Field(min_length=1, max_length=2)]
    settings: CharacterizationSettings = CharacterizationSettings()


class ComparativeAnalysis(_Model):
    """Target vs comparator new users on an outcome."""

    type: Literal["comparative"] = "comparative"
    name: AnalysisName
    target: CohortId
    comparator: CohortId
    outcome: CohortId
    settings: ComparativeSettings = ComparativeSettings()

    @model_validator(mode="after")
    def _controls_are_other_outcomes(self) -> ComparativeAnalysis:
        if self.target == self.comparator:
            raise ValueError("the target and the comparator are the same cohort")
        controls = {o for o, _ in self.settings.control_outcomes()}
        if controls & {self.target, self.comparator, self.outcome}:
            raise ValueError("a control outcome cannot be the target, comparator or outcome")
        return self


class FeasibilityAnalysis(_Model):
    """Eligibility funnel per site and in total; the cohort's inclusion rules are the criteria."""

    type: Literal["feasibility"] = "feasibility"
    name: AnalysisName
    cohort: CohortId


class UtilizationAnalysis(_Model):
    """Drug shares by year and treatment pathways in a cohort."""

    type: Literal["utilization"] = "utilization"
    name: AnalysisName
    cohort: CohortId
    drugs: Annotated[list[ConceptId], Field(min_length=1, max_length=50)]
    max_lines: Annotated[int, Field(ge=1, le=5)] = 3

    @model_validator(mode="after")
    def _pathways(self) -> UtilizationAnalysis:
        if len(set(self.drugs)) != len(self.drugs):
            raise ValueError("each drug once")
        paths = pathway_count(len(self.drugs), self.max_lines)
        if paths > MAX_PATHWAYS:
            raise ValueError(
                f"{len(self.drugs)} drugs over {self.max_lines} lines make {paths:,} pathways; "
                f"a release lists at most {MAX_PATHWAYS:,} (fewer drugs or lines)"
            )
        return self


class FederatedMeanAnalysis(_Model):
    """A cohort's mean and SD of age at entry over every site, in two rounds (round 2 needs
    the pooled mean of round 1)."""

    type: Literal["federated_mean"] = "federated_mean"
    name: AnalysisName
    cohort: CohortId


class FederatedModelAnalysis(_Model):
    """A pooled outcome model (logistic, Poisson or site-stratified Cox) of target vs
    comparator on an outcome, fitted across the sites on secure sums."""

    type: Literal["federated_model"] = "federated_model"
    name: AnalysisName
    target: CohortId
    comparator: CohortId
    outcome: CohortId
    settings: ModelSettings = ModelSettings()


Analysis = Annotated[
    IncidenceAnalysis
    | CharacterizationAnalysis
    | ComparativeAnalysis
    | FeasibilityAnalysis
    | UtilizationAnalysis
    | FederatedMeanAnalysis
    | FederatedModelAnalysis,
    Field(discriminator="type"),
]

# The analyses that take part in secure sums (pooled models and estimates; incidence and
# characterization tables, summed when a node releases no site-level numbers).
SecureAnalysis = (
    FederatedModelAnalysis | ComparativeAnalysis | IncidenceAnalysis | CharacterizationAnalysis
)


def on_secure_sums(a: Analysis) -> TypeGuard[SecureAnalysis]:
    """Whether ``a`` takes part in secure sums (a comparative analysis when it asks for
    pooled estimates)."""
    if isinstance(a, ComparativeAnalysis):
        return a.settings.pooled is not None
    return isinstance(a, FederatedModelAnalysis | IncidenceAnalysis | CharacterizationAnalysis)


class StudySpec(_Model):
    """A whole study."""

    name: Annotated[str, Field(max_length=200)]
    description: Annotated[str, Field(max_length=10_000)] = ""
    project: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    calendar: Calendar = Calendar()
    # The written cohorts and the negative-control cohorts made from concepts, 500 in all.
    cohorts: Annotated[list[StudyCohort], Field(min_length=1, max_length=500)]
    analyses: Annotated[list[Analysis], Field(min_length=1, max_length=100)]

    @model_validator(mode="before")
    @classmethod
    def _control_cohorts(cls, data: Any) -> Any:
        """Concept negative controls become cohorts of the study: "first occurrence of the
        concept, descendants included", numbered from 2,000,000,000."""
        if not isinstance(data, dict):
            return data
        cohorts, analyses = data.get("cohorts"), data.get("analyses")
        if not isinstance(cohorts, list) or not isinstance(analyses, list):
            return data
        ids = [c.get("id") for c in cohorts if isinstance(c, dict)]
        numbers = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
        if len(numbers) != len(ids):
            return data
        # Far from the ids people write, so a mistyped reference is not taken for a control.
        next_id = max(max(numbers, default=0) + 1, CONTROL_COHORT_IDS)
        cohorts, analyses = list(cohorts), list(analyses)
        made: dict[tuple[int, str], int] = {}
        for i, analysis in enumerate(analyses):
            settings = analysis.get("settings") if isinstance(analysis, dict) else None
            controls = settings.get("negative_controls") if isinstance(settings, dict) else None
            if not isinstance(controls, list):
                continue
            resolved = []
            for item in controls:
                if isinstance(item, dict) and isinstance(item.get("concept_id"), int):
                    domain = item.get("domain", "condition_occurrence")
                    key = (item["concept_id"], str(domain))
                    if key not in made:
                        made[key] = next_id
                        cohorts.append(control_cohort(next_id, item["concept_id"], domain))
                        next_id += 1
                    resolved.append(made[key])
                else:
                    resolved.append(item)
            assert isinstance(analysis, dict) and isinstance(settings, dict)
            analyses[i] = {**analysis, "settings": {**settings, "negative_controls": resolved}}
        return {**data, "cohorts": cohorts, "analyses": analyses}

    @model_validator(mode="after")
    def _references(self) -> StudySpec:
        ids = [c.id for c in self.cohorts]
        if len(set(ids)) != len(ids):
            raise ValueError("cohort ids must be unique")
        for i, analysis in enumerate(self.analyses):
            used = (
                analysis.cohorts
                if isinstance(analysis, CharacterizationAnalysis)
                else [
                    getattr(analysis, k)
                    for k in ("target", "comparator", "outcome", "cohort")
                    if hasattr(analysis, k)
                ]
            )
            if isinstance(analysis, ComparativeAnalysis):
                used = [*used, *(o for o, _ in analysis.settings.control_outcomes())]
            for cohort in used:
                if cohort not in ids:
                    raise ValueError(f"analyses[{i}] refers to cohort {cohort}, not defined")
        names = [a.name for a in self.analyses]
        if len(set(names)) != len(names):
            raise ValueError("analysis names must be unique (they name the result files)")
        return self

    def domains(self) -> set[str]:
        """Every CDM domain the criteria of the spec's cohorts read."""
        return {d for c in self.cohorts if c.definition for d in c.definition.domains()}

    def digest(self) -> str:
        """``sha256:`` of the canonical JSON of the validated spec."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def control_cohort(cohort_id: int, concept_id: int, domain: object) -> dict[str, Any]:
    """A negative-control outcome cohort given by a concept: its first occurrence in
    ``domain``, descendants included (the study cohort, as data)."""
    return {
        "id": cohort_id,
        "name": f"negative control: first {domain} of concept {concept_id}",
        "definition": {
            "concept_sets": [
                {"id": 0, "items": [{"concept_id": concept_id, "include_descendants": True}]}
            ],
            "primary": {
                "criteria": [{"domain": domain, "codeset_id": 0, "first_occurrence": True}]
            },
            "end_strategy": {"type": "date_offset", "field": "start", "offset": 1},
        },
    }


def _path(loc: tuple[int | str, ...]) -> str:
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in (
            "incidence",
            "characterization",
            "comparative",
            "observation_period_end",
            "date_offset",
            "drug_era",
        ):
            out += f".{part}"
    return out


def spec_from_document(data: Any) -> tuple[StudySpec | None, list[tuple[str, str]]]:
    """A study spec sent as JSON (cohort definitions inline, no files): the spec, or the
    problems with their JSON paths."""
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        return None, [(_path(e["loc"]), e["msg"]) for e in exc.errors()]
    files = [
        (f"$.cohorts[{i}].file", "give the definition inline (a client resolves cohort files)")
        for i, c in enumerate(spec.cohorts)
        if c.definition is None
    ]
    return (None, files) if files else (spec, [])


def load_spec(path: Path) -> StudySpec:
    """Read and validate a study spec; cohort files resolve relative to the spec."""
    data = read_document(path, "study spec", DefinitionError)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise DefinitionError(f"{path}: invalid study spec: " + "; ".join(problems)) from None
    cohorts = []
    for i, cohort in enumerate(spec.cohorts):
        if cohort.file is not None:
            target = (path.parent / cohort.file).resolve()
            try:
                definition = load_definition(target)
            except DefinitionError as exc:
                raise DefinitionError(f"{path}: $.cohorts[{i}].file: {exc}") from None
            cohort = cohort.model_copy(update={"definition": definition, "file": None})
        cohorts.append(cohort)
    return spec.model_copy(update={"cohorts": cohorts})
