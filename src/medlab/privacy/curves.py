"""How a step curve (Kaplan-Meier) is shown under a release policy: the same rules at a node
(its gate) and at the hub (a pooled curve from secure sums).

Points are ``(time, at risk, events since the previous point, value)`` on a grid fixed by the
spec. The curve ends (nothing shown from there on) at the first point with fewer than the
minimum cell count at risk; the value moves only once that many events have accumulated since
it last moved (so no single event shows as a step), and is never finer than one over the
rounded number at risk; the number at risk is shown as ``protect`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from medlab.privacy.policy import ReleasePolicy
from medlab.privacy.precision import round_to


def curve_points(
    points: Sequence[tuple[float, float, float, float]],
    policy: ReleasePolicy,
    digits: int | None,
    protect: Callable[[int, float], int | None],
) -> tuple[list[dict[str, Any]], bool]:
    """The points as shown (``time``, ``at_risk``, ``value``; None where withheld), and
    whether the curve ended early."""
    shown: list[dict[str, Any]] = []
    last: float | None = None
    pending = 0.0
    ended = False
    for time, at_risk, events, value in points:
        ended = ended or at_risk < policy.min_cell_count
        if ended:
            shown.append({"time": time, "at_risk": None, "value": None})
            continue
        pending += events
        if last is None or pending >= policy.min_cell_count:
            low = policy.count_band(policy.round_count(round(at_risk)))[0]
            last = round_to(value, digits, 1.0 / max(low, 1))
            pending = 0.0
        shown.append({"time": time, "at_risk": protect(round(at_risk), time), "value": last})
    return shown, ended
