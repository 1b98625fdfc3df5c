"""Import OHDSI Circe (ATLAS) cohort expressions into medlab's cohort model.

Every key of the Circe JSON is either translated or refused: a Circe feature medlab does not
support (a criterion type such as Specimen, an attribute such as ProviderSpecialty) is an error
naming the feature and its JSON path, never silently dropped. Keys whose value is empty
(``null``, ``false``, ``[]``, ``{}``), as ATLAS writes for unused options, carry no meaning and
are accepted.
"""

from __future__ import annotations

from typing import Any

from medlab.cohorts.model import CohortDefinition, parse_definition
from medlab.errors import DefinitionError

_DOMAINS = {
    "ConditionOccurrence": "condition_occurrence",
    "DrugExposure": "drug_exposure",
    "DrugEra": "drug_era",
    "ConditionEra": "condition_era",
    "ProcedureOccurrence": "procedure_occurrence",
    "Measurement": "measurement",
    "Observation": "observation",
    "VisitOccurrence": "visit_occurrence",
    "DeviceExposure": "device_exposure",
    "Death": "death",
    "ObservationPeriod": "observation_period",
}
_TYPE_KEYS = {
    "condition_occurrence": "ConditionType",
    "drug_exposure": "DrugType",
    "procedure_occurrence": "ProcedureType",
    "measurement": "MeasurementType",
    "observation": "ObservationType",
    "visit_occurrence": "VisitType",
    "device_exposure": "DeviceType",
    "death": "DeathType",
    "observation_period": "PeriodType",
}
_SOURCE_KEYS = {
    "condition_occurrence": "ConditionSourceConcept",
    "drug_exposure": "DrugSourceConcept",
    "procedure_occurrence": "ProcedureSourceConcept",
    "measurement": "MeasurementSourceConcept",
    "observation": "ObservationSourceConcept",
    "visit_occurrence": "VisitSourceConcept",
    "device_exposure": "DeviceSourceConcept",
    "death": "DeathSourceConcept",
}
_DATE_KEYS = {
    "drug_era": ("EraStartDate", "EraEndDate"),
    "condition_era": ("EraStartDate", "EraEndDate"),
    "observation_period": ("PeriodStartDate", "PeriodEndDate"),
}
_LIMITS = {"All": "all", "First": "first", "Last": "last"}
_OCCURRENCE = {0: "exactly", 1: "at_most", 2: "at_least"}
_COUNT_COLUMNS = {"DOMAIN_CONCEPT": "concept", "START_DATE": "start_date", "VISIT_ID": "visit"}


def is_circe(data: Any) -> bool:
    """Whether ``data`` looks like a Circe expression (ATLAS export) rather than medlab's."""
    return isinstance(data, dict) and "PrimaryCriteria" in data


def _empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {} or value == ""


class _Reader:
    """Takes the keys of one JSON object, then refuses what is left."""

    def __init__(self, obj: Any, path: str) -> None:
        if not isinstance(obj, dict):
            raise DefinitionError(f"{path}: expected a JSON object")
        self.obj = dict(obj)
        self.path = path

    def take(self, key: str, default: Any = None) -> Any:
        value = self.obj.pop(key, None)
        return default if value is None else value

    def take_list(self, key: str) -> list[Any]:
        """The list under ``key`` (empty when absent)."""
        value = self.take(key, [])
        if not isinstance(value, list):
            raise DefinitionError(
                f"{self.at(key)}: expected a list, not {type(value).__name__} {value!r:.40}"
            )
        return value

    def take_choice(self, key: str, choices: dict[Any, Any], default: Any) -> Any:
        """The translation of the value under ``key`` among ``choices``."""
        value = self.take(key, default)
        if isinstance(value, bool) or not isinstance(value, str | int) or value not in choices:
            known = ", ".join(repr(c) for c in choices)
            raise DefinitionError(f"{self.at(key)}: {value!r:.40} is not one of {known}")
        return choices[value]

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def done(self, what: str) -> None:
        for key, value in self.obj.items():
            if not _empty(value):
                raise DefinitionError(
                    f"{self.at(key)}: Circe feature '{key}' of {what} is not supported by medlab",
                    hint="remove it from the definition, or wait for support; it is never "
                    "ignored silently",
                )


def _concepts(values: Any, path: str) -> list[int] | None:
    if _empty(values):
        return None
    if not isinstance(values, list):
        raise DefinitionError(f"{path}: expected a list of concepts")
    ids = []
    for i, v in enumerate(values):
        r = _Reader(v, f"{path}[{i}]")
        ids.append(r.take("CONCEPT_ID"))
        if ids[-1] is None:
            raise DefinitionError(f"{path}[{i}]: concept without CONCEPT_ID")
    return ids


def _range(value: Any, path: str) -> dict[str, Any] | None:
    if _empty(value):
        return None
    r = _Reader(value, path)
    op = r.take("Op")
    result = {"op": "nbt" if op == "!bt" else op, "value": r.take("Value")}
    extent = r.take("Extent")
    if extent is not None:
        result["extent"] = extent
    r.done("a range")
    return result


def _criterion(obj: Any, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise DefinitionError(f'{path}: expected one criterion type, e.g. {{"DrugEra": {{…}}}}')
    ((kind, body),) = obj.items()
    if kind not in _DOMAINS:
        raise DefinitionError(
            f"{path}.{kind}: Circe criterion type '{kind}' is not supported by medlab",
            hint=f"supported: {', '.join(_DOMAINS)}",
        )
    domain = _DOMAINS[kind]
    r = _Reader(body, f"{path}.{kind}")
    out: dict[str, Any] = {"domain": domain}
    if (codeset := r.take("CodesetId")) is not None:
        out["codeset_id"] = codeset
    if r.take("First"):
        out["first_occurrence"] = True
    start_key, end_key = _DATE_KEYS.get(domain, ("OccurrenceStartDate", "OccurrenceEndDate"))
    for key, field in ((start_key, "start_date"), (end_key, "end_date")):
        if (value := _range(r.take(key), r.at(key))) is not None:
            out[field] = value
    age_key = "AgeAtStart" if domain in ("drug_era", "condition_era") else "Age"
    if (age := _range(r.take(age_key), r.at(age_key))) is not None:
        out["age"] = age
    if (gender := _concepts(r.take("Gender"), r.at("Gender"))) is not None:
        out["gender"] = gender
    type_key = _TYPE_KEYS.get(domain)
    if type_key is not None:
        if (types := _concepts(r.take(type_key), r.at(type_key))) is not None:
            out["type_concepts"] = types
        if r.take(f"{type_key}Exclude"):
            out["type_exclude"] = True
    visits = None if domain == "visit_occurrence" else r.take("VisitType")
    if (visit_types := _concepts(visits, r.at("VisitType"))) is not None:
        out["visit_type"] = visit_types
    simple = {
        "DaysSupply": "days_supply",
        "ValueAsNumber": "value_as_number",
        "EraLength": "duration",
        "PeriodLength": "duration",
        "VisitLength": "duration",
        "Refills": "refills",
        "Quantity": "quantity",
        "OccurrenceCount": "occurrence_count",
    }
    for key, field in simple.items():
        if (value := _range(r.take(key), r.at(key))) is not None:
            out[field] = value
    if (units := _concepts(r.take("Unit"), r.at("Unit"))) is not None:
        out["unit"] = units
    if (values := _concepts(r.take("ValueAsConcept"), r.at("ValueAsConcept"))) is not None:
        out["value_as_concept"] = values
    for key, field in (
        ("Operator", "operator"),
        ("ConditionStatus", "condition_status"),
        ("RouteConcept", "route"),
    ):
        if (ids := _concepts(r.take(key), r.at(key))) is not None:
            out[field] = ids
    for key, field in (
        ("RangeLow", "range_low"),
        ("RangeHigh", "range_high"),
        ("AgeAtEnd", "age_at_end"),
    ):
        if (value := _range(r.take(key), r.at(key))) is not None:
            out[field] = value
    source_key = _SOURCE_KEYS.get(domain)
    if source_key and (source := r.take(source_key)) is not None:
        out["source_codeset_id"] = source
    correlated = r.take("CorrelatedCriteria")
    if not _empty(correlated):
        out["correlated"] = _group(correlated, r.at("CorrelatedCriteria"))
    r.done(f"criterion {kind}")
    return out


def _window(obj: Any, path: str) -> dict[str, Any]:
    r = _Reader(obj, path)
    window: dict[str, Any] = {}
    for key, field, default in (("Start", "start", -1), ("End", "end", 1)):
        end = _Reader(r.take(key, {}), r.at(key))
        window[field] = {"days": end.take("Days"), "coeff": end.take("Coeff", default)}
        end.done("a window end")
    window["use_index_end"] = bool(r.take("UseIndexEnd"))
    window["use_event_end"] = bool(r.take("UseEventEnd"))
    r.done("a window")
    return window


def _group(obj: Any, path: str) -> dict[str, Any]:
    r = _Reader(obj, path)
    group: dict[str, Any] = {"type": r.take("Type", "ALL")}
    if (count := r.take("Count")) is not None:
        group["count"] = count
    criteria = []
    for i, item in enumerate(r.take_list("CriteriaList")):
        cpath = f"{r.at('CriteriaList')}[{i}]"
        c = _Reader(item, cpath)
        entry: dict[str, Any] = {"criterion": _criterion(c.take("Criteria"), c.at("Criteria"))}
        entry["start_window"] = _window(c.take("StartWindow", {}), c.at("StartWindow"))
        end_window = c.take("EndWindow")
        if not _empty(end_window):
            entry["end_window"] = _window(end_window, c.at("EndWindow"))
        entry["restrict_visit"] = bool(c.take("RestrictVisit"))
        entry["ignore_observation_period"] = bool(c.take("IgnoreObservationPeriod"))
        o = _Reader(c.take("Occurrence", {}), c.at("Occurrence"))
        occurrence: dict[str, Any] = {
            "type": o.take_choice("Type", _OCCURRENCE, 2),
            "count": o.take("Count", 1),
        }
        if o.take("IsDistinct"):
            occurrence["distinct"] = o.take_choice("CountColumn", _COUNT_COLUMNS, "DOMAIN_CONCEPT")
        else:
            o.take("CountColumn")
        o.done("an occurrence")
        entry["occurrence"] = occurrence
        c.done("a correlated criterion")
        criteria.append(entry)
    group["criteria"] = criteria
    demographics = []
    for i, item in enumerate(r.take_list("DemographicCriteriaList")):
        d = _Reader(item, f"{r.at('DemographicCriteriaList')}[{i}]")
        demo: dict[str, Any] = {}
        for key, field in (
            ("Age", "age"),
            ("OccurrenceStartDate", "start_date"),
            ("OccurrenceEndDate", "end_date"),
        ):
            if (value := _range(d.take(key), d.at(key))) is not None:
                demo[field] = value
        for key, field in (("Gender", "gender"), ("Race", "race"), ("Ethnicity", "ethnicity")):
            if (ids := _concepts(d.take(key), d.at(key))) is not None:
                demo[field] = ids
        d.done("a demographic criterion")
        demographics.append(demo)
    group["demographics"] = demographics
    group["groups"] = [
        _group(g, f"{r.at('Groups')}[{i}]") for i, g in enumerate(r.take_list("Groups"))
    ]
    r.done("a criteria group")
    return group


def _limit(obj: Any, path: str, default: str) -> str:
    if _empty(obj):
        return default
    r = _Reader(obj, path)
    kind = r.take_choice("Type", _LIMITS, "All")
    r.done("a limit")
    return str(kind)


def _concept_sets(sets: Any, path: str) -> list[dict[str, Any]]:
    result = []
    if not isinstance(sets, list | None):
        raise DefinitionError(f"{path}: expected a list of concept sets")
    for i, cs in enumerate(sets or []):
        r = _Reader(cs, f"{path}[{i}]")
        expression = _Reader(r.take("expression", {}), r.at("expression"))
        items = []
        for j, item in enumerate(expression.take_list("items")):
            it = _Reader(item, f"{expression.at('items')}[{j}]")
            concept = _Reader(it.take("concept"), it.at("concept"))
            concept_id = concept.take("CONCEPT_ID")
            if concept_id is None:
                raise DefinitionError(f"{concept.path}: concept without CONCEPT_ID")
            items.append(
                {
                    "concept_id": concept_id,
                    "include_descendants": bool(it.take("includeDescendants")),
                    "include_mapped": bool(it.take("includeMapped")),
                    "is_excluded": bool(it.take("isExcluded")),
                }
            )
            it.done("a concept set item")
        expression.done("a concept set expression")
        result.append({"id": r.take("id"), "name": r.take("name", ""), "items": items})
        r.done("a concept set")
    return result


def from_circe(data: Any, source: str = "circe") -> CohortDefinition:
    """Translate a Circe cohort expression into a medlab cohort definition."""
    r = _Reader(data, "$")
    r.take("cdmVersionRange")
    out: dict[str, Any] = {
        "name": r.take("Title", "") or "",
        "description": r.take("Description", "") or "",
        "concept_sets": _concept_sets(r.take("ConceptSets"), "$.ConceptSets"),
    }
    p = _Reader(r.take("PrimaryCriteria"), "$.PrimaryCriteria")
    window = _Reader(p.take("ObservationWindow", {}), p.at("ObservationWindow"))
    out["primary"] = {
        "criteria": [
            _criterion(c, f"{p.at('CriteriaList')}[{i}]")
            for i, c in enumerate(p.take_list("CriteriaList"))
        ],
        "prior_days": window.take("PriorDays", 0),
        "post_days": window.take("PostDays", 0),
        "limit": _limit(p.take("PrimaryCriteriaLimit"), p.at("PrimaryCriteriaLimit"), "all"),
    }
    window.done("the observation window")
    p.done("the primary criteria")
    additional = r.take("AdditionalCriteria")
    if not _empty(additional):
        out["additional"] = _group(additional, "$.AdditionalCriteria")
    # Circe's ResultLimit defaults to "All" when an export leaves a limit out.
    out["qualified_limit"] = _limit(r.take("QualifiedLimit"), "$.QualifiedLimit", "all")
    out["expression_limit"] = _limit(r.take("ExpressionLimit"), "$.ExpressionLimit", "all")
    rules = []
    for i, rule in enumerate(r.take_list("InclusionRules")):
        rr = _Reader(rule, f"$.InclusionRules[{i}]")
        rules.append(
            {
                "name": rr.take("name", f"rule {i + 1}"),
                "description": rr.take("description", "") or "",
                "expression": _group(rr.take("expression", {}), rr.at("expression")),
            }
        )
        rr.done("an inclusion rule")
    out["inclusion_rules"] = rules
    end = r.take("EndStrategy")
    if not _empty(end):
        e = _Reader(end, "$.EndStrategy")
        offset = e.take("DateOffset")
        era = e.take("CustomEra")
        if not _empty(offset):
            o = _Reader(offset, e.at("DateOffset"))
            field = o.take("DateField", "StartDate")
            out["end_strategy"] = {
                "type": "date_offset",
                "field": "end" if field == "EndDate" else "start",
                "offset": o.take("Offset", 0),
            }
            o.done("a date offset end strategy")
        elif not _empty(era):
            c = _Reader(era, e.at("CustomEra"))
            out["end_strategy"] = {
                "type": "drug_era",
                "codeset_id": c.take("DrugCodesetId"),
                "gap_days": c.take("GapDays", 0),
                "offset": c.take("Offset", 0),
                "days_supply_override": c.take("DaysSupplyOverride"),
            }
            c.done("a custom era end strategy")
        e.done("the end strategy")
    out["censoring"] = [
        _criterion(c, f"$.CensoringCriteria[{i}]")
        for i, c in enumerate(r.take_list("CensoringCriteria"))
    ]
    collapse = _Reader(r.take("CollapseSettings", {}), "$.CollapseSettings")
    collapse.take_choice("CollapseType", {"ERA": "ERA"}, "ERA")
    out["era_pad_days"] = collapse.take("EraPad", 0)
    collapse.done("the collapse settings")
    cw = _Reader(r.take("CensorWindow", {}), "$.CensorWindow")
    out["censor_window"] = {"start": cw.take("StartDate"), "end": cw.take("EndDate")}
    cw.done("the censor window")
    r.done("a cohort expression")
    return parse_definition(out, source=source)
