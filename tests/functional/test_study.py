"""``medlab study validate | run`` end to end, on Eunomia and across synthetic nodes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from medlab.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/studies/eunomia_celecoxib_diclofenac.yaml"
ESTIMATE_KEYS = {
    "adjustment",
    "hr",
    "ci_low",
    "ci_high",
    "p",
    "target_persons",
    "comparator_persons",
    "target_events",
    "comparator_events",
}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_reports_problems_with_their_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "study", "validate", str(EXAMPLE))
    # 5 cohorts of the spec and 15 negative controls given as concepts, made into cohorts.
    assert code == 0 and "20 cohorts, 5 analyses" in out and "sha256:" in out
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["analyses"][0]["settings"]["population"]["washout_period"] = -1
    spec["analyses"][0]["settings"]["caliper"] = "wide"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    code, _, err = run(capsys, "study", "validate", str(bad))
    assert code == 6
    assert "$.analyses[0].settings.population.washout_period" in err
    assert "$.analyses[0].settings.caliper" in err  # every field problem at once
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["analyses"][1]["target"] = 9
    bad.write_text(yaml.safe_dump(spec))
    code, _, err = run(capsys, "study", "validate", str(bad))
    assert code == 6 and "refers to cohort 9" in err


def test_eunomia_study_runs_end_to_end(
    capsys: pytest.CaptureFixture[str], eunomia_store: Path, writable_copy, tmp_path: Path
) -> None:
    store = writable_copy(eunomia_store)
    out = tmp_path / "out"
    code, printed, _ = run(
        capsys, "study", "run", str(EXAMPLE), "--node", str(store), "--out", str(out), "--json"
    )
    assert code == 0
    results = json.loads(printed)
    assert results["spec_hash"].startswith("sha256:") and results["medlab_version"] == "0.1.0"
    assert results["nodes"][0]["fingerprint"].startswith("sha256:")
    _assert_released_by_default(results, out)
    comparative = results["analyses"][0]
    assert [e["adjustment"] for e in comparative["estimates"]] == [
        "none",
        "matching",
        "stratification",
        "iptw",
    ]
    for estimate in comparative["estimates"]:
        assert set(estimate) >= ESTIMATE_KEYS
        assert 0 < estimate["ci_low"] < estimate["hr"] < estimate["ci_high"]
    site = comparative["per_site"][0]
    # CohortMethod's attrition labels, in its order, with the reference settings.
    assert [s["step"] for s in site["attrition"]] == [
        "Original cohorts",
        "First exp. only & removed subs in both cohorts & 183 days of obs. prior",
        "No prior outcome",
        "Censoring at start of new time-at-risk",
        "Have at least 1 days at risk",
    ]
    for estimate in site["estimates"]:
        assert estimate["diagnostics"] in ("pass", "fail")
        assert set(estimate["checks"]) == {
            "max_abs_smd",
            "max_abs_smd_table1",
            "equipoise",
            "mdrr",
            "generalizability",
            "ease",
        }
    # Fifteen controls, each with every adjustment (Eunomia's 30-day windows hold too few
    # events for the gate to release them, so calibration is not evaluated there).
    assert len(site["controls"]) == 15 * 4
    assert "ease" in site["estimates"][0]["not_evaluated"]
    assert "calibrated_p" not in site["estimates"][0]
    for name in (
        "results.json",
        "report.html",
        "celecoxib_vs_diclofenac_gi_bleed_estimates.csv",
        "gi_bleed_in_celecoxib_users_rates.csv",
    ):
        assert (out / name).exists(), name
    with (out / "celecoxib_vs_diclofenac_gi_bleed_estimates.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["adjustment"] for r in rows] == ["none", "matching", "stratification", "iptw"]
    assert {"diagnostics", "max_abs_smd_pass", "ease_value", "calibrated_hr"} <= set(rows[0])
    assert not any(v.startswith("{") for r in rows for v in r.values())  # flat columns only
    assert list(out.glob("*_km_matching.png")) and list(out.glob("*_balance.png"))
    assert list(out.glob("*_preference.png")) and list(out.glob("*_attrition.png"))
    assert (out / "analgesics_after_osteoarthritis_sunburst.png").exists()
    report = (out / "report.html").read_text()
    assert "celecoxib_vs_diclofenac_gi_bleed" in report and "no prior GI bleed" in report
    feasible = next(a for a in results["analyses"] if a["type"] == "feasibility")
    funnel = [step["persons"] for step in feasible["funnel"]]
    assert funnel == sorted(funnel, reverse=True) and funnel[-1] == feasible["eligible"] > 0
    used = next(a for a in results["analyses"] if a["type"] == "utilization")
    shares = [row["share"] for row in used["by_year"] if row["share"] is not None]
    assert used["pathways"] and shares and all(0 <= share <= 1 for share in shares)
    first = used["pathways"][0]
    assert len(first["names"]) == len(first["path"]) and "celecoxib" in str(used["pathways"])
    assert "charlson_index" in {
        c["covariate_id"]
        for a in results["analyses"]
        if a["type"] == "characterization"
        for cohort in a["cohorts"]
        for c in cohort["covariates"]
    }


def test_a_study_across_three_nodes_pools_the_estimates(
    capsys: pytest.CaptureFixture[str], synth_study: Path, tmp_path: Path
) -> None:
    spec = {
        "name": "apixaban_vs_warfarin",
        "cohorts": [
            {
                "id": 1,
                "name": "apixaban",
                "definition": {
                    "concept_sets": [
                        {"id": 0, "items": [{"concept_id": 43013024, "include_descendants": True}]}
                    ],
                    "primary": {
                        "criteria": [
                            {"domain": "drug_exposure", "codeset_id": 0, "first_occurrence": True}
                        ]
                    },
                },
            },
            {
                "id": 2,
                "name": "warfarin",
                "definition": {
                    "concept_sets": [
                        {"id": 0, "items": [{"concept_id": 1310149, "include_descendants": True}]}
                    ],
                    "primary": {
                        "criteria": [
                            {"domain": "drug_exposure", "codeset_id": 0, "first_occurrence": True}
                        ]
                    },
                },
            },
            {
                "id": 3,
                "name": "GI bleed",
                "definition": {
                    "concept_sets": [{"id": 0, "items": [{"concept_id": 192671}]}],
                    "primary": {"criteria": [{"domain": "condition_occurrence", "codeset_id": 0}]},
                    "qualified_limit": "all",
                    "end_strategy": {"type": "date_offset", "offset": 1},
                },
            },
        ],
        "analyses": [
            {
                "type": "comparative",
                "name": "gi_bleed",
                "target": 1,
                "comparator": 2,
                "outcome": 3,
                "settings": {
                    "population": {"first_exposure_only": True, "risk_window_start": 1},
                    "exclude_ingredients": [43013024, 1310149],
                    "adjustments": ["none", "stratification"],
                },
            }
        ],
    }
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec))
    nodes = []
    for name in ("hospital_a", "hospital_b", "hospital_c"):
        shutil.copy(synth_study / f"{name}.duckdb", tmp_path / f"{name}.duckdb")
        nodes += ["--node", str(tmp_path / f"{name}.duckdb")]
    code, printed, _ = run(
        capsys, "study", "run", str(path), *nodes, "--out", str(tmp_path / "out")
    )
    assert code == 0 and "gi_bleed: hazard ratios" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    analysis = results["analyses"][0]
    assert len(analysis["per_site"]) == 3 and len(results["nodes"]) == 3
    pooled = {e["adjustment"]: e for e in analysis["estimates"]}
    assert pooled["stratification"]["ci_low"] <= 0.6 <= pooled["stratification"]["ci_high"]
    assert pooled["none"]["ci_high"] < 0.6
    assert pooled["none"]["target_persons"] == sum(
        s["estimates"][0]["target_persons"] for s in analysis["per_site"]
    )


COUNT_KEYS = {
    "persons",
    "entries",
    "outcomes",
    "count",
    "n",
    "at_risk",
    "eligible",
    "independent_persons",
    "cohort_persons",
    *(k for k in ESTIMATE_KEYS if k.endswith(("_persons", "_events"))),
}


def _small_counts(value: object, path: str, minimum: int) -> list[str]:
    """Paths of count fields holding 1 .. minimum - 1."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if (
                k in COUNT_KEYS
                and isinstance(v, int | float)
                and not isinstance(v, bool)
                and 1 <= v < minimum
            ):
                found.append(f"{path}.{k}={v}")
            found += _small_counts(v, f"{path}.{k}", minimum)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _small_counts(v, f"{path}[{i}]", minimum)
    return found


def _assert_released_by_default(results: dict, out: Path) -> None:
    """The gate's marks on a default-policy run: a disclosure report, no small count in the
    JSON or in any CSV file."""
    disclosure = results["disclosure"]
    (policy,) = disclosure["policies"].values()
    assert policy["min_cell_count"] == 10 and policy["rounding"] == "midpoint6"
    assert disclosure["withheld"] > 0 and disclosure["shown"] > 0  # Eunomia has small strata
    assert {r["analysis"] for r in disclosure["releases"]} == {
        "comparative",
        "incidence",
        "characterization",
        "feasibility",
        "utilization",
    }
    assert results["nodes"][0]["policy"]["digest"] == policy["digest"]
    assert _small_counts(results, "$", 10) == []
    # The CSV files carry no small count either: every count column, every row.
    for csv_file in out.glob("*.csv"):
        for row in csv.DictReader(csv_file.read_text().splitlines()):
            for k, v in row.items():
                if k in COUNT_KEYS and v not in ("", "None"):
                    assert not 1 <= float(v) < 10, (csv_file.name, k, v)
    assert json.loads((out / "disclosure.json").read_text()) == disclosure
    assert "Disclosure control" in (out / "report.html").read_text()


def test_study_run_takes_the_stewards_policy(
    capsys: pytest.CaptureFixture[str], eunomia_store: Path, writable_copy, tmp_path: Path
) -> None:
    store = writable_copy(eunomia_store)
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_cell_count: -3\nrounding: sometimes\n")
    args = ["study", "run", str(EXAMPLE), "--node", str(store), "--out", str(tmp_path / "o")]
    code, _, err = run(capsys, *args, "--policy", str(bad))
    assert code == 7 and "$.min_cell_count" in err and "$.rounding" in err
    assert not (tmp_path / "o").exists()  # refused before anything ran
    # The run may tighten the node's policy, never loosen it (nearest-5 is finer than
    # midpoint-6): the steward sets the node's own.
    looser = tmp_path / "looser.yaml"
    looser.write_text("rounding: nearest5\n")
    code, _, err = run(capsys, *args, "--policy", str(looser))
    assert code == 7 and "$.rounding" in err and not (tmp_path / "o").exists()
    steward = tmp_path / "steward.yaml"
    steward.write_text("version: steward-2\nrounding: nearest5\n")
    assert run(capsys, "node", "policy", "set", str(store), str(steward))[0] == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: steward-2-strict\nmin_cell_count: 20\n"
        "allowed_analyses: [comparative, characterization]\n"
    )
    code, printed, _ = run(capsys, *args, "--policy", str(policy), "--json")
    assert code == 0
    results = json.loads(printed)
    (used,) = results["disclosure"]["policies"].values()
    assert used["version"] == "steward-2-strict" and used["min_cell_count"] == 20
    assert _small_counts(results, "$", 20) == []
    refused = {a["type"] for a in results["analyses"] if a.get("refused")}
    assert refused == {"incidence", "feasibility", "utilization"}
    counts = [e["target_persons"] for e in results["analyses"][0]["estimates"]]
    assert all(c % 5 == 0 for c in counts)  # the node's nearest-5 rounding
