"""Typed fields with the ranges the engines can hold, shared by every input model.

A number in a definition, a spec, a policy or a query ends up in SQL, in date arithmetic or in
a numerical routine; each is validated into a range that all of them hold, so that a bad value
is refused with its JSON path instead of overflowing deep inside an engine:

- concept ids and other CDM ``INTEGER`` columns: 0 .. 2^31 - 1 (cohort ids from 1);
- day counts and offsets: at most 100 years either way (36,525 days);
- real numbers: finite, and within ``±1e15`` (a double holds integers exactly up to 2^53);
- ages: 0 .. 150 years.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, Field

INT32_MAX = 2**31 - 1
MAX_DAYS = 36_525  # 100 years of days, either way
MAX_REAL = 1e15


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    if abs(value) > MAX_REAL:
        raise ValueError(f"must be within ±{MAX_REAL:g}")
    return value


ConceptId = Annotated[int, Field(ge=0, le=INT32_MAX)]
CohortId = Annotated[int, Field(ge=1, le=INT32_MAX)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Days = Annotated[int, Field(ge=-MAX_DAYS, le=MAX_DAYS)]
NonNegativeDays = Annotated[int, Field(ge=0, le=MAX_DAYS)]
Real = Annotated[float, AfterValidator(_finite)]
PositiveReal = Annotated[float, Field(gt=0), AfterValidator(_finite)]
Age = Annotated[float, Field(ge=0, le=150)]
