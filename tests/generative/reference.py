"""An independent, deliberately plain evaluator of the cohort model over in-memory rows.

It shares no code with the SQL compiler: each rule of the model is written out in Python, one
loop at a time, so that agreement between the two is evidence that both are right.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from medlab.cohorts import model as m
from tests.spec.world import ANCESTORS, CONCEPTS, RELATIONSHIPS, World

DAY = dt.timedelta(days=1)


@dataclass
class Event:
    person: int
    start: dt.date
    end: dt.date
    visit: int | None
    concept: int | None
    source: int
    op_start: dt.date | None = None
    op_end: dt.date | None = None
    key: tuple[Any, ...] = ()


def _expand(definition: m.CohortDefinition) -> dict[int, set[int]]:
    concepts = {c[0] for c in CONCEPTS}
    result = {}
    for cs in definition.concept_sets:
        rows = set()
        for item in cs.items:
            found = set()
            if item.concept_id in concepts:
                found.add(item.concept_id)
            if item.include_descendants:
                found |= {d for a, d, _, _ in ANCESTORS if a == item.concept_id and d in concepts}
            for concept in found:
                rows.add((item.is_excluded, concept, item.include_mapped))
        mapped = set()
        for excluded, concept, include_mapped in rows:
            mapped.add((excluded, concept))
            if include_mapped:
                for c1, c2, rel in RELATIONSHIPS:
                    if c2 == concept and rel == "Maps to":
                        mapped.add((excluded, c1))
        result[cs.id] = {c for e, c in mapped if not e} - {c for e, c in mapped if e}
    return result


def _cmp(value: Any, r: m.NumericRange | m.DateRange | None) -> bool:
    if r is None:
        return True
    if value is None:
        return False
    v = r.value
    return {
        "lt": lambda: value < v,
        "lte": lambda: value <= v,
        "eq": lambda: value == v,
        "gt": lambda: value > v,
        "gte": lambda: value >= v,
        "bt": lambda: v <= value <= r.extent,
        "nbt": lambda: not (v <= value <= r.extent),
    }[r.op]()


class Reference:
    def __init__(self, world: World, definition: m.CohortDefinition) -> None:
        self.world = world
        self.d = definition
        self.codesets = _expand(definition)
        self.persons = {p["person_id"]: p for p in world.rows["person"]}
        self.visits = {v["visit_occurrence_id"]: v for v in world.rows["visit_occurrence"]}
        self.periods = world.rows["observation_period"]

    def _op(self, person: int, day: dt.date) -> tuple[dt.date | None, dt.date | None]:
        for p in self.periods:
            if (
                p["person_id"] == person
                and p["observation_period_start_date"] <= day <= p["observation_period_end_date"]
            ):
                return p["observation_period_start_date"], p["observation_period_end_date"]
        return None, None

    def criterion(self, c: m.Criterion) -> list[Event]:
        rows = []
        for r in self.world.rows[c.domain]:
            if c.domain == "condition_occurrence":
                concept, start, end = (
                    r["condition_concept_id"],
                    r["condition_start_date"],
                    r.get("condition_end_date") or r["condition_start_date"] + DAY,
                )
                rid = r["condition_occurrence_id"]
            elif c.domain == "drug_exposure":
                concept, start = r["drug_concept_id"], r["drug_exposure_start_date"]
                end = r.get("drug_exposure_end_date")
                if end is None:
                    end = start + DAY * (r["days_supply"] if r.get("days_supply") else 1)
                rid = r["drug_exposure_id"]
            elif c.domain == "measurement":
                concept, start = r["measurement_concept_id"], r["measurement_date"]
                end, rid = start + DAY, r["measurement_id"]
            else:
                raise NotImplementedError(c.domain)
            if c.codeset_id is not None and concept not in self.codesets[c.codeset_id]:
                continue
            rows.append((r, concept, start, end, rid))
        ordinal: dict[tuple[int, int], int] = {}
        for r, _concept, _start, _end, rid in sorted(
            rows, key=lambda x: (x[0]["person_id"], x[2], x[4])
        ):
            person = r["person_id"]
            ordinal[(person, rid)] = sum(1 for k in ordinal if k[0] == person) + 1
        events = []
        for r, concept, start, end, rid in rows:
            person = self.persons.get(r["person_id"])
            if person is None and (c.age is not None or c.gender):
                continue
            if c.first_occurrence and ordinal[(r["person_id"], rid)] != 1:
                continue
            if c.age is not None and not _cmp(start.year - person["year_of_birth"], c.age):
                continue
            if c.gender and person["gender_concept_id"] not in c.gender:
                continue
            if not (_cmp(start, c.start_date) and _cmp(end, c.end_date)):
                continue
            visit = r.get("visit_occurrence_id")
            if c.visit_type and (
                visit not in self.visits
                or self.visits[visit]["visit_concept_id"] not in c.visit_type
            ):
                continue
            if c.days_supply is not None and not _cmp(r.get("days_supply"), c.days_supply):
                continue
            if c.value_as_number is not None and not _cmp(
                r.get("value_as_number"), c.value_as_number
            ):
                continue
            if c.unit and r.get("unit_concept_id") not in c.unit:
                continue
            op_start, op_end = self._op(r["person_id"], start)
            events.append(
                Event(
                    r["person_id"],
                    start,
                    end,
                    visit,
                    concept,
                    rid,
                    op_start,
                    op_end,
                    (r["person_id"], start, end, concept, rid),
                )
            )
        if c.correlated is not None:
            events = [e for e in events if self.group(c.correlated, e)]
        return events

    def occurrences(self, cc: m.CorrelatedCriterion, i: Event) -> bool:
        matched = []
        for d in self.criterion(cc.criterion):
            if d.person != i.person:
                continue
            if not all(
                self._in_window(w, i, d) for w in (cc.start_window, cc.end_window) if w is not None
            ):
                continue
            if not cc.ignore_observation_period and (
                i.op_start is None or not (i.op_start <= d.start <= i.op_end)
            ):
                continue
            if cc.restrict_visit and (d.visit is None or d.visit != i.visit):
                continue
            matched.append(d)
        distinct = cc.occurrence.distinct
        if distinct is None:
            n = len(matched)
        else:
            attr = {"concept": "concept", "start_date": "start", "visit": "visit"}[distinct]
            n = len({getattr(d, attr) for d in matched if getattr(d, attr) is not None})
        k = cc.occurrence.count
        return {"exactly": n == k, "at_least": n >= k, "at_most": n <= k}[cc.occurrence.type]

    @staticmethod
    def _in_window(w: m.Window, i: Event, d: Event) -> bool:
        anchor = i.end if w.use_index_end else i.start
        date = d.end if w.use_event_end else d.start
        if w.start.days is not None and date < anchor + DAY * (w.start.coeff * w.start.days):
            return False
        return not (w.end.days is not None and date > anchor + DAY * (w.end.coeff * w.end.days))

    def demographic(self, demo: m.Demographic, i: Event) -> bool:
        p = self.persons[i.person]
        return (
            _cmp(i.start.year - p["year_of_birth"], demo.age)
            and (not demo.gender or p["gender_concept_id"] in demo.gender)
            and (not demo.race or p["race_concept_id"] in demo.race)
            and (not demo.ethnicity or p["ethnicity_concept_id"] in demo.ethnicity)
            and _cmp(i.start, demo.start_date)
            and _cmp(i.end, demo.end_date)
        )

    def group(self, g: m.Group, i: Event) -> bool:
        results = [self.occurrences(cc, i) for cc in g.criteria]
        results += [self.demographic(d, i) for d in g.demographics]
        results += [self.group(sub, i) for sub in g.groups]
        if not results:
            return True
        n = sum(results)
        return {
            "ALL": n == len(results),
            "ANY": n >= 1,
            "AT_LEAST": n >= (g.count or 0),
            "AT_MOST": n <= (g.count or 0),
        }[g.type]

    @staticmethod
    def limit(events: list[Event], how: str) -> list[Event]:
        if how == "all":
            return events
        best: dict[int, Event] = {}
        for e in sorted(events, key=lambda e: (e.start, e.key), reverse=how == "last"):
            best.setdefault(e.person, e)
        return list(best.values())

    def cohort(self) -> list[tuple[int, str, str]]:
        p = self.d.primary
        entries = []
        for index, c in enumerate(p.criteria):
            for e in self.criterion(c):
                if e.op_start is None:
                    continue
                if (
                    e.op_start + DAY * p.prior_days <= e.start
                    and e.start + DAY * p.post_days <= e.op_end
                ):
                    e.key = (e.person, e.start, e.end, index, e.concept, e.source)
                    entries.append(e)
        entries = self.limit(entries, p.limit)
        if self.d.additional is not None:
            entries = [e for e in entries if self.group(self.d.additional, e)]
        entries = self.limit(entries, self.d.qualified_limit)
        entries = [
            e for e in entries if all(self.group(r.expression, e) for r in self.d.inclusion_rules)
        ]
        entries = self.limit(entries, self.d.expression_limit)
        rows = []
        for e in entries:
            ends = self._strategy_ends(e)
            for c in self.d.censoring:
                ends += [
                    d.start
                    for d in self.criterion(c)
                    if d.person == e.person and e.start <= d.start <= e.op_end
                ]
            if ends:
                rows.append((e.person, e.start, min(ends)))
        result = []
        for person, start, end in self._collapse(rows, self.d.era_pad_days):
            w = self.d.censor_window
            start = max(start, w.start) if w.start else start
            end = min(end, w.end) if w.end else end
            if start <= end:
                result.append((person, start.isoformat(), end.isoformat()))
        return sorted(result)

    def _strategy_ends(self, e: Event) -> list[dt.date]:
        s = self.d.end_strategy
        assert e.op_end is not None
        if isinstance(s, m.DateOffset):
            anchor = e.start if s.field == "start" else e.end
            return [min(anchor + DAY * s.offset, e.op_end)]
        if isinstance(s, m.DrugEra):
            exposures = []
            for r in self.world.rows["drug_exposure"]:
                if (
                    r["person_id"] != e.person
                    or r["drug_concept_id"] not in self.codesets[s.codeset_id]
                ):
                    continue
                start = r["drug_exposure_start_date"]
                if s.days_supply_override:
                    end = start + DAY * s.days_supply_override
                else:
                    end = r.get("drug_exposure_end_date") or start + DAY * (
                        r.get("days_supply") or 1
                    )
                exposures.append((e.person, start, end))
            return [
                min(era_end + DAY * s.offset, e.op_end)
                for _, era_start, era_end in self._collapse(exposures, s.gap_days)
                if era_start <= e.start <= era_end
            ]
        return [e.op_end]

    @staticmethod
    def _collapse(
        rows: list[tuple[int, dt.date, dt.date]], pad: int
    ) -> list[tuple[int, dt.date, dt.date]]:
        out = []
        for person in sorted({r[0] for r in rows}):
            spans = sorted((s, e) for p, s, e in rows if p == person)
            current: list[dt.date] | None = None
            reach: dt.date | None = None
            for s, e in spans:
                if current is not None and reach is not None and s <= reach:
                    current[1] = max(current[1], e)
                else:
                    if current is not None:
                        out.append((person, current[0], current[1]))
                    current = [s, e]
                reach = e + DAY * pad if reach is None else max(reach, e + DAY * pad)
            if current is not None:
                out.append((person, current[0], current[1]))
        return out


def evaluate(world: World, definition: m.CohortDefinition) -> list[tuple[int, str, str]]:
    """The cohort rows (person, start, end) the model says ``definition`` has on ``world``."""
    return Reference(world, definition).cohort()
