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
- after adjustment, neither arm differs from its arm before adjustment by fewer than the
  minimum cell count of persons unless by none (matching that leaves out one person would
  give her covariates away by subtracting the two SMDs of each covariate, as a nested step
  removing fewer than the minimum shows its earlier count);

at the precision of an SMD. Under differential privacy, like curves, only with
``exact_models``. The keys are the spec's covariates and populations whatever the data hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medlab.privacy.precision import round_to
from medlab.privacy.release import Balance

if TYPE_CHECKING:
    from medlab.privacy.gate import _Gate


def _near_base(balance: Balance, column: str, k: int) -> bool:
    """Whether an arm of ``column`` differs from the base population's by 1 to ``k - 1``
    persons (a matched arm less one unmatched person: the two SMDs would give her away)."""
    base = balance.populations.get(balance.base or "")
    if base is None or column == balance.base:
        return False
    arms = balance.populations[column]
    return any(0 < len(p.persons ^ base[arm].persons) < k for arm, p in arms.items() if arm in base)


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
        elif _near_base(balance, column, policy.min_cell_count):
            barred[column] = f"fewer than {policy.min_cell_count} persons apart from {balance.base}"
        else:
            barred[column] = None
    digits = gate.digits("smd")
    withheld: dict[tuple[str, str], int] = {}  # (population, rule): covariates withheld
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
                    key = (column, reason)
                    withheld[key] = withheld.get(key, 0) + 1
                row[column] = None
            else:
                row[column] = round_to(value, digits)
        out[covariate] = row
    # One journal entry per population and rule (a domain of the vocabulary is thousands).
    for (column, rule), n in sorted(withheld.items()):
        gate.record(balance.name, f"{column}: {n} covariates", rule, "withheld")
    return out
