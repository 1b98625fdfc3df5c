"""Trial feasibility across the synthetic hospitals."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import SCOPE, released

from medlab.analyses import feasibility
from medlab.cohorts.model import example


def test_funnel_years_and_ranking(synth_small: Path, tmp_path: Path) -> None:
    eligibility = example("warfarin_af_new_users")
    sites = []
    for name in ("hospital_a", "hospital_b", "hospital_c"):
        store = tmp_path / f"{name}.duckdb"
        shutil.copy(synth_small / f"{name}.duckdb", store)
        sites.append(feasibility.local(store, name, eligibility, 21))
    total = feasibility.combine([released(feasibility.to_release(s, SCOPE, 21)) for s in sites])
    assert [s.criterion for s in total.funnel] == [
        "qualifying events",
        "AF in the 30 days up to index",
        "no prior GI bleed",
    ]
    persons = [s.persons for s in total.funnel]
    assert persons == sorted(persons, reverse=True) and persons[-1] == total.eligible > 0
    for i, step in enumerate(total.funnel):
        assert step.persons == sum(s.funnel[i].persons for s in sites)
        assert step.independent_persons >= step.persons
    assert sum(n or 0 for n in total.by_year.values()) == total.eligible
    assert list(total.by_year) == ["before", *map(str, range(1950, 2031)), "after"]
    assert [s.eligible for s in total.sites] == sorted((s.eligible for s in sites), reverse=True)


def test_counts_every_site_suppressed_stay_unknown_not_zero() -> None:
    from medlab.privacy.policy import ReleasePolicy

    sites = [
        feasibility.SiteFeasibility(
            name,
            [
                feasibility.FunnelStep("qualifying events", 400, 400),
                feasibility.FunnelStep("rare criterion", 4, 4),
            ],
            4,
            {"2019": 4},
            [frozenset(range(400)), frozenset(range(4))],
            [frozenset(range(400)), frozenset(range(4))],
            {"2019": frozenset(range(4))},
            frozenset(range(4)),
        )
        for name in ("a", "b")
    ]
    total = feasibility.combine(
        [released(feasibility.to_release(s, SCOPE, 21), ReleasePolicy()) for s in sites]
    )
    assert total.funnel[0].persons == 2 * ReleasePolicy().round_count(400)
    assert total.funnel[1].persons is None and total.eligible is None
    assert total.by_year == {"2019": None}
