"""The release policy: what a node's steward lets leave the node, as data.

A policy is a small YAML or JSON document, versioned by the steward and hashed into every
result released under it. The defaults follow the strictest of the practices medlab's users
know:

- minimum cell count 10 (ACRO and many NHS TREs use 10; OpenSAFELY suppresses at 7 or fewer;
  DataSHIELD's ``nfilter.tab`` defaults to 3), zeros disclosive unless allowed;
- rounding to OpenSAFELY's midpoint-6 (each count ``n > 0`` becomes ``6 * ceil(n / 6) - 3``);
  a count whose rounded value falls below the minimum cell count is suppressed as well, so no
  released count ever lies between 1 and the minimum;
- dominance for sums and means: the (n, k) rule with n = 2, k = 90% (ACRO's ``nk_rule``) and
  the p% rule with p = 10% (ACRO's ``p_ratio``);
- models: at least 10 residual degrees of freedom (ACRO's ``safe_dof_threshold``) and 10
  outcome events per parameter; means, variances and quantiles need a group of 10;
- statistics at a few significant digits (:class:`Precision`), never fine enough to pin a
  protected count;
- counts protected by rounding; the cell-key method or differential privacy on request;
- differential privacy off unless the steward turns it on; record-level export off.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medlab import inputs
from medlab.errors import MedlabError, PolicyError

AnalysisType = Literal[
    "incidence",
    "characterization",
    "comparative",
    "feasibility",
    "utilization",
    "federated_mean",
    "federated_model",
]
ALL_ANALYSES: tuple[AnalysisType, ...] = get_args(AnalysisType)
Rounding = Literal["none", "nearest5", "midpoint6"]
CountProtection = Literal["rounding", "cell_key", "differential_privacy"]
_ROUNDING_ORDER: tuple[Rounding, ...] = ("none", "nearest5", "midpoint6")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dominance(_Settings):
    """Dominance rules for sums: suppressed when the largest ``n`` contributions exceed ``k``
    of the total, or when the total less the two largest is within ``p`` of the largest."""

    n: Annotated[int, Field(ge=1, le=100)] = 2
    k: Annotated[float, Field(gt=0, le=1)] = 0.9
    p: Annotated[float, Field(ge=0, le=1)] = 0.1


# The privacy loss of one release: below 1e-4 the noise swamps any count; above 100 it is
# no protection at all.
Loss = Annotated[float, Field(ge=1e-4, le=100)]


class DifferentialPrivacy(_Settings):
    """Noise for released counts and sums, spent from the project's budget: for DP queries
    when ``enabled``, and for study releases when ``count_protection`` is
    ``differential_privacy``. Models (hazard ratios, curves) are released from study runs
    under DP only with ``exact_models``, and then exactly as the other rules allow."""

    enabled: bool = False
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon_per_release: Loss = 1.0
    rho_per_release: Loss = 0.05
    delta: Annotated[float, Field(ge=0, lt=1)] = 1e-7
    exact_models: bool = False

    @field_validator("epsilon_per_release", "rho_per_release", "delta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class CellKey(_Settings):
    """The cell-key method (the Australian Bureau of Statistics' TableBuilder): a released
    count moves by at most ``max_perturbation``, with a perturbation of this variance, chosen
    by the sum of its persons' secret record keys."""

    max_perturbation: Annotated[int, Field(ge=1, le=10)] = 3
    variance: Annotated[float, Field(gt=0, le=25)] = 1.5


Digits = Annotated[int, Field(ge=1, le=15)]


class Precision(_Settings):
    """Significant digits per kind of released statistic (``precision: none`` in a policy
    keeps full precision). A proportion of ``n`` persons is never shown finer than ``1/n``
    for the smallest ``n`` its released count allows, and a mean and SD of whole numbers are
    coarsened until every count the released count allows fits them, so that no statistic
    pins the count it was computed from (:mod:`medlab.privacy.precision`)."""

    ratio: Digits = 3  # hazard ratios and their confidence limits
    p_value: Digits = 2
    proportion: Digits = 2  # equipoise, survival, shares
    smd: Digits = 2  # standardized mean differences (balance)
    mean: Digits = 3  # means and standard deviations of a value (ages, scores)


Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]


class FederationPolicy(_Settings):
    """What the node's agent accepts from the hub, checked at the node before anything runs
        (a single-process ``study run`` is the steward's own and skips these): the projects and
        researchers allowed (absent: any the hub registered), the fewest sites a study must have,
        whether the steward approves each task (``approval: each_task``, the default; projects in
        ``pre_approved_projects`` run without it) or trusts every allowed task (``none``),
        whether the steward reviews the released payload before it is uploaded, whether a
        submission must carry its researcher's signature, and whether the node releases its own
        site-level numbers at all (``release_site_level: false``: only its contributions to
        secure sums leave it, so results hold pooled numbers and no table of this site's), and
    whether a pooled fit may go on over fewer nodes after one drops between its steps
    (``after_dropout``), and whether a task must run under a data-use agreement this node's
    steward signed (``require_agreement``; a task that names an agreement is always checked
    against the node's own signed copy)."""

    allowed_projects: Annotated[list[Name], Field(max_length=1000)] | None = None
    allowed_researchers: Annotated[list[Name], Field(max_length=1000)] | None = None
    min_sites: Annotated[int, Field(ge=1, le=1000)] = 1
    approval: Literal["each_task", "none"] = "each_task"
    pre_approved_projects: Annotated[list[Name], Field(max_length=1000)] = Field(
        default_factory=list
    )
    review_results: bool = False
    require_researcher_signature: bool = False
    release_site_level: bool = True
    # Whether a pooled fit goes on over the nodes left when one drops between its steps
    # (``end``: the fit is withheld; a node releasing no site-level numbers always ends).
    after_dropout: Literal["continue", "end"] = "continue"
    require_agreement: bool = False


class ReleasePolicy(_Settings):
    """Everything the release gate applies; see the module docstring for the defaults."""

    version: Annotated[str, Field(min_length=1, max_length=100)] = "medlab-default-1"
    min_cell_count: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    allow_zeros: bool = False
    count_protection: CountProtection = "rounding"
    rounding: Rounding = "midpoint6"
    cell_key: CellKey = Field(default_factory=CellKey)
    precision: Precision | Literal["none"] = Field(default_factory=Precision)
    dominance: Dominance = Field(default_factory=Dominance)
    min_degrees_of_freedom: Annotated[int, Field(ge=0, le=1_000_000)] = 10
    min_events_per_parameter: Annotated[int, Field(ge=0, le=1_000_000)] = 10
    min_group_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    # Event times leave a node only binned to this many days (the unstratified pooled Cox
    # model on secure sums); the coarsest node's width wins.
    event_bin_days: Annotated[int, Field(ge=1, le=3650)] = 30
    differential_privacy: DifferentialPrivacy = Field(default_factory=DifferentialPrivacy)
    allowed_analyses: list[AnalysisType] = Field(default_factory=lambda: list(ALL_ANALYSES))
    record_level_export: bool = False
    federation: FederationPolicy = Field(default_factory=FederationPolicy)

    @model_validator(mode="after")
    def _dp_for_studies_needs_dp(self) -> ReleasePolicy:
        if (
            self.count_protection == "differential_privacy"
            and not self.differential_privacy.enabled
        ):
            raise ValueError(
                "count_protection differential_privacy needs differential_privacy.enabled: true"
            )
        return self

    def digest(self) -> str:
        """``sha256:`` over the canonical JSON of every setting, defaults included."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def round_count(self, n: int) -> int:
        """The count as released before suppression (``n`` itself when rounding is off or
        counts are protected otherwise)."""
        if n <= 0 or self.rounding == "none" or self.count_protection != "rounding":
            return n
        if self.rounding == "nearest5":
            return 5 * math.floor(n / 5 + 0.5)
        return 6 * math.ceil(n / 6) - 3

    def count_band(self, shown: int) -> tuple[int, int]:
        """The true counts a released (rounded or perturbed) count ``shown`` may stand for."""
        if self.count_protection == "cell_key":
            d = self.cell_key.max_perturbation
            return max(shown - d, self.min_cell_count), shown + d
        if self.count_protection != "rounding" or self.rounding == "none":
            return shown, shown
        if self.rounding == "nearest5":
            return max(shown - 2, 1), shown + 2
        return shown - 2, shown + 3


def _path(loc: tuple[int | str, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


Model = TypeVar("Model", bound=BaseModel)


def validate(
    model: type[Model],
    data: Any,
    source: str,
    what: str,
    error: type[MedlabError] = PolicyError,
    text: str | None = None,
) -> Model:
    """``data`` as ``model``; every problem is named by its JSON path (and, given the
    document's ``text``, its line) in one ``error``."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            line = None if text is None else inputs.line_of(text, e["loc"])
            where = _path(e["loc"]) + ("" if line is None else f" (line {line})")
            problems.append(f"{where}: {e['msg']}")
        raise error(f"{source}: invalid {what}: " + "; ".join(problems)) from None


def read_document(path: Path, what: str) -> Any:
    """The parsed YAML (``.yaml``/``.yml``) or JSON in ``path`` (see :mod:`medlab.inputs`)."""
    return inputs.read_document(path, what, PolicyError)


def parse_policy(data: Any, source: str = "policy", text: str | None = None) -> ReleasePolicy:
    """A policy from parsed JSON/YAML; problems name their JSON path (and line)."""
    return validate(ReleasePolicy, data, source, "release policy", text=text)


def load_policy(path: Path | None) -> ReleasePolicy:
    """The policy in ``path`` (YAML or JSON), or the defaults when ``path`` is None."""
    if path is None:
        return ReleasePolicy()
    text = inputs.read_text(path, "release policy", PolicyError)
    data = inputs.parse_document(text, str(path), inputs.is_yaml(path), PolicyError)
    return parse_policy(data, str(path), text)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _looser(node: ReleasePolicy, asked: ReleasePolicy) -> list[str]:
    """Every setting in which ``asked`` lets out more than ``node``, by JSON path."""
    problems: list[str] = []

    def at_least(path: str, mine: float, theirs: float) -> None:
        if theirs < mine:
            problems.append(f"$.{path} {theirs:g} is below the node's {mine:g}")

    def at_most(path: str, mine: float, theirs: float) -> None:
        if theirs > mine:
            problems.append(f"$.{path} {theirs:g} is above the node's {mine:g}")

    def not_on(path: str, mine: bool, theirs: bool) -> None:
        if theirs and not mine:
            problems.append(f"$.{path} is true, the node's is false")

    at_least("min_cell_count", node.min_cell_count, asked.min_cell_count)
    not_on("allow_zeros", node.allow_zeros, asked.allow_zeros)
    # Differential privacy is the strongest protection; otherwise the node's method stands.
    if asked.count_protection not in (node.count_protection, "differential_privacy"):
        problems.append(
            f"$.count_protection {asked.count_protection} is not the node's "
            f"{node.count_protection} (only differential_privacy may replace it)"
        )
    if asked.count_protection == node.count_protection == "rounding" and _ROUNDING_ORDER.index(
        asked.rounding
    ) < _ROUNDING_ORDER.index(node.rounding):
        problems.append(f"$.rounding {asked.rounding} is finer than the node's {node.rounding}")
    if asked.count_protection == node.count_protection == "cell_key":
        at_least(
            "cell_key.max_perturbation",
            node.cell_key.max_perturbation,
            asked.cell_key.max_perturbation,
        )
        at_least("cell_key.variance", node.cell_key.variance, asked.cell_key.variance)
    if asked.precision == "none" and node.precision != "none":
        problems.append("$.precision none keeps full precision; the node rounds statistics")
    elif isinstance(asked.precision, Precision) and isinstance(node.precision, Precision):
        for kind in Precision.model_fields:
            at_most(
                f"precision.{kind}", getattr(node.precision, kind), getattr(asked.precision, kind)
            )
    at_least("dominance.n", node.dominance.n, asked.dominance.n)
    at_most("dominance.k", node.dominance.k, asked.dominance.k)
    at_least("dominance.p", node.dominance.p, asked.dominance.p)
    names = ("min_degrees_of_freedom", "min_events_per_parameter", "min_group_size")
    for name in (*names, "event_bin_days"):
        at_least(name, getattr(node, name), getattr(asked, name))
    mine, theirs = node.differential_privacy, asked.differential_privacy
    not_on("differential_privacy.enabled", mine.enabled, theirs.enabled)
    if theirs.enabled and theirs.mechanism != mine.mechanism:
        problems.append(
            f"$.differential_privacy.mechanism {theirs.mechanism} is not the node's "
            f"{mine.mechanism}"
        )
    for name in ("epsilon_per_release", "rho_per_release", "delta"):
        at_most(f"differential_privacy.{name}", getattr(mine, name), getattr(theirs, name))
    not_on("differential_privacy.exact_models", mine.exact_models, theirs.exact_models)
    extra = sorted(set(asked.allowed_analyses) - set(node.allowed_analyses))
    if extra:
        problems.append(
            f"$.allowed_analyses adds {', '.join(extra)}, which the node does not allow"
        )
    not_on("record_level_export", node.record_level_export, asked.record_level_export)
    ours, wanted = node.federation, asked.federation
    for name in ("allowed_projects", "allowed_researchers"):
        mine_list, theirs_list = getattr(ours, name), getattr(wanted, name)
        if mine_list is not None and (theirs_list is None or set(theirs_list) - set(mine_list)):
            problems.append(f"$.federation.{name} allows more than the node's")
    at_least("federation.min_sites", ours.min_sites, wanted.min_sites)
    if ours.approval == "each_task" and wanted.approval == "none":
        problems.append("$.federation.approval none, the node's steward approves each task")
    if set(wanted.pre_approved_projects) - set(ours.pre_approved_projects):
        problems.append("$.federation.pre_approved_projects adds projects the node did not")
    not_on("federation.release_site_level", ours.release_site_level, wanted.release_site_level)
    if ours.after_dropout == "end" and wanted.after_dropout != "end":
        problems.append("$.federation.after_dropout continue, the node's is end")
    for name in ("review_results", "require_researcher_signature", "require_agreement"):
        if getattr(ours, name) and not getattr(wanted, name):
            problems.append(f"$.federation.{name} is false, the node's is true")
    return problems


def tighten(node: ReleasePolicy, overrides: Any, source: str) -> ReleasePolicy:
    """The node's policy with ``overrides`` (a parsed policy document, possibly partial)
    applied, when every change is at least as strict; otherwise a :class:`PolicyError`
    naming each field that would loosen it."""
    if overrides is None:
        return node
    if not isinstance(overrides, dict):
        raise PolicyError(f"{source}: a release policy is a mapping of settings")
    asked = parse_policy(_merge(node.model_dump(mode="json"), overrides), source)
    problems = _looser(node, asked)
    if problems:
        raise PolicyError(
            f"{source}: a policy given with the request may only tighten the node's policy "
            f"({node.version}): " + "; ".join(problems),
            hint="the node's steward sets its policy with: medlab node policy set STORE FILE",
        )
    return asked
