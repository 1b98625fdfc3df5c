"""Complementary suppression: no withheld cell may be solvable from the released cells and
the table's additive margins.

A withheld value is *pinned* when its coordinate is fixed in the solution space of the linear
system the margins form over the withheld cells (its row of the null-space basis is zero);
while any is, one more row is withheld, the smallest in a margin that pins it (a total only as
a last resort). The tests check the result with a linear-programming attacker.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medlab.privacy.release import Cells


def determined(cells: Cells, column: str, suppressed: set[str]) -> list[str]:
    """Suppressed rows whose ``column`` value the released rows and the margins pin down."""
    unknown = sorted(
        {
            r
            for c in cells.constraints
            if column in c.columns
            for r in (c.total, *c.parts)
            if r in suppressed
        }
    )
    if not unknown:
        return []
    index = {r: i for i, r in enumerate(unknown)}
    rows = []
    for c in cells.constraints:
        if column not in c.columns:
            continue
        row = np.zeros(len(unknown))
        for r, sign in [(c.total, -1.0)] + [(p, 1.0) for p in c.parts]:
            if r in index:
                row[index[r]] += sign
        if row.any():
            rows.append(row)
    if not rows:
        return []
    a = np.array(rows)
    # x = x0 + N z; a coordinate is pinned when its row of the null-space basis N is zero.
    _, s, vt = np.linalg.svd(a)
    rank = int((s > 1e-9 * max(1.0, s.max())).sum())
    null = vt[rank:].T
    pinned = np.abs(null).max(axis=1) < 1e-9 if null.size else np.ones(len(unknown), bool)
    return [r for r in unknown if pinned[index[r]]]


def complementary(
    cells: Cells,
    counts: dict[str, dict[str, int]],
    suppressed: set[str],
    record: Callable[[str, str, str, str], None],
) -> None:
    """Withhold more rows (added to ``suppressed``) until the released rows and the table's
    margins pin no withheld value; each pick goes to ``record``."""
    columns = sorted({col for c in cells.constraints for col in c.columns})

    def value(row: str, column: str) -> float:
        if column in counts.get(row, {}):
            return counts[row][column]
        return cells.extras.get(row, {}).get(column, 0.0)

    changed = True
    while changed:
        changed = False
        for column in columns:
            pinned = determined(cells, column, suppressed)
            if not pinned:
                continue
            target = pinned[0]
            margins = [
                c
                for c in cells.constraints
                if column in c.columns and target in (c.total, *c.parts)
            ]
            candidates = [
                r
                for c in margins
                for r in (*c.parts, c.total)
                if r not in suppressed and r in counts
            ]
            if not candidates:  # pinned through a chain of margins: widen to all of them
                margins = [c for c in cells.constraints if column in c.columns]
                candidates = [
                    r
                    for c in margins
                    for r in (*c.parts, c.total)
                    if r not in suppressed and r in counts
                ]
            if not candidates:  # every row of every margin is already hidden
                break
            # The smallest part first (it costs least to hide); a total only as a last
            # resort.
            totals = {c.total for c in margins}
            pick = min(candidates, key=lambda r: (r in totals, value(r, column), r))
            suppressed.add(pick)
            record(
                cells.name,
                pick,
                f"complementary: would reveal {target}.{column} from the margins",
                "row withheld",
            )
            changed = True
            break
