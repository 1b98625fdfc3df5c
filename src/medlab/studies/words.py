"""A study specification in words, for the people who decide on it: each cohort's
definition and what each analysis would release from a node."""

from typing import Any

from medlab.cohorts.model import parse_definition
from medlab.cohorts.words import describe

RELEASES = {
    "incidence": "persons, outcomes and person-time by stratum, rates with intervals",
    "characterization": "per covariate of the spec's covariate set: counts, means, SDs",
    "comparative": "attrition counts, per adjustment HR with CI, counts and events, "
    "KM curve on the spec's grid, balance (max SMD, and the SMD of each covariate the spec "
    "names), preference-score histogram, diagnostics",
    "feasibility": "the funnel of inclusion rules, eligible persons by year",
    "utilization": "persons per drug and year, treatment pathways",
    "federated_mean": "masked shares of the cohort's count and sums of age at entry "
    "(only their total over the sites can be read)",
    "federated_model": "masked shares of the outcome model's sums each round "
    "(only their total over the sites can be read)",
}


def cohorts_in_words(spec: dict[str, Any]) -> list[str]:
    """Each cohort of a spec (as JSON) and its definition in words, indented under it."""
    lines = []
    for c in spec.get("cohorts", []):
        lines.append(f"cohort {c.get('id')} ({c.get('name')}):")
        try:
            lines += ["  " + line for line in describe(parse_definition(c["definition"]))]
        except Exception:  # shown as it is when not a valid definition
            lines.append("  (not a valid definition)")
    return lines


def releases_in_words(spec: dict[str, Any]) -> list[str]:
    """What each analysis of a spec (as JSON) releases from a node."""
    return [
        f"analysis {a.get('name')} ({a.get('type')}): releases "
        + RELEASES.get(str(a.get("type")), "?")
        for a in spec.get("analyses", [])
    ]
