"""Shared output helpers for CLI commands: JSON to stdout, progress and tables to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Piped output is not squeezed into 80 columns: tables stay readable in logs and CI.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def emit_json(payload: Any) -> None:
    """Print ``payload`` as JSON on stdout, nothing else."""
    print(json.dumps(payload, indent=2, default=str))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[str, int, int], None]]:
    """A Rich progress bar on stderr, driven by ``callback(item, done, total)``."""
    with Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    ) as progress:
        task = progress.add_task("", total=None)

        def update(item: str, done: int, total: int) -> None:
            progress.update(task, description=item, completed=done, total=total)

        yield update
