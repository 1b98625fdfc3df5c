"""``medlab synth``: one node store per synthetic hospital, plus ``truth.json``.

Deterministic for a seed: every chunk of persons draws from its own generator seeded by
(seed, site, chunk), and chunks have a fixed size, so the same arguments give the same data.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from medlab import __version__
from medlab.cdm import schema
from medlab.cdm.fingerprint import record_snapshot, snapshot_fingerprint
from medlab.cdm.loader import load_omop_csv
from medlab.cdm.store import init_store, open_store, record_load
from medlab.errors import UsageError
from medlab.synth import clinical
from medlab.synth import profiles as P
from medlab.synth.events import ChunkBuilder, IdSequence
from medlab.synth.population import simulate
from medlab.synth.writer import insert, to_arrow

CHUNK_PERSONS = 50_000
ERA_GAP_DAYS = 30
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SiteResult:
    """What was written for one synthetic hospital."""

    name: str
    store: str
    profile: str
    persons: int
    rows: dict[str, int]


def site_names(sites: int) -> list[str]:
    """``hospital_a``, ``hospital_b``, … (then ``hospital_aa``…)."""
    letters = string.ascii_lowercase
    names = []
    for i in range(sites):
        tag = letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26]
        names.append(f"hospital_{tag}")
    return names


def split_patients(total: int, sites: int) -> list[int]:
    """Patients per site, proportional to the profiles' weights (largest remainder)."""
    weights = np.array([P.SITE_PROFILES[i % len(P.SITE_PROFILES)].weight for i in range(sites)])
    share = total * weights / weights.sum()
    counts = np.floor(share).astype(int)
    for i in np.argsort(counts - share)[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _vocabulary_codes(vocab_dir: Path) -> dict[int, str]:
    with (vocab_dir / "concept.csv").open(newline="") as handle:
        return {int(r["concept_id"]): r["concept_code"] for r in csv.DictReader(handle)}


def _health_system(
    con: duckdb.DuckDBPyConnection, site_no: int, name: str, profile: P.SiteProfile, n: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """LOCATION, CARE_SITE, PROVIDER and CDM_SOURCE rows; the ids the events refer to."""
    location_id = site_no
    care_sites = np.array([site_no * 10 + 1, site_no * 10 + 2], dtype=np.int64)
    providers = np.arange(1, max(2, n // 400) + 1, dtype=np.int64) + site_no * 100_000
    con.execute(
        "INSERT INTO main.location (location_id, city, state, location_source_value) "
        "VALUES (?, ?, ?, ?)",
        [location_id, f"{name.replace('_', ' ').title()} City", "SH", name],
    )
    con.executemany(
        "INSERT INTO main.care_site (care_site_id, care_site_name, location_id, "
        "care_site_source_value) VALUES (?, ?, ?, ?)",
        [
            [int(care_sites[0]), f"{name} main campus", location_id, "main"],
            [int(care_sites[1]), f"{name} outpatient clinic", location_id, "clinic"],
        ],
    )
    rng = np.random.default_rng([site_no, 99])
    con.executemany(
        "INSERT INTO main.provider (provider_id, provider_name, care_site_id, year_of_birth, "
        "gender_concept_id, provider_source_value) VALUES (?, ?, ?, ?, ?, ?)",
        [
            [
                int(p),
                f"provider {int(p)}",
                int(care_sites[i % 2]),
                int(rng.integers(1950, 1995)),
                P.GENDER_FEMALE if rng.random() < 0.5 else P.GENDER_MALE,
                f"P{int(p)}",
            ]
            for i, p in enumerate(providers)
        ],
    )
    con.execute(
        "INSERT INTO main.cdm_source VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            f"medlab synthetic {name}",
            name[:25],
            "medlab synth",
            f"Synthetic patients, {profile.description}.",
            None,
            None,
            dt.date(2025, 1, 15),
            dt.date(2025, 1, 15),
            "v5.4",
            0,
            "Eunomia v5.0 18-JAN-19 subset",
        ],
    )
    return care_sites, providers, location_id


def _eras(con: duckdb.DuckDBPyConnection) -> None:
    """DRUG_ERA (by ingredient) and CONDITION_ERA with a 30-day persistence window.

    Exposures closer than 30 days join one era, as in OHDSI's standard era derivation;
    gap_days counts days inside the era not covered by an exposure.
    """

    def islands(source: str) -> str:
        return f"""
        WITH ordered AS (
            SELECT *, max(e) OVER (PARTITION BY person_id, cid ORDER BY s, e
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
            FROM ({source})),
        flagged AS (
            SELECT *, sum(CASE WHEN prev_end IS NULL OR s > prev_end + {ERA_GAP_DAYS}
                          THEN 1 ELSE 0 END)
                   OVER (PARTITION BY person_id, cid ORDER BY s, e ROWS UNBOUNDED PRECEDING)
                   AS era
            FROM ordered)
        SELECT row_number() OVER (ORDER BY person_id, cid, min(s)) AS id, person_id, cid,
               min(s) AS s, max(e) AS e, count(*) AS n,
               greatest(0, date_diff('day', min(s), max(e)) + 1
                        - sum(date_diff('day', s, e) + 1)) AS gap
        FROM flagged GROUP BY person_id, cid, era"""

    con.execute(f"""INSERT INTO main.drug_era
        SELECT id, person_id, cid, s, e, n, gap FROM ({
        islands('''
            SELECT d.person_id, a.ancestor_concept_id AS cid, d.drug_exposure_start_date AS s,
                   d.drug_exposure_end_date AS e
            FROM main.drug_exposure d
            JOIN main.concept_ancestor a ON a.descendant_concept_id = d.drug_concept_id
            JOIN main.concept c ON c.concept_id = a.ancestor_concept_id
             AND c.concept_class_id = 'Ingredient' ''')
    })""")
    con.execute(f"""INSERT INTO main.condition_era
        SELECT id, person_id, cid, s, e, n FROM ({
        islands('''
            SELECT person_id, condition_concept_id AS cid, condition_start_date AS s,
                   coalesce(condition_end_date, condition_start_date) AS e
            FROM main.condition_occurrence''')
    })""")


def _write_chunk(
    con: duckdb.DuckDBPyConnection, builder: ChunkBuilder, location_id: int
) -> dict[str, int]:
    """Simulate the chunk's records and append them in one transaction."""
    builder.persons(location_id)
    builder.collect_events()
    visits = builder.visits()
    acute = builder.conditions(visits)
    clinical.drugs(builder, visits, acute)
    lab_visits = clinical.measurements(builder, visits)
    clinical.procedures_devices_observations(builder, visits, acute, lab_visits)
    written: dict[str, int] = {}
    con.execute("BEGIN TRANSACTION")
    for table_name, parts in builder.tables.items():
        table = schema.table(table_name)
        written[table_name] = insert(con, table, to_arrow(table, parts))
    con.execute("COMMIT")
    return written


def synthesize_site(
    out: Path,
    site_no: int,
    name: str,
    persons: int,
    seed: int,
    vocab_dir: Path,
    progress: Progress | None = None,
) -> SiteResult:
    """Write one hospital's node store; returns its row counts.

    Chunks are committed one by one so memory stays bounded at any size; if anything fails,
    the half-written store is removed, so a store exists only when it is complete.
    """
    profile = P.SITE_PROFILES[(site_no - 1) % len(P.SITE_PROFILES)]
    store = out / f"{name}.duckdb"
    init_store(store)
    try:
        load_omop_csv(store, vocab_dir, log_event=False)  # the synthetic site logs nothing
        codes = _vocabulary_codes(vocab_dir)
        rows: dict[str, int] = {}
        with open_store(store) as con:
            care_sites, providers, location_id = _health_system(
                con, site_no, name, profile, persons
            )
            ids = IdSequence()
            chunks = max(1, -(-persons // CHUNK_PERSONS))
            for chunk in range(chunks):
                if progress:
                    progress(f"{name} chunk {chunk + 1}/{chunks}", chunk, chunks)
                n = min(CHUNK_PERSONS, persons - chunk * CHUNK_PERSONS)
                rng = np.random.default_rng([seed, site_no, chunk])
                pop = simulate(rng, n, profile)
                person_ids = site_no * 10_000_000 + chunk * CHUNK_PERSONS + np.arange(1, n + 1)
                builder = ChunkBuilder(
                    rng, pop, person_ids, profile, ids, codes, care_sites, providers
                )
                for table_name, n_rows in _write_chunk(con, builder, location_id).items():
                    rows[table_name] = rows.get(table_name, 0) + n_rows
            if progress:
                progress(f"{name} eras", chunks, chunks)
            con.execute("BEGIN TRANSACTION")
            _eras(con)
            record_load(
                con,
                source=f"medlab synth seed={seed} site={name} persons={persons}",
                source_cdm_version="5.4",
                files=[{"table": t, "rows": r} for t, r in sorted(rows.items())],
                rows=sum(rows.values()),
                warnings=[],
            )
            record_snapshot(con, snapshot_fingerprint(con)[0])
            con.execute("COMMIT")
    except BaseException:
        store.unlink(missing_ok=True)
        Path(f"{store}.wal").unlink(missing_ok=True)
        raise
    return SiteResult(name, store.name, profile.kind, persons, rows)


def truth_document(seed: int, results: list[SiteResult]) -> dict[str, object]:
    """Everything planted, in the form analyses are checked against."""
    effects = []
    for e in P.EFFECTS:
        target, comparator = P.DRUG_RECORDED[e.target][0], P.DRUG_RECORDED[e.comparator][0]
        population = P.CONDITIONS[P.CONDITION_INDEX[e.population]]
        confounder = P.CONDITIONS[P.CONDITION_INDEX[e.confounder]]
        effects.append(
            {
                "id": e.id,
                "kind": "hazard_ratio",
                "true_hazard_ratio": e.hazard_ratio,
                "target": {"name": e.target, "ingredient_concept_id": target},
                "comparator": {"name": e.comparator, "ingredient_concept_id": comparator},
                "outcome": {"name": e.outcome_name, "concept_id": e.outcome_concept_id},
                "population": {"name": population.name, "concept_id": population.concept_id},
                "design": (
                    "new users of target or comparator (first exposure, within "
                    f"{e.index_delay_days} days after the first {population.name} diagnosis); "
                    "time at risk from index + 1 day to end of observation; first outcome. "
                    "Treatment persists through follow-up. Persons with the outcome before "
                    "index may be excluded without bias."
                ),
                "outcome_model": {
                    "form": "h(t) = h0[site] * HR^target * age_hr^((age - ref_age)/10) "
                    "* confounder_hr^confounder",
                    "age_hr_per_decade": e.outcome_age_hr_per_decade,
                    "reference_age": e.reference_age,
                    "confounder": {
                        "name": confounder.name,
                        "concept_id": confounder.concept_id,
                        "hazard_ratio": e.outcome_confounder_hr,
                        "measured": "diagnosis on or before index",
                    },
                    "baseline_hazard_per_year": {
                        p.kind: (
                            p.gi_bleed_baseline
                            if e.outcome_concept_id == P.GI_BLEED
                            else p.mi_baseline
                        )
                        for p in P.SITE_PROFILES
                    },
                },
                "treatment_model": {
                    "form": "logit P(comparator) = site_preference + age_lo * (age - ref_age)/10 "
                    "+ confounder_lo * confounder",
                    "age_log_odds_per_decade": e.comparator_age_log_odds_per_decade,
                    "confounder_log_odds": e.comparator_confounder_log_odds,
                    "site_preference": {
                        p.kind: (
                            p.warfarin_preference
                            if e.comparator == "warfarin"
                            else -p.lisinopril_preference
                        )
                        for p in P.SITE_PROFILES
                    },
                },
                "negative_controls": [
                    {
                        "concept_id": c.concept_id,
                        "name": c.name,
                        "true_hazard_ratio": 1.0,
                        "outcome_model": {
                            "form": "h(t) = h0 * age_hr^((age - ref_age)/10) "
                            "* confounder_hr^confounder (the same at every site; no "
                            "occurrence before index)",
                            "baseline_hazard_per_year": c.baseline_hazard_per_year,
                            "age_hr_per_decade": c.age_hr_per_decade,
                            "confounder_hr": c.confounder_hr,
                        },
                    }
                    for c in e.negative_controls
                ],
                "expected_crude_bias": (
                    "the comparator group is older and has more "
                    f"{confounder.name.lower()}, both of which raise the outcome hazard, so the "
                    "crude target-vs-comparator hazard ratio is below the truth"
                    if (e.comparator_confounder_log_odds > 0)
                    else f"the target group has more {confounder.name.lower()}, which raises the "
                    "outcome hazard, so the crude hazard ratio is above the truth"
                ),
            }
        )
    effects.append(
        {
            "id": "appendicitis_incidence",
            "kind": "incidence_rate",
            "outcome": {"name": "Appendicitis", "concept_id": P.APPENDICITIS},
            "rate_per_1000_person_years": P.APPENDICITIS_RATE_PER_1000_PY,
            "design": "all persons, all observed time (observation period), first occurrence; "
            "the hazard is constant and the same at every site",
        }
    )
    return {
        "generator": f"medlab synth {__version__}",
        "seed": seed,
        "calendar": {"observation_from": "2008-01-01", "observation_to": "2024-12-31"},
        "sites": [
            {
                **asdict(r),
                "description": next(p.description for p in P.SITE_PROFILES if p.kind == r.profile),
                "mean_age_at_entry": next(
                    p.mean_age for p in P.SITE_PROFILES if p.kind == r.profile
                ),
                "prevalence_shift_log_odds": next(
                    p.prevalence_shift for p in P.SITE_PROFILES if p.kind == r.profile
                ),
            }
            for r in results
        ],
        "effects": effects,
        "conditions": [
            {"key": c.key, "concept_id": c.concept_id, "name": c.name, "raised_by": c.parents}
            for c in P.CONDITIONS
        ],
    }


def records(truth: dict[str, object], key: str) -> list[dict[str, Any]]:
    """The list of records under ``key`` of a truth document (sites or effects)."""
    value = truth[key]
    assert isinstance(value, list)
    return value


def synthesize(
    out: Path, *, sites: int, patients: int, seed: int, progress: Progress | None = None
) -> dict[str, object]:
    """Write ``sites`` node stores and ``truth.json`` into ``out``; returns the truth."""
    if sites < 1:
        raise UsageError("--sites must be at least 1")
    if patients < sites:
        raise UsageError("--patients must be at least the number of sites")
    names = site_names(sites)
    out.mkdir(parents=True, exist_ok=True)
    clashes = [n for n in [*(f"{s}.duckdb" for s in names), "truth.json"] if (out / n).exists()]
    if clashes:
        raise UsageError(
            f"{out}: already holds {', '.join(clashes)}; synthetic stores are never overwritten",
            hint="choose an empty directory",
        )
    results = []
    with resources.as_file(resources.files("medlab.synth").joinpath("vocabulary")) as vocab:
        for i, (name, n) in enumerate(zip(names, split_patients(patients, sites)), start=1):
            results.append(synthesize_site(out, i, name, n, seed, vocab, progress))
    truth = truth_document(seed, results)
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth
