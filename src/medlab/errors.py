"""The one exception hierarchy for errors a user can act on.

Each error names where the problem is (file, line, column, JSON path) and what to do. The CLI
prints the message without a traceback and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class MedlabError(Exception):
    """Base class of every user-facing medlab error."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\nhint: {self.hint}"


class UsageError(MedlabError):
    """The command was called with arguments that cannot work."""

    exit_code = 2


class StoreError(MedlabError):
    """A node store is missing, unreadable or not a medlab store."""

    exit_code = 3


class StoreBusy(StoreError):
    """Another thread or process held the node store for longer than the caller waits."""


class LoadError(MedlabError):
    """Source data was refused; the store is left exactly as it was."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"line {line}" if line is not None else "",
                f"column {column}" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.line = line
        self.column = column


class QualityGateError(MedlabError):
    """Data quality checks above their threshold failed and the caller asked to fail on them."""

    exit_code = 5


class DefinitionError(MedlabError):
    """A cohort or study definition is invalid or uses a feature medlab does not support."""

    exit_code = 6


class PolicyError(MedlabError):
    """A release policy file is invalid, or a request is outside what the policy allows."""

    exit_code = 7


class BudgetError(MedlabError):
    """A privacy budget request was refused; nothing was spent."""

    exit_code = 8


class VerificationFailed(MedlabError):
    """A bundle, log or signed payload failed verification."""

    exit_code = 9
