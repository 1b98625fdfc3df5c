"""The cohort definition model: one language for cohorts, validated, JSON and YAML round-trip.

The semantics follow OHDSI Circe (the engine behind ATLAS), so that ATLAS definitions import
without loss: entry events from any CDM domain, an observation window, limits per person,
inclusion rules as nested criteria groups with temporal windows, an end strategy, censoring
events, era collapse and a calendar censor window. ``docs`` for each field say what it means;
``medlab.cohorts.compiler`` says how it is evaluated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medlab.cohorts.domains import DOMAINS
from medlab.errors import DefinitionError
from medlab.fields import ConceptId, Count, Days, NonNegativeDays, Real
from medlab.inputs import read_document

Domain = Literal[
    "condition_occurrence",
    "drug_exposure",
    "drug_era",
    "condition_era",
    "procedure_occurrence",
    "measurement",
    "observation",
    "visit_occurrence",
    "device_exposure",
    "death",
    "observation_period",
]
Limit = Literal["first", "all", "last"]
Operator = Literal["lt", "lte", "eq", "gt", "gte", "bt", "nbt"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Model):
    """A comparison: ``op`` with ``value`` (and ``extent`` for between / not between)."""

    op: Operator

    @model_validator(mode="after")
    def _extent_for_between(self) -> _Range:
        if self.op in ("bt", "nbt") and getattr(self, "extent", None) is None:
            raise ValueError("a between range needs 'extent'")
        return self


class NumericRange(_Range):
    """A comparison on a number."""

    value: Real
    extent: Real | None = None


class DateRange(_Range):
    """A comparison on a date."""

    value: dt.date
    extent: dt.date | None = None


class ConceptSetItem(_Model):
    """One concept of a concept set, optionally with its descendants and mapped source codes."""

    concept_id: ConceptId
    include_descendants: bool = False
    include_mapped: bool = False
    is_excluded: bool = False


class ConceptSet(_Model):
    """Included concepts minus excluded ones (each expanded as its item says)."""

    id: Count
    name: str = ""
    items: list[ConceptSetItem] = Field(default_factory=list)


_DOMAIN_ATTRIBUTES: dict[str, set[str]] = {
    "days_supply": {"drug_exposure"},
    "value_as_number": {"measurement", "observation"},
    "unit": {"measurement", "observation"},
    "duration": {"drug_era", "condition_era", "observation_period", "visit_occurrence"},
    "age_at_end": {"drug_era", "condition_era"},
    "operator": {"measurement"},
    "range_low": {"measurement"},
    "range_high": {"measurement"},
    "condition_status": {"condition_occurrence"},
    "route": {"drug_exposure"},
    "refills": {"drug_exposure"},
    "quantity": {"drug_exposure"},
    "value_as_concept": {"measurement", "observation"},
}
# Attributes that read a domain column exist exactly where the domain has that column.
_DOMAIN_ATTRIBUTES |= {
    "source_codeset_id": {d for d, spec in DOMAINS.items() if spec.source_concept},
    "visit_type": {d for d, spec in DOMAINS.items() if spec.visit},
    "type_concepts": {d for d, spec in DOMAINS.items() if spec.type_column},
    "occurrence_count": {d for d, spec in DOMAINS.items() if spec.count_column},
}


class Criterion(_Model):
    """Events of one domain: rows whose concept is in a concept set, narrowed by attributes."""

    domain: Domain
    codeset_id: Count | None = None
    first_occurrence: bool = False
    age: NumericRange | None = None
    gender: list[ConceptId] | None = None
    start_date: DateRange | None = None
    end_date: DateRange | None = None
    visit_type: list[ConceptId] | None = None
    type_concepts: list[ConceptId] | None = None
    type_exclude: bool = False
    days_supply: NumericRange | None = None
    value_as_number: NumericRange | None = None
    unit: list[ConceptId] | None = None
    value_as_concept: list[ConceptId] | None = None
    refills: NumericRange | None = None
    quantity: NumericRange | None = None
    duration: NumericRange | None = None  # days from start to end (era, visit, period length)
    occurrence_count: NumericRange | None = None  # exposures or occurrences in an era
    source_codeset_id: Count | None = None  # concept set matched on the source concept column
    age_at_end: NumericRange | None = None
    operator: list[ConceptId] | None = None
    range_low: NumericRange | None = None
    range_high: NumericRange | None = None
    condition_status: list[ConceptId] | None = None
    route: list[ConceptId] | None = None
    correlated: Group | None = None

    @model_validator(mode="after")
    def _attributes_fit_domain(self) -> Criterion:
        for attribute, domains in _DOMAIN_ATTRIBUTES.items():
            if getattr(self, attribute) is not None and self.domain not in domains:
                raise ValueError(f"'{attribute}' does not apply to domain {self.domain}")
        if self.domain == "observation_period" and self.codeset_id is not None:
            raise ValueError("observation_period events have no concept; drop 'codeset_id'")
        return self


class Endpoint(_Model):
    """One end of a window: ``days`` before (coeff -1) or after (coeff 1); None is unbounded."""

    days: NonNegativeDays | None = None
    coeff: Literal[-1, 1] = 1


class Window(_Model):
    """Where an event's date must fall, relative to the index event's start (or end)."""

    start: Endpoint = Endpoint(coeff=-1)
    end: Endpoint = Endpoint(coeff=1)
    use_index_end: bool = False
    use_event_end: bool = False


class Occurrence(_Model):
    """How many matching events a criterion needs: exactly / at least / at most ``count``."""

    type: Literal["exactly", "at_least", "at_most"] = "at_least"
    count: Count = 1
    distinct: Literal["concept", "start_date", "visit"] | None = None


class CorrelatedCriterion(_Model):
    """A criterion counted in a temporal window around the index event."""

    criterion: Criterion
    start_window: Window = Window()
    end_window: Window | None = None
    restrict_visit: bool = False
    ignore_observation_period: bool = False
    occurrence: Occurrence = Occurrence()


class Demographic(_Model):
    """A condition on the person or the index event itself."""

    age: NumericRange | None = None
    gender: list[ConceptId] | None = None
    race: list[ConceptId] | None = None
    ethnicity: list[ConceptId] | None = None
    start_date: DateRange | None = None
    end_date: DateRange | None = None


class Group(_Model):
    """ALL / ANY / AT_LEAST n / AT_MOST n of its criteria, demographics and subgroups."""

    type: Literal["ALL", "ANY", "AT_LEAST", "AT_MOST"] = "ALL"
    count: Count | None = None
    criteria: list[CorrelatedCriterion] = Field(default_factory=list)
    demographics: list[Demographic] = Field(default_factory=list)
    groups: list[Group] = Field(default_factory=list)

    @model_validator(mode="after")
    def _count_when_needed(self) -> Group:
        if self.type in ("AT_LEAST", "AT_MOST") and self.count is None:
            raise ValueError(f"a {self.type} group needs 'count'")
        return self

    @property
    def children(self) -> int:
        """How many members the group has."""
        return len(self.criteria) + len(self.demographics) + len(self.groups)


class PrimaryCriteria(_Model):
    """Entry events: any of the criteria, inside observation, limited per person."""

    criteria: Annotated[list[Criterion], Field(min_length=1)]
    prior_days: NonNegativeDays = 0
    post_days: NonNegativeDays = 0
    limit: Limit = "all"


class InclusionRule(_Model):
    """A named rule every cohort entry must pass."""

    name: str
    description: str = ""
    expression: Group


class ObservationPeriodEnd(_Model):
    """The entry ends when its observation period ends (the default)."""

    type: Literal["observation_period_end"] = "observation_period_end"


class DateOffset(_Model):
    """The entry ends ``offset`` days after the index event's start or end."""

    type: Literal["date_offset"] = "date_offset"
    field: Literal["start", "end"] = "start"
    offset: Days = 0


class DrugEra(_Model):
    """The entry ends with continuous exposure to a drug concept set (gaps up to gap_days)."""

    type: Literal["drug_era"] = "drug_era"
    codeset_id: Count
    gap_days: NonNegativeDays = 0
    offset: Days = 0
    days_supply_override: Annotated[NonNegativeDays, Field(ge=1)] | None = None


EndStrategy = Annotated[ObservationPeriodEnd | DateOffset | DrugEra, Field(discriminator="type")]


class CensorWindow(_Model):
    """Calendar dates entries are clipped to."""

    start: dt.date | None = None
    end: dt.date | None = None


class CohortDefinition(_Model):
    """A whole cohort definition."""

    name: str = ""
    description: str = ""
    concept_sets: list[ConceptSet] = Field(default_factory=list)
    primary: PrimaryCriteria
    additional: Group | None = None
    qualified_limit: Limit = "first"
    inclusion_rules: list[InclusionRule] = Field(default_factory=list)
    expression_limit: Limit = "all"
    end_strategy: EndStrategy = ObservationPeriodEnd()
    censoring: list[Criterion] = Field(default_factory=list)
    era_pad_days: NonNegativeDays = 0
    censor_window: CensorWindow = CensorWindow()
    # medlab's extension for cohorts built as plain SQL cohorts are (Eunomia's
    # createCohorts: every drug era, in an observation period or not). ``required`` is
    # Circe's rule: an entry event starts inside an observation period and ends no later
    # than it. ``not_required`` keeps entry events outside any observation period and ends
    # every entry by the end strategy (and censoring events) alone.
    observation_period: Literal["required", "not_required"] = "required"

    @model_validator(mode="after")
    def _codesets_exist(self) -> CohortDefinition:
        _within_limits(self)
        if self.observation_period == "not_required":
            if self.primary.prior_days or self.primary.post_days:
                raise ValueError(
                    "observation_period not_required: prior_days and post_days count days "
                    "of observation; leave them at 0"
                )
            if isinstance(self.end_strategy, ObservationPeriodEnd):
                raise ValueError(
                    "observation_period not_required: the end strategy cannot be the "
                    "observation period's end; give a date_offset or drug_era end"
                )
        known = {c.id for c in self.concept_sets}
        if len(known) != len(self.concept_sets):
            raise ValueError("concept set ids must be unique")
        for path, codeset in _codeset_references(self):
            if codeset not in known:
                raise ValueError(f"{path}: codeset_id {codeset} is not a defined concept set")
        return self

    def to_data(self) -> dict[str, Any]:
        """Plain data (defaults left out, the end strategy's ``type`` always kept)."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        if "end_strategy" in data:
            data["end_strategy"] = {"type": self.end_strategy.type, **data["end_strategy"]}
        return data

    @property
    def max_entries_per_person(self) -> int | None:
        """The most entries one person can have in the cohort, by the definition alone: 1
        when a limit keeps one event per person (first or last), else None (no bound)."""
        limits = (self.primary.limit, self.qualified_limit, self.expression_limit)
        return 1 if any(limit != "all" for limit in limits) else None

    def domains(self) -> set[str]:
        """Every CDM domain a criterion of the definition reads (what a data-use agreement's
        allowed domains are checked against)."""
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                if isinstance(value.get("domain"), str):
                    found.add(value["domain"])
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.model_dump(mode="json"))
        return found

    def digest(self) -> str:
        """``sha256:`` of what the definition selects: the canonical JSON without names and
        descriptions, which do not change who is in the cohort."""
        data = self.model_dump(mode="json", exclude={"name", "description"})
        for concept_set in data["concept_sets"]:
            concept_set.pop("name", None)
        for rule in data["inclusion_rules"]:
            rule.pop("name", None)
            rule.pop("description", None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        """The definition as JSON."""
        return json.dumps(self.to_data(), indent=2)

    def to_yaml(self) -> str:
        """The definition as YAML."""
        return yaml.safe_dump(self.to_data(), sort_keys=False)


# What one definition may hold: generous for real ATLAS definitions (tens of rules, codelists
# of thousands of concepts), small enough that compiling and running it stays bounded.
MAX_INCLUSION_RULES = 200
MAX_CONCEPT_ITEMS = 20_000
MAX_CRITERIA = 1_000


def _within_limits(definition: CohortDefinition) -> None:
    rules = len(definition.inclusion_rules)
    if rules > MAX_INCLUSION_RULES:
        raise ValueError(
            f"{rules:,} inclusion rules; a definition may have at most {MAX_INCLUSION_RULES}"
        )
    items = sum(len(c.items) for c in definition.concept_sets)
    if items > MAX_CONCEPT_ITEMS:
        raise ValueError(
            f"{items:,} concept set items; a definition may have at most {MAX_CONCEPT_ITEMS:,}"
        )
    criteria = len(_codeset_references(definition)) + sum(1 for _ in _all_criteria(definition))
    if criteria > MAX_CRITERIA:
        raise ValueError(
            f"{criteria:,} criteria and references; a definition may have at most {MAX_CRITERIA:,}"
        )


def _all_criteria(definition: CohortDefinition) -> list[Criterion | Demographic]:
    found: list[Criterion | Demographic] = []
    groups: list[Group] = []
    criteria = [*definition.primary.criteria, *definition.censoring]
    if definition.additional is not None:
        groups.append(definition.additional)
    groups += [r.expression for r in definition.inclusion_rules]
    while criteria or groups:
        if criteria:
            c = criteria.pop()
            found.append(c)
            if c.correlated is not None:
                groups.append(c.correlated)
            continue
        g = groups.pop()
        criteria += [cc.criterion for cc in g.criteria]
        found += g.demographics
        groups += g.groups
    return found


def _codeset_references(definition: CohortDefinition) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []

    def criterion(path: str, c: Criterion) -> None:
        if c.codeset_id is not None:
            found.append((path, c.codeset_id))
        if c.source_codeset_id is not None:
            found.append((f"{path}.source_codeset_id", c.source_codeset_id))
        if c.correlated is not None:
            group(f"{path}.correlated", c.correlated)

    def group(path: str, g: Group) -> None:
        for i, cc in enumerate(g.criteria):
            criterion(f"{path}.criteria[{i}].criterion", cc.criterion)
        for i, sub in enumerate(g.groups):
            group(f"{path}.groups[{i}]", sub)

    for i, c in enumerate(definition.primary.criteria):
        criterion(f"$.primary.criteria[{i}]", c)
    if definition.additional is not None:
        group("$.additional", definition.additional)
    for i, rule in enumerate(definition.inclusion_rules):
        group(f"$.inclusion_rules[{i}].expression", rule.expression)
    for i, c in enumerate(definition.censoring):
        criterion(f"$.censoring[{i}]", c)
    if isinstance(definition.end_strategy, DrugEra):
        found.append(("$.end_strategy", definition.end_strategy.codeset_id))
    return found


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("observation_period_end", "date_offset", "drug_era"):
            path += f".{part}"
    return path


def parse_definition(data: Any, source: str = "definition") -> CohortDefinition:
    """Validate a medlab cohort definition, naming the JSON path of each problem."""
    try:
        return CohortDefinition.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_json_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
        shown = "; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        raise DefinitionError(f"{source}: invalid cohort definition: {shown}") from None


def load_definition(path: Path) -> CohortDefinition:
    """Read a definition file: medlab JSON or YAML, or an ATLAS/Circe JSON export."""
    from medlab.cohorts.circe import from_circe, is_circe

    data = read_document(path, "cohort definition", DefinitionError)
    definition = (
        from_circe(data, source=str(path))
        if is_circe(data)
        else parse_definition(data, source=str(path))
    )
    return definition if definition.name else definition.model_copy(update={"name": path.stem})


def example(name: str) -> CohortDefinition:
    """A cohort definition shipped with medlab (``src/medlab/cohorts/examples/NAME.yaml``)."""
    from importlib import resources

    text = resources.files("medlab.cohorts").joinpath(f"examples/{name}.yaml").read_text()
    return parse_definition(yaml.safe_load(text), source=f"example {name}")
