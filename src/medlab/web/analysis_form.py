"""The builder's analysis form, read from the analyses' own models: for each analysis type
its cohort roles (target, comparator, outcome, cohort, cohorts) and every simple setting
(a choice, a number, a yes/no, a set of choices, a list of ids or names; nested settings
such as the comparative population's one level down), each with its default. Settings a
form cannot say (lists of windows, controls, pooled estimation) stay in the spec's text.

What a researcher fills in becomes one analysis of the spec; only the settings that differ
from their defaults are written, and the spec is checked as a whole, so a problem comes back
with its JSON path and shows at its field.
"""

import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from medlab.studies import spec as specs

MODELS: dict[str, type[BaseModel]] = {
    get_args(m.model_fields["type"].annotation)[0]: m for m in get_args(get_args(specs.Analysis)[0])
}
ROLES = ("target", "comparator", "outcome", "cohort", "cohorts")


@dataclass
class Setting:
    """One setting as a form field."""

    name: str  # its path under ``settings``, dotted (``population.washout_period``)
    kind: Literal["choice", "number", "yes", "choices", "ids", "names"]
    default: Any
    options: list[Any] = field(default_factory=list)
    optional: bool = False
    whole: bool = True
    top: bool = False  # a field of the analysis itself, not of its settings

    @property
    def field(self) -> str:
        return ("analysis." if self.top else "setting.") + self.name


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None`` (and whether ``None`` was allowed)."""
    optional = False
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation, optional = args[0], True
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation, optional


def settings_of(
    model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = (), top: bool = False
) -> list[Setting]:
    """The simple settings of a settings model (its nested models one level down)."""
    found = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        annotation, optional = _unwrap(info.annotation)
        default = info.get_default(call_default_factory=True)
        path = prefix + name
        origin = get_origin(annotation)
        if origin is Literal:
            found.append(Setting(path, "choice", default, list(get_args(annotation)), optional))
        elif annotation is bool:
            found.append(Setting(path, "yes", default))
        elif annotation in (int, float):
            found.append(Setting(path, "number", default, [], optional, annotation is int))
        elif origin is list and get_origin(_unwrap(get_args(annotation)[0])[0]) is Literal:
            options = list(get_args(_unwrap(get_args(annotation)[0])[0]))
            found.append(Setting(path, "choices", default, options, optional))
        elif origin is list and _unwrap(get_args(annotation)[0])[0] is int:
            found.append(Setting(path, "ids", default, [], optional))
        elif origin is list and _unwrap(get_args(annotation)[0])[0] is str:
            found.append(Setting(path, "names", default, [], optional))
        elif (
            isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
            and default is not None
            and not (top or prefix)  # one level down, in the settings only
        ):
            found += settings_of(annotation, path + ".")
    for s in found:
        s.top = top
    return found


def form_of(kind: str) -> dict[str, Any]:
    """The form of one analysis type: its roles and settings (KeyError: no such type)."""
    model = MODELS[kind]
    roles = [r for r in ROLES if r in model.model_fields]
    own = settings_of(model, skip=("type", "name", "settings", *ROLES), top=True)
    settings = model.model_fields.get("settings")
    found = own + (settings_of(settings.annotation) if settings is not None else [])  # type: ignore[arg-type]
    return {"type": kind, "roles": roles, "settings": found, "doc": model.__doc__ or ""}


def analysis_from(kind: str, form: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The analysis a filled-in form says, and the problems the form itself shows (a
    number that is not one); the model's own checks come from checking the spec."""
    shown = form_of(kind)
    errors: dict[str, str] = {}
    analysis: dict[str, Any] = {"type": kind, "name": str((form.get("name") or [""])[0]).strip()}
    for role in shown["roles"]:
        values = [v for v in form.get("role." + role, []) if str(v).strip()]
        ids = [int(v) for v in values if str(v).strip().lstrip("-").isdigit()]
        if role == "cohorts":
            analysis[role] = ids
        elif ids:
            analysis[role] = ids[0]
    settings: dict[str, Any] = {}
    for s in shown["settings"]:
        raw = form.get(s.field, [])
        value: Any
        if s.kind == "yes":
            value = bool(raw)
        elif s.kind == "choices":
            value = [o for o in s.options if str(o) in raw]
        elif s.kind == "ids":
            text = str(raw[0]) if raw else ""
            parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                errors[s.field] = "concept ids, separated by commas"
                continue
            value = [int(p) for p in parts] if parts or not s.optional else None
        elif s.kind == "names":
            text = str(raw[0]) if raw else ""
            names = text.replace(";", " ").replace(",", " ").split()
            value = names or s.default  # an empty field keeps the default list
        else:
            text = str(raw[0]).strip() if raw else ""
            if not text:
                value = None if s.optional else s.default
            elif s.kind == "number":
                try:
                    value = int(text) if s.whole else float(text)
                except ValueError:
                    errors[s.field] = "a whole number" if s.whole else "a number"
                    continue
            else:
                value = next((o for o in s.options if str(o) == text), text)
        if s.top:
            if value is not None:
                analysis[s.name] = value
        elif value != s.default:
            head, _, tail = s.name.partition(".")
            if tail:
                settings.setdefault(head, {})[tail] = value
            else:
                settings[head] = value
    if settings:
        analysis["settings"] = settings
    return analysis, errors


def field_of(path: str, index: int) -> str | None:
    """The form field of a spec problem's JSON path in the analysis at ``index``."""
    head = f"$.analyses[{index}]"
    if not path.startswith(head):
        return None
    rest = path[len(head) :].lstrip(".")
    top = rest.split(".")[0].split("[")[0]
    if top and top not in ("settings", "type", "name", *ROLES):
        return "analysis." + top
    if rest.startswith("settings."):
        name = rest[len("settings.") :].split("[")[0]
        return "setting." + name
    for role in ROLES:
        if rest.startswith(role):
            return "role." + role
    return "analysis"
