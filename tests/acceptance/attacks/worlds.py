"""Two worlds that differ in one secret about one person, and what an attacker sees of them.

Every attack here runs twice: in a world where the secret holds and in one where it does not.
The attacker is a researcher with nothing but what a study run or a DP query hands back:
``results.json``, ``disclosure.json``, the CSV tables, the payloads in ``evidence.json``, and
the refusals. The attack fails when that view is the same in both worlds (the release was
withheld, or protected so that nothing of the secret shows), or when it does not let the
secret be computed.

The world: 160 persons with condition 100 (an indication), each starting drug 200 or drug 210
in 2011; about a third have condition 102 (the outcome) in the year after. The target person
(id 999) has condition 100, drug 210 and a marker drug 777 nobody else has; the secret is
whether she has the outcome (and observation 500).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

from medlab.studies.run import run_study
from medlab.studies.spec import StudySpec
from tests.spec.world import World

TARGET = 999
MARKER = 777  # only the target has it


def build(
    tmp: Path, secret: bool, *, persons: int = 160, prior_condition: int | None = None
) -> Path:
    """A node store of the world, with the secret true or false (``prior_condition``: when
    the secret holds she also has this diagnosis, in 2010, before any index date)."""
    rng = random.Random(20261201)
    w = World()
    for pid in range(1, persons + 1):
        w.person(pid, yob=1935 + pid % 45, gender=8507 if pid % 3 else 8532)
        w.condition(pid, 100, "2010-01-01")
        start = dt.date(2011, 1, 1) + dt.timedelta(days=pid % 90)
        w.drug(pid, 200 if pid % 2 else 210, start.isoformat(), days_supply=365)
        if rng.random() < 0.35:
            event = start + dt.timedelta(days=rng.randrange(20, 300))
            w.condition(pid, 102, event.isoformat())
        if rng.random() < 0.4:
            w.add(
                "observation",
                person_id=pid,
                observation_concept_id=500,
                observation_date=dt.date(2009, 6, 1),
            )
    w.person(TARGET, yob=1950, gender=8532)
    w.condition(TARGET, 100, "2010-01-01")
    w.drug(TARGET, 210, "2011-02-01", days_supply=365)
    w.drug(TARGET, MARKER, "2011-02-01")
    if secret and prior_condition is not None:
        w.condition(TARGET, prior_condition, "2010-06-01")
    if secret:
        w.condition(TARGET, 102, "2011-05-01")
        w.add(
            "observation",
            person_id=TARGET,
            observation_concept_id=500,
            observation_date=dt.date(2009, 6, 1),
        )
    directory = tmp / ("world-secret" if secret else "world-plain")
    directory.mkdir(parents=True, exist_ok=True)
    return w.store(directory)


def concept_set(cs_id: int, concept: int) -> dict[str, Any]:
    return {"id": cs_id, "items": [{"concept_id": concept}]}


SETS = [
    concept_set(0, 100),
    concept_set(1, 200),
    concept_set(2, 210),
    concept_set(3, 102),
    concept_set(4, MARKER),
]
CONDITION = {"domain": "condition_occurrence", "codeset_id": 0}
DRUG_200 = {"domain": "drug_exposure", "codeset_id": 1}
DRUG_210 = {"domain": "drug_exposure", "codeset_id": 2}
OUTCOME = {"domain": "condition_occurrence", "codeset_id": 3}
MARKED = {"domain": "drug_exposure", "codeset_id": 4}
WITHOUT_MARKER = {
    "name": "not the marked person",
    "expression": {
        "criteria": [
            {
                "criterion": MARKED,
                "start_window": {},
                "occurrence": {"type": "exactly", "count": 0},
            }
        ]
    },
}


def cohort(*criteria: dict[str, Any], exclude_marked: bool = False, **extra: Any) -> dict:
    """A cohort entering on any of ``criteria`` (first entry per person)."""
    definition: dict[str, Any] = {
        "concept_sets": SETS,
        "primary": {"criteria": list(criteria), "limit": "first"},
        **extra,
    }
    if exclude_marked:
        definition["inclusion_rules"] = [WITHOUT_MARKER]
    return definition


def study(name: str, cohorts: dict[int, dict], analyses: list[dict]) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "cohorts": [
                {"id": i, "name": f"cohort {i}", "definition": d} for i, d in cohorts.items()
            ],
            "analyses": analyses,
        }
    )


def run(spec: StudySpec, store: Path, out: Path) -> dict[str, Any]:
    """Run the study on the node; the attacker's view of what came back."""
    run_study(spec, [store], out, hub_dir=out.parent / "hub")
    return view(out)


_NOT_SEEN_AS_DATA = {"fingerprint", "digest", "spec_hash", "result_hash", "signature"}


def _strip(value: Any) -> Any:
    """The view without what differs between any two worlds whatever the secret: snapshot
    fingerprints and the hashes and signatures over them."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _NOT_SEEN_AS_DATA}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def view(out: Path) -> dict[str, Any]:
    """Everything a researcher receives from a study run, in one document."""
    evidence = json.loads((out / "evidence.json").read_text())
    return _strip(
        {
            "results": json.loads((out / "results.json").read_text()),
            "disclosure": json.loads((out / "disclosure.json").read_text()),
            "payloads": [r["payload"] for r in evidence["releases"]],
            "tables": {p.name: p.read_text() for p in sorted(out.glob("*.csv"))},
        }
    )


def keys(value: Any, path: str = "$") -> set[str]:
    """Every key path of a document (list positions included): its shape."""
    found = {path}
    if isinstance(value, dict):
        for k, v in value.items():
            found |= keys(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found |= keys(v, f"{path}[{i}]")
    return found
