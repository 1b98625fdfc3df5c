"""The researcher's cohort editor: concepts found by search over the vocabulary the hub
holds (``medlab hub vocabulary``), gathered into concept sets (with or without their
descendants, or excluded), an entry event, inclusion rules with their time windows and an
end strategy; the definition in medlab's cohort language, shown in words as it grows, and
made into a feasibility study (its funnel is the cohort's attrition at every site).

The page keeps no state: the definition being edited travels in the form (``draft``) and
each action returns it changed; nothing is stored before the study is submitted.
"""

import copy
import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from medlab.cohorts.domains import DOMAINS
from medlab.cohorts.model import CohortDefinition
from medlab.cohorts.words import describe
from medlab.federation.hub import vocabulary
from medlab.web.base import Web

ENTRY_DOMAINS = [d for d in DOMAINS if d not in ("observation_period", "death")]
EMPTY: dict[str, Any] = {"name": "", "concept_sets": [], "primary": {"criteria": []}}
MAX_DRAFT = 200_000


class Draft:
    """The definition being edited, as plain data, and the problems of the last action."""

    def __init__(self, text: str) -> None:
        self.errors: dict[str, str] = {}
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            data, self.errors["draft"] = None, "the draft was unreadable"
        if not isinstance(data, dict):
            data = copy.deepcopy(EMPTY)
        self.data: dict[str, Any] = data
        self.data.setdefault("concept_sets", [])
        self.data.setdefault("primary", {"criteria": []})

    @property
    def sets(self) -> list[dict[str, Any]]:
        return list(self.data["concept_sets"])

    def add(self, concept: int, target: str, new_name: str, descendants: bool, exclude: bool):  # type: ignore[no-untyped-def]
        """Put ``concept`` in the concept set ``target`` (``new``: a new set)."""
        sets: list[dict[str, Any]] = self.data["concept_sets"]
        found: dict[str, Any] | None
        if target == "new" or not sets:
            found = {"id": max((s["id"] for s in sets), default=-1) + 1, "items": []}
            found["name"] = new_name.strip()[:100] or f"concept set {found['id']}"
            sets.append(found)
        else:
            found = next((s for s in sets if str(s["id"]) == target), None)
            if found is None:
                self.errors["set"] = f"no concept set {target}"
                return
        items = [i for i in found["items"] if i["concept_id"] != concept]
        items.append(
            {"concept_id": concept, "include_descendants": descendants, "is_excluded": exclude}
        )
        found["items"] = items

    def drop(self, set_id: int, concept: int) -> None:
        for s in self.data["concept_sets"]:
            if s["id"] == set_id:
                s["items"] = [i for i in s["items"] if i["concept_id"] != concept]

    def definition(self) -> CohortDefinition | None:
        """The definition, or None with the problems at their fields."""
        if not self.data["concept_sets"] or not self.data["primary"]["criteria"]:
            return None
        try:
            return CohortDefinition.model_validate(self.data)
        except ValidationError as exc:
            for e in exc.errors()[:5]:
                loc = [str(p) for p in e["loc"]]
                field = "rule" if "inclusion_rules" in loc else "entry"
                if "concept_sets" in loc:
                    field = "set"
                self.errors.setdefault(field, f"{'.'.join(loc)}: {e['msg']}")
            return None

    def text(self) -> str:
        return json.dumps(self.data, separators=(",", ":"))


def _days(text: str, field: str, draft: Draft) -> int | None:
    """A day count from the form (blank: None, unbounded)."""
    if not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 100_000:
        draft.errors[field] = "a whole number of days from 0 to 100000, or blank"
        return None
    return value


def routes(web: Web) -> APIRouter:
    """The cohort editor's page and its actions."""
    pages = APIRouter(include_in_schema=False)
    hub = web.hub

    def render(
        request: Request, draft: Draft, q: str = "", domain: str = "", **more: Any
    ) -> Response:
        names: dict[int, Any] = {}
        found: list[Any] = []
        with hub.sessions() as s:
            size = vocabulary.size(s)
            if q:
                found = vocabulary.search(s, q, domain or None)
            ids = {i["concept_id"] for cs in draft.sets for i in cs.get("items", [])}
            names = vocabulary.concepts(s, ids | {c.concept_id for c in found})
            counts = vocabulary.descendant_counts(s, ids | {c.concept_id for c in found})
        definition = draft.definition()
        words = (
            []
            if definition is None
            else describe(definition, lambda cid: names[cid].name if cid in names else None)
        )
        code = 422 if draft.errors else 200
        return web.render(
            request,
            "cohort.html",
            code,
            draft=draft,
            q=q,
            domain=domain,
            found=found,
            names=names,
            counts=counts,
            words=words,
            size=size,
            entry_domains=ENTRY_DOMAINS,
            concept_domains=sorted({c.domain for c in found} | {domain} - {""}),
            **more,
        )

    @pages.get("/build/cohort")
    def editor(request: Request, q: str = "", domain: str = "") -> Response:
        web.need(request, "study_submit")
        return render(request, Draft(""), q=q[:200], domain=domain[:20])

    @pages.post("/build/cohort")
    def act(
        request: Request,
        csrf: Annotated[str, Form(max_length=100)] = "",
        draft: Annotated[str, Form(max_length=MAX_DRAFT)] = "",
        action: Annotated[str, Form(max_length=100)] = "search",
        q: Annotated[str, Form(max_length=200)] = "",
        domain: Annotated[str, Form(max_length=20)] = "",
        name: Annotated[str, Form(max_length=200)] = "",
        target: Annotated[str, Form(max_length=20)] = "new",
        set_name: Annotated[str, Form(max_length=100)] = "",
        descendants: Annotated[str, Form(max_length=10)] = "",
        exclude: Annotated[str, Form(max_length=10)] = "",
        entry_domain: Annotated[str, Form(max_length=40)] = "",
        entry_set: Annotated[str, Form(max_length=20)] = "",
        first: Annotated[str, Form(max_length=10)] = "",
        prior_days: Annotated[str, Form(max_length=10)] = "0",
        rule_name: Annotated[str, Form(max_length=200)] = "",
        rule_domain: Annotated[str, Form(max_length=40)] = "",
        rule_set: Annotated[str, Form(max_length=20)] = "",
        rule_before: Annotated[str, Form(max_length=10)] = "",
        rule_after: Annotated[str, Form(max_length=10)] = "",
        rule_none: Annotated[str, Form(max_length=10)] = "",
        end_days: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        web.check_form(request, csrf)
        web.need(request, "study_submit")
        state = Draft(draft)
        state.data["name"] = name.strip()[:200]
        verb, _, arg = action.partition(":")
        if verb == "add" and arg.isdigit():
            state.add(int(arg), target, set_name, bool(descendants), bool(exclude))
        elif verb == "drop":
            set_id, _, concept = arg.partition(":")
            if set_id.isdigit() and concept.isdigit():
                state.drop(int(set_id), int(concept))
        elif verb == "entry":
            prior = _days(prior_days, "entry", state) or 0
            if entry_domain not in ENTRY_DOMAINS or not entry_set.isdigit():
                state.errors["entry"] = "choose a domain and a concept set"
            else:
                criterion = {"domain": entry_domain, "codeset_id": int(entry_set)}
                state.data["primary"] = {
                    "criteria": [criterion | ({"first_occurrence": True} if first else {})],
                    "prior_days": prior,
                }
        elif verb == "rule":
            _rule(state, rule_name, rule_domain, rule_set, rule_before, rule_after, rule_none)
        elif verb == "droprule" and arg.isdigit():
            rules = state.data.get("inclusion_rules", [])
            state.data["inclusion_rules"] = [r for i, r in enumerate(rules) if i != int(arg)]
        elif verb == "end":
            days = _days(end_days, "end", state)
            state.data.pop("end_strategy", None)
            if days is not None:
                state.data["end_strategy"] = {
                    "type": "date_offset",
                    "field": "start",
                    "offset": days,
                }
        elif verb == "study":
            definition = state.definition()
            if definition is not None and not state.errors:
                spec = feasibility_study(state.data)
                return web.render(
                    request,
                    "build.html",
                    **_builder_context(web, request, spec),
                )
            state.errors.setdefault("entry", "the cohort needs a concept set and an entry event")
        return render(request, state, q=q, domain=domain)

    return pages


def _rule(
    state: Draft, name: str, domain: str, codeset: str, before: str, after: str, none: str
) -> None:
    """An inclusion rule: an event of ``domain`` from ``codeset`` (or none) in a window
    around the entry (days before and after; blank: unbounded)."""
    if domain not in ENTRY_DOMAINS or not codeset.isdigit():
        state.errors["rule"] = "choose a domain and a concept set"
        return
    start_days, end_days = _days(before, "rule", state), _days(after, "rule", state)
    if "rule" in state.errors:
        return
    window = {
        "start": {"coeff": -1} | ({} if start_days is None else {"days": start_days}),
        "end": {"coeff": 1} | ({} if end_days is None else {"days": end_days}),
    }
    criterion: dict[str, Any] = {
        "criterion": {"domain": domain, "codeset_id": int(codeset)},
        "start_window": window,
    }
    if none:
        criterion["occurrence"] = {"type": "exactly", "count": 0}
    label = name.strip()[:200] or f"rule {len(state.data.get('inclusion_rules', [])) + 1}"
    rule = {"name": label, "expression": {"criteria": [criterion]}}
    state.data["inclusion_rules"] = [*state.data.get("inclusion_rules", []), rule]


def feasibility_study(definition: dict[str, Any]) -> dict[str, Any]:
    """A study of one cohort's feasibility: its funnel (entry, then each inclusion rule) and
    eligible persons by year at every site."""
    name = definition.get("name") or "new cohort"
    return {
        "name": f"feasibility of {name}"[:200],
        "cohorts": [{"id": 1, "name": name, "definition": definition}],
        "analyses": [{"type": "feasibility", "name": "funnel", "cohort": 1}],
    }


def _builder_context(web: Web, request: Request, spec: dict[str, Any]) -> dict[str, Any]:
    """The study builder's page with ``spec`` in its text, ready to check and submit."""
    from medlab.web.builder import form_context

    return form_context(web, request, json.dumps(spec, indent=2))
