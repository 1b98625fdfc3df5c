"""``medlab node budget``, ``query`` and ``export``: budgets, DP queries, record export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medlab import inputs
from medlab.cli.output import emit_json, stdout
from medlab.cohorts.model import load_definition
from medlab.errors import DefinitionError, UsageError
from medlab.privacy import budget as budgets
from medlab.privacy import node_policy
from medlab.privacy.dp import epsilon_of_rho
from medlab.privacy.export import export_persons
from medlab.privacy.policy import load_policy, validate
from medlab.privacy.query import DPQuery, answer

budget_app = typer.Typer(help="Privacy budgets per project: grant, show.", no_args_is_help=True)
policy_app = typer.Typer(
    help="The node's release policy, set by its steward: set, show.", no_args_is_help=True
)

StoreArg = Annotated[Path, typer.Argument(help="Path of the node store (a DuckDB file).")]
ProjectOpt = Annotated[str, typer.Option("--project", help="The research project.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def _print_budget(b: budgets.Budget, as_json: bool, delta: float = 1e-7) -> None:
    rho_as_epsilon = epsilon_of_rho(b.rho_spent, delta)
    if as_json:
        emit_json(
            {
                "project": b.project,
                "epsilon_granted": b.epsilon_granted,
                "epsilon_spent": b.epsilon_spent,
                "epsilon_remaining": b.epsilon_remaining,
                "rho_granted": b.rho_granted,
                "rho_spent": b.rho_spent,
                "rho_remaining": b.rho_remaining,
                "rho_spent_as_approximate_dp": {"delta": delta, "epsilon": rho_as_epsilon},
            }
        )
        return
    stdout.print(
        f"project {b.project}: epsilon {b.epsilon_spent:g} spent of {b.epsilon_granted:g} "
        f"({b.epsilon_remaining:g} left); rho {b.rho_spent:g} spent of {b.rho_granted:g} "
        f"({b.rho_remaining:g} left; the rho spent is epsilon {rho_as_epsilon:.3g} at delta "
        f"{delta:g})",
        highlight=False,
    )


@budget_app.command("grant")
def grant(
    store: StoreArg,
    project: ProjectOpt,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Total epsilon (Laplace).")] = 0.0,
    rho: Annotated[float, typer.Option("--rho", help="Total rho (Gaussian, zCDP).")] = 0.0,
    by: Annotated[str, typer.Option("--by", help="Who grants it.")] = "steward",
    as_json: JsonOpt = False,
) -> None:
    """Set a project's total budget on this node (never below what it has spent)."""
    _print_budget(budgets.grant(store, project, epsilon, rho, by), as_json)


@budget_app.command("show")
def show(
    store: StoreArg,
    project: ProjectOpt,
    delta: Annotated[
        float, typer.Option("--delta", help="Delta for the (epsilon, delta) view of rho.")
    ] = 1e-7,
    as_json: JsonOpt = False,
) -> None:
    """A project's granted, spent and remaining budget on this node, with the rho spent
    also as (epsilon, delta)-DP."""
    if not 0 < delta < 1:
        raise UsageError(f"--delta must be between 0 and 1, not {delta}")
    _print_budget(budgets.status(store, project), as_json, delta)


@policy_app.command("set")
def policy_set(
    store: StoreArg,
    policy_file: Annotated[Path, typer.Argument(help="The release policy (YAML/JSON).")],
    by: Annotated[str, typer.Option("--by", help="Who sets it (logged).")] = "steward",
    as_json: JsonOpt = False,
) -> None:
    """Make a policy the node's release policy: every release at this node is judged by it
    (logged with its digest in the node's log)."""
    stored = node_policy.set_policy(store, load_policy(policy_file), by)
    _print_policy(store, stored, as_json)


@policy_app.command("show")
def policy_show(store: StoreArg, as_json: JsonOpt = False) -> None:
    """The node's release policy, in words (``--json``: the settings)."""
    _print_policy(store, node_policy.node_policy(store), as_json)


def _print_policy(store: Path, stored: node_policy.StoredPolicy, as_json: bool) -> None:
    policy = stored.policy
    if as_json:
        emit_json(
            {
                "store": str(store),
                "version_no": stored.version_no,
                "set_at": stored.set_at,
                "set_by": stored.set_by,
                "digest": policy.digest(),
                "policy": policy.model_dump(mode="json"),
            }
        )
        return
    origin = (
        f"set {stored.set_at} by {stored.set_by} (setting {stored.version_no} on this node)"
        if stored.version_no
        else "medlab's defaults (no policy set on this node)"
    )
    stdout.print(
        f"release policy {policy.version} of {store}: {origin}", highlight=False, soft_wrap=True
    )
    stdout.print(f"digest {policy.digest()}", highlight=False, soft_wrap=True)
    for line in node_policy.describe(policy):
        stdout.print(f"- {line}", highlight=False)


def query(
    store: StoreArg,
    query_file: Annotated[
        Path, typer.Argument(help="The query (YAML/JSON): project, cohort, statistic, …")
    ],
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="A stricter policy than the node's (YAML/JSON)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a differentially private query on this node, spending from the project budget."""
    data = inputs.read_document(query_file, "query", DefinitionError)
    if isinstance(data, dict) and isinstance(data.get("cohort"), str):
        data["cohort"] = load_definition(query_file.parent / data["cohort"])
    parsed = validate(DPQuery, data, str(query_file), "query", DefinitionError)
    result = answer(store, parsed, node_policy.effective(store, policy))
    if as_json:
        emit_json(result.to_dict())
        return
    table = Table(
        title=f"{parsed.statistic} ({result.release.mechanism}, noise scale "
        f"{result.release.scale:.3g}){' — cached, nothing spent' if result.cached else ''}"
    )
    for col in ("value", "noisy", "95% interval (noise)"):
        table.add_column(col, justify="left" if col == "value" else "right")
    for key, value in result.release.values.items():
        low, high = result.release.intervals.get(key, (float("nan"), float("nan")))
        table.add_row(key, f"{value:.2f}", f"{low:.2f} – {high:.2f}")
    stdout.print(table)
    _print_budget(result.budget, False)


def export(
    store: StoreArg,
    out: Annotated[Path, typer.Option("--out", help="CSV file to write.")],
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="A stricter policy than the node's (YAML/JSON)."),
    ] = None,
) -> None:
    """Export the person table with generalized quasi-identifiers, if the policy allows it
    and every (age band, sex, ZIP area) group holds at least the minimum cell count."""
    result = export_persons(store, out, node_policy.effective(store, policy))
    stdout.print(
        f"wrote {out}: {result.groups} groups of (age band, sex, ZIP area), "
        f"each with at least {result.k} persons",
        highlight=False,
    )
