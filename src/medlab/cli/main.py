"""Entry point of the ``medlab`` command."""

from __future__ import annotations

import sys

import typer

from medlab import __version__
from medlab.cli import node, synth
from medlab.cli.output import stderr
from medlab.errors import MedlabError

app = typer.Typer(
    help="medlab: OMOP CDM node stores, synthetic hospitals and data quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(node.app, name="node")
app.command("synth")(synth.synth)


@app.command("version")
def version() -> None:
    """Print the medlab version."""
    print(__version__)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print a plain message and exit with their own code."""
    try:
        app(args=argv, standalone_mode=False)
    except MedlabError as exc:
        stderr.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            stderr.print(f"hint: {exc.hint}", highlight=False)
        return exc.exit_code
    except typer.Abort:
        stderr.print("aborted")
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
