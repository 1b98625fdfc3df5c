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
- differential privacy off unless the steward turns it on; record-level export off.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medlab.errors import MedlabError, PolicyError

AnalysisType = Literal["incidence", "characterization", "comparative", "feasibility", "utilization"]
ALL_ANALYSES: tuple[AnalysisType, ...] = (
    "incidence",
    "characterization",
    "comparative",
    "feasibility",
    "utilization",
)


class Dominance(BaseModel):
    """Dominance rules for sums: suppressed when the largest ``n`` contributions exceed ``k``
    of the total, or when the total less the two largest is within ``p`` of the largest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: Annotated[int, Field(ge=1)] = 2
    k: Annotated[float, Field(gt=0, le=1)] = 0.9
    p: Annotated[float, Field(ge=0, le=1)] = 0.1


class DifferentialPrivacy(BaseModel):
    """Noise for released counts and sums, spent from the project's budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon_per_release: Annotated[float, Field(gt=0)] = 1.0
    rho_per_release: Annotated[float, Field(gt=0)] = 0.05
    delta: Annotated[float, Field(ge=0, lt=1)] = 1e-7

    @field_validator("epsilon_per_release", "rho_per_release", "delta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class ReleasePolicy(BaseModel):
    """Everything the release gate applies; see the module docstring for the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = "medlab-default-1"
    min_cell_count: Annotated[int, Field(ge=1)] = 10
    allow_zeros: bool = False
    rounding: Literal["none", "nearest5", "midpoint6"] = "midpoint6"
    dominance: Dominance = Field(default_factory=Dominance)
    min_degrees_of_freedom: Annotated[int, Field(ge=0)] = 10
    min_events_per_parameter: Annotated[int, Field(ge=0)] = 10
    min_group_size: Annotated[int, Field(ge=1)] = 10
    differential_privacy: DifferentialPrivacy = Field(default_factory=DifferentialPrivacy)
    allowed_analyses: list[AnalysisType] = Field(default_factory=lambda: list(ALL_ANALYSES))
    record_level_export: bool = False

    def digest(self) -> str:
        """``sha256:`` over the canonical JSON of every setting, defaults included."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def round_count(self, n: int) -> int:
        """The count as released before suppression (``n`` itself when rounding is off)."""
        if n <= 0 or self.rounding == "none":
            return n
        if self.rounding == "nearest5":
            return 5 * math.floor(n / 5 + 0.5)
        return 6 * math.ceil(n / 6) - 3


def _path(loc: tuple[int | str, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


Model = TypeVar("Model", bound=BaseModel)


def validate(
    model: type[Model],
    data: Any,
    source: str,
    what: str,
    error: type[MedlabError] = PolicyError,
) -> Model:
    """``data`` as ``model``; every problem is named by its JSON path in one ``error``."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = [f"{_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise error(f"{source}: invalid {what}: " + "; ".join(problems)) from None


def read_document(path: Path, what: str) -> Any:
    """The parsed YAML (``.yaml``/``.yml``) or JSON in ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read the {what} ({exc})") from None


def parse_policy(data: Any, source: str = "policy") -> ReleasePolicy:
    """A policy from parsed JSON/YAML; problems name their JSON path."""
    return validate(ReleasePolicy, data, source, "release policy")


def load_policy(path: Path | None) -> ReleasePolicy:
    """The policy in ``path`` (YAML or JSON), or the defaults when ``path`` is None."""
    if path is None:
        return ReleasePolicy()
    return parse_policy(read_document(path, "release policy"), str(path))
