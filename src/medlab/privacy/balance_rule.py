"""The release gate's rule for per-covariate balance (:class:`~medlab.privacy.release.Balance`).

A covariate's standardized difference on one population (before adjustment, or after one) is
a function of its mean in each arm, and an arm's size is released next to it: with one arm's
mean known, the SMD of a binary covariate held by one person gives that person away. So a
value leaves only when

- each arm of the population has at least ``min_group_size`` persons and the differencing
  audit flags neither arm (the arms are the populations the release's counts are about);
- for a binary covariate, the persons holding it and those lacking it in each arm pass the
  count rule (CohortMethod's ``exportToCsv`` censors a mean below ``minCellCount / n`` but
  still exports the SMD; medlab withholds the SMD itself);
- no (weighted) mean it compares breaks a dominance rule (one heavy IPTW weight among the
  holders would make the mean that person's);

at the precision of an SMD. Under differential privacy, like curves, only with
``exact_models``. The keys are the spec's covariates and populations whatever the data hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medlab.privacy.precision import round_to
from medlab.privacy.release import Balance

if TYPE_CHECKING:
    from medlab.privacy.gate import _Gate


def released(gate: _Gate, balance: Balance) -> dict[str, dict[str, float | None]]:
    """``balance``'s values as they may leave the node (a withheld one is None); every
    withheld value's rule goes to the journal."""
    from medlab.privacy.gate import count_rule, dominated

    policy = gate.policy
    gate.note(balance.name)
    hidden = gate.dp_on and not policy.differential_privacy.exact_models
    if hidden:
        gate.record(balance.name, "*", "balance not released under DP", "withheld")
    # Per population, why none of its values may leave (the audit is asked once per arm).
    barred: dict[str, str | None] = {}
    for column, arms in balance.populations.items():
        flags = [gate.flagged(balance.name, f"{column}.{arm}", p) for arm, p in arms.items()]
        if any(flags):
            barred[column] = "audit"
        elif len(arms) < 2 or any(len(p) < policy.min_group_size for p in arms.values()):
            barred[column] = f"an arm of fewer than {policy.min_group_size} persons"
        else:
            barred[column] = None
    digits = gate.digits("smd")
    out: dict[str, dict[str, float | None]] = {}
    for covariate, columns in balance.smd.items():
        row: dict[str, float | None] = {}
        for column, value in columns.items():
            counts = balance.counts.get(covariate, {}).get(column, ())
            parts = balance.contributions.get(covariate, {}).get(column, ())
            reason = barred.get(column, "no arms")
            if reason is None:
                reason = next((r for n in counts if (r := count_rule(policy, n))), None)
                reason = reason and "a holding or lacking count: " + reason
            if reason is None:
                n = policy.dominance.n
                reason = next(
                    (r for c in parts if (r := dominated(policy, c.padded(max(n, 2)), c.total))),
                    None,
                )
            if hidden or reason or value is None:
                if reason and reason != "audit" and not hidden:
                    gate.record(balance.name, f"{covariate}@{column}", reason, "withheld")
                row[column] = None
            else:
                row[column] = round_to(value, digits)
        out[covariate] = row
    return out
