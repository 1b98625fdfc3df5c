"""A cohort definition in words, for the people who decide on it (a steward, a reviewer).

One line per part: concept sets with their items, entry events with their filters, further
qualifying criteria, inclusion rules, limits, the end strategy and censoring. Concepts are
named by id (and by name where the caller passes a vocabulary lookup).
"""

from __future__ import annotations

from collections.abc import Callable

from medlab.cohorts.model import (
    CohortDefinition,
    ConceptSet,
    CorrelatedCriterion,
    Criterion,
    DateRange,
    Group,
    NumericRange,
    Window,
)

Names = Callable[[int], str | None]

_OPS = {"lt": "<", "lte": "≤", "gt": ">", "gte": "≥", "eq": "=", "neq": "≠"}


def _range(r: NumericRange | DateRange) -> str:
    if r.op in ("bt", "nbt"):
        inside = f"between {r.value} and {r.extent}"
        return inside if r.op == "bt" else f"not {inside}"
    return f"{_OPS.get(r.op, r.op)} {r.value}"


def _concept_set(cs: ConceptSet, names: Names) -> str:
    items = []
    for item in cs.items:
        label = names(item.concept_id)
        text = f"{item.concept_id}" + (f" {label}" if label else "")
        if item.include_descendants:
            text += " and descendants"
        if item.include_mapped:
            text += " and mapped"
        items.append(("not " if item.is_excluded else "") + text)
    title = f"concept set {cs.id}" + (f" ({cs.name})" if cs.name else "")
    return f"{title}: " + ("; ".join(items) if items else "empty")


def _criterion(c: Criterion) -> str:
    what = c.domain.replace("_", " ")
    text = ("first " if c.first_occurrence else "") + what
    text += f" of concept set {c.codeset_id}" if c.codeset_id is not None else " of any concept"
    for label, value in (
        ("age", c.age),
        ("start date", c.start_date),
        ("end date", c.end_date),
        ("days supply", c.days_supply),
        ("value", c.value_as_number),
        ("duration (days)", c.duration),
        ("occurrences", c.occurrence_count),
    ):
        if value is not None:
            text += f", {label} {_range(value)}"
    if c.gender:
        text += f", gender concept {', '.join(map(str, c.gender))}"
    return text


def _window(w: Window) -> str:
    def end(e: object, default: str) -> str:
        days, coeff = getattr(e, "days", None), getattr(e, "coeff", 1)
        if days is None:
            return "all time " + ("before" if coeff < 0 else "after")
        return f"{days} days " + ("before" if coeff < 0 else "after")

    anchor = "index end" if w.use_index_end else "index"
    return f"from {end(w.start, 'before')} to {end(w.end, 'after')} {anchor}"


def _correlated(cc: CorrelatedCriterion) -> str:
    o = cc.occurrence
    how = {"exactly": "exactly", "at_least": "at least", "at_most": "at most"}[o.type]
    text = f"{how} {o.count} {_criterion(cc.criterion)} {_window(cc.start_window)}"
    if cc.restrict_visit:
        text += ", in the same visit"
    return text


def _group(g: Group, depth: int = 0) -> list[str]:
    head = {"ALL": "all of", "ANY": "any of", "AT_LEAST": "at least", "AT_MOST": "at most"}
    title = head[g.type] + (f" {g.count} of" if g.type in ("AT_LEAST", "AT_MOST") else "")
    pad = "  " * (depth + 1)
    lines = [("  " * depth) + title + ":"]
    lines += [pad + _correlated(c) for c in g.criteria]
    for d in g.demographics:
        parts = [f"age {_range(d.age)}"] if d.age else []
        if d.gender:
            parts.append(f"gender concept {', '.join(map(str, d.gender))}")
        lines.append(pad + "demographic: " + (", ".join(parts) or "any"))
    for sub in g.groups:
        lines += _group(sub, depth + 1)
    return lines


def describe(definition: CohortDefinition, names: Names | None = None) -> list[str]:
    """The definition in words, one line per part (indented lines belong to the one above)."""
    look = names or (lambda _: None)
    lines = [_concept_set(cs, look) for cs in definition.concept_sets]
    p = definition.primary
    entry = " or ".join(_criterion(c) for c in p.criteria)
    lines.append(
        f"entry: {entry}; with at least {p.prior_days} days of observation before and "
        f"{p.post_days} after; {p.limit} such events per person"
    )
    if definition.observation_period == "not_required":
        lines.append("entry events outside any observation period are kept")
    if definition.additional is not None:
        lines += ["qualifying: " + line.strip() for line in _group(definition.additional)[:1]]
        lines += _group(definition.additional)[1:]
    if definition.qualified_limit != "all":
        lines.append(f"then the {definition.qualified_limit} qualifying event per person")
    for i, rule in enumerate(definition.inclusion_rules, 1):
        lines.append(f"inclusion rule {i} ({rule.name}): " + _group(rule.expression)[0].strip())
        lines += _group(rule.expression)[1:]
    if definition.expression_limit != "all":
        lines.append(f"then the {definition.expression_limit} entry per person")
    end = definition.end_strategy
    if end.type == "observation_period_end":
        lines.append("ends: at the end of the observation period")
    elif end.type == "date_offset":
        lines.append(f"ends: {end.offset} days after the entry event's {end.field} date")
    else:
        lines.append(
            f"ends: at the end of continuous exposure to concept set {end.codeset_id} "
            f"(gaps up to {end.gap_days} days, plus {end.offset} days)"
        )
    for c in definition.censoring:
        lines.append(f"censored at: {_criterion(c)}")
    if definition.era_pad_days:
        lines.append(f"entries less than {definition.era_pad_days} days apart are merged")
    return lines
