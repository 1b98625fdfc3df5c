"""A release's tables summed across sites on secure aggregation, for nodes whose policy
releases no site-level numbers (``federation.release_site_level: false``).

A release whose elements are tables of counts and sums (:class:`Cells`, :class:`Sums`: an
incidence or a characterization release) splits into its **skeleton** — element names, row
keys, columns, margins, complements, sensitivities and labels, all fixed by the spec and the
vocabulary, never by the data — and its **numbers**, one vector in the skeleton's order. Every
site's skeleton is the same, so the hub adds the vectors (securely), puts the sums back into
the skeleton (:func:`rebuild`) and passes the pooled release through the gate under the
strictest contributing node's rules. What the pooled release cannot hold: the persons behind
each row (the differencing audit runs at each node, over its own populations) and each sum's
largest contributions (so the dominance rules, which need them, are not applied to a pooled
sum; every contributor's value is bounded by the sum's ``value_range``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from medlab.privacy.release import Cells, Constraint, Population, Release, Sums

Item = tuple[str, str]  # (element, row): a table's row, or (sum, "totals")


class NotATable(ValueError):
    """The release holds an element secure sums cannot carry."""


def skeleton(release: Release) -> dict[str, Any]:
    """The release without its numbers (JSON)."""
    elements: list[dict[str, Any]] = []
    for e in release.elements:
        if isinstance(e, Cells):
            elements.append(
                {
                    "type": "cells",
                    "name": e.name,
                    "rows": {k: sorted(v) for k, v in e.counts.items()},
                    "extras": {k: sorted(v) for k, v in e.extras.items()},
                    "constraints": [
                        [c.total, list(c.parts), list(c.columns)] for c in e.constraints
                    ],
                    "complements": dict(e.complements),
                    "sensitivity": dict(e.sensitivity),
                }
            )
        elif isinstance(e, Sums):
            elements.append(
                {
                    "type": "sums",
                    "name": e.name,
                    "totals": sorted(e.totals),
                    "integer": e.integer,
                    "bounds": dict(e.bounds),
                    "value_range": list(e.value_range) if e.value_range else None,
                }
            )
        else:
            raise NotATable(f"{release.analysis}: {e.name} is not a table of counts or sums")
    return {"analysis": release.analysis, "elements": elements, "labels": release.labels}


def digest(shape: dict[str, Any]) -> str:
    """A skeleton's digest (every site's must agree)."""
    text = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def numbers(release: Release) -> list[float]:
    """The release's numbers in its skeleton's order: per table row its counts then its
    extras; per sum its contributors, its totals and the sum of absolute contributions."""
    out: list[float] = []
    for e in release.elements:
        if isinstance(e, Cells):
            for key, row in e.counts.items():
                out += [float(row[c]) for c in sorted(row)]
                out += [float(e.extras.get(key, {})[c]) for c in sorted(e.extras.get(key, {}))]
        elif isinstance(e, Sums):
            out += [float(e.n), *(float(e.totals[t]) for t in sorted(e.totals)), e.magnitude]
        else:
            raise NotATable(f"{release.analysis}: {e.name} is not a table of counts or sums")
    return out


def items(release: Release) -> list[tuple[Item, Population]]:
    """Every row and sum of the release with the persons behind it (for the node's audit)."""
    found: list[tuple[Item, Population]] = []
    for e in release.elements:
        if isinstance(e, Cells):
            found += [((e.name, row), p) for row, p in e.populations.items()]
        elif isinstance(e, Sums) and e.population is not None:
            found.append(((e.name, "totals"), e.population))
    return found


def without(release: Release, withheld: set[Item]) -> Release:
    """The release with the rows and sums in ``withheld`` (those its node's audit flags)
    counted as nobody's: the node contributes nothing of them, and the hub withholds them."""
    elements: list[Any] = []
    for e in release.elements:
        if isinstance(e, Cells):
            counts = {
                k: {c: 0 for c in v} if (e.name, k) in withheld else v for k, v in e.counts.items()
            }
            extras = {
                k: {c: 0.0 for c in v} if (e.name, k) in withheld else v
                for k, v in e.extras.items()
            }
            elements.append(replace(e, counts=counts, extras=extras))
        elif isinstance(e, Sums) and (e.name, "totals") in withheld:
            elements.append(
                replace(e, n=0, totals={t: 0.0 for t in e.totals}, magnitude=0.0, largest=())
            )
        else:
            elements.append(e)
    return replace(release, elements=tuple(elements))


class Withheld:
    """The hub's stand-in for a node's differencing audit: the rows some contributing node's
    audit flagged are flagged (so the gate withholds them, with whatever else that takes)."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys

    def flagged(self, population: Population | None) -> bool:
        """Whether ``population`` stands for a withheld row."""
        return population is not None and population.key in self.keys


def _marker(element: str, row: str) -> Population:
    return Population(f"withheld:{element}:{row}", frozenset())


def size(shape: dict[str, Any]) -> int:
    """How many numbers a release of this skeleton has."""
    total = 0
    for e in shape["elements"]:
        if e["type"] == "cells":
            total += sum(len(v) for v in e["rows"].values())
            total += sum(len(v) for v in e["extras"].values())
        else:
            total += 2 + len(e["totals"])
    return total


def rebuild(
    shape: dict[str, Any], values: list[float], site: str, withheld: set[Item] | None = None
) -> Release:
    """The release of ``shape`` holding ``values`` (summed numbers), as site ``site``; the
    rows and sums in ``withheld`` carry a population :class:`Withheld` flags."""
    withheld = withheld or set()
    if len(values) != size(shape):
        raise ValueError(f"{len(values)} numbers for a release of {size(shape)}")
    it = iter(values)
    elements: list[Cells | Sums] = []
    for e in shape["elements"]:
        if e["type"] == "cells":
            counts: dict[str, dict[str, int]] = {}
            extras: dict[str, dict[str, float]] = {}
            for key, columns in e["rows"].items():
                counts[key] = {c: round(next(it)) for c in columns}
                if key in e["extras"]:
                    extras[key] = {c: next(it) for c in e["extras"][key]}
            constraints = tuple(
                Constraint(total, tuple(parts), tuple(columns))
                for total, parts, columns in e["constraints"]
            )
            elements.append(
                Cells(
                    e["name"],
                    counts,
                    extras,
                    constraints,
                    dict(e["complements"]),
                    {r: _marker(e["name"], r) for r in counts if (e["name"], r) in withheld},
                    sensitivity=dict(e["sensitivity"]),
                )
            )
        else:
            n = round(next(it))
            totals = {t: next(it) for t in e["totals"]}
            magnitude = next(it)
            elements.append(
                Sums(
                    e["name"],
                    n,
                    totals,
                    magnitude=magnitude,
                    integer=e["integer"],
                    population=_marker(e["name"], "totals")
                    if (e["name"], "totals") in withheld
                    else None,
                    bounds=dict(e["bounds"]),
                    value_range=tuple(e["value_range"]) if e["value_range"] else None,  # type: ignore[arg-type]
                )
            )
    return Release(shape["analysis"], site, tuple(elements), dict(shape["labels"]))
