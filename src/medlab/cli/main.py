"""Entry point of the ``medlab`` command."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from medlab import __version__
from medlab.cli import cohort, evidence, federation, governance, node, privacy, study, synth
from medlab.cli.output import stderr
from medlab.errors import MedlabError

INTERNAL_ERROR = 70  # EX_SOFTWARE

app = typer.Typer(
    help="medlab: OMOP CDM node stores, synthetic hospitals and data quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node.app.add_typer(privacy.budget_app, name="budget")
node.app.add_typer(privacy.policy_app, name="policy")
node.app.command("query")(privacy.query)
node.app.command("export")(privacy.export)
node.app.command("key")(evidence.key)
node.app.command("agent")(federation.agent)
node.app.command("tasks")(federation.tasks)
node.app.command("approve")(federation.approve)
node.app.command("refuse")(federation.refuse)
node.app.command("console")(federation.console)
study.app.command("submit")(federation.submit)
study.app.command("status")(federation.status)
study.app.command("key")(federation.key)
study.app.command("fetch")(federation.fetch)
federation.hub_app.add_typer(governance.user_app, name="user")
federation.hub_app.add_typer(governance.organisation_app, name="organisation")
federation.hub_app.add_typer(governance.hub_node_app, name="node")
federation.hub_app.add_typer(governance.project_app, name="project")
federation.hub_app.add_typer(governance.agreement_app, name="agreement")
federation.hub_app.command("approve")(governance.approve)
federation.hub_app.command("reject")(governance.reject)
federation.hub_app.command("studies")(governance.studies)
federation.hub_app.command("usage")(governance.usage)
federation.hub_app.command("audit")(governance.audit)
node.app.add_typer(governance.node_agreement_app, name="agreement")
app.add_typer(federation.hub_app, name="hub")
app.add_typer(node.app, name="node")
app.add_typer(cohort.app, name="cohort")
app.add_typer(study.app, name="study")
app.command("synth")(synth.synth)
app.add_typer(evidence.evidence_app, name="evidence")
app.add_typer(evidence.log_app, name="log")
app.command("verify")(evidence.verify)


@app.command("version")
def version() -> None:
    """Print the medlab version."""
    print(__version__)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print a plain message and exit with their own code."""
    try:
        app(args=argv, prog_name="medlab")
    except MedlabError as exc:
        # Messages quote user input: never read it as markup.
        stderr.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            stderr.print(f"hint: {escape(exc.hint)}", highlight=False)
        return exc.exit_code
    except SystemExit as exc:
        # Typer exits here after --help, usage errors (2) and normal completion (0).
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]")
        return 130
    except Exception as exc:  # a bug in medlab, not the user's doing: one line, no traceback
        if os.environ.get("MEDLAB_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0][:200]
        name = type(exc).__name__
        stderr.print(f"[bold red]internal error:[/] {name}: {escape(first)}", highlight=False)
        stderr.print(
            "hint: this is a bug in medlab; run again with MEDLAB_DEBUG=1 to see the "
            "traceback, and report it",
            highlight=False,
        )
        return INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
