"""Errors a user can fix: a bad recipe value, a missing or damaged file, data that cannot feed the run.

`mmembed.cli` prints any `UserError` as one line (what is wrong, which key or file, what to do) and exits 2;
`--debug` or MMEMBED_DEBUG=1 shows the traceback. Every other exception is a bug and keeps its traceback.
Library code raises these (or a subclass) wherever the cause lies outside mmembed's own code. Subclasses
also derive from the built-in type they replace (ValueError, FileNotFoundError, ...), so callers that
caught the built-in keep working.

This module imports nothing from mmembed: every package may use it.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, files or environment, described in one line."""

    # Seconds the CLI waits after printing the line, before exiting (see collective.PeerFailure).
    exit_grace_s: float = 0.0


class UsageError(UserError, ValueError):
    """A command-line argument or API argument outside what the command accepts."""


class UnknownNameError(UserError, KeyError):
    """A name (modality, task, registered component) that is not among the known ones."""

    def __str__(self) -> str:
        # KeyError.__str__ would print the message in quotes.
        return str(self.args[0]) if self.args else ""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a run needs) does not exist."""

    def __str__(self) -> str:
        # OSError.__str__ formats (errno, strerror) pairs; the message alone is what a user needs.
        return str(self.args[0]) if self.args else ""


class CorruptFileError(UserError, ValueError):
    """A file that exists but is truncated, altered since it was written, unreadable or holds non-finite values."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class DataError(UserError, RuntimeError):
    """Training data that cannot feed the run (e.g. every sample lacks a member the model needs)."""


class RunFolderError(UserError, FileExistsError):
    """A run folder that already holds another run's results."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def one_line(error: BaseException) -> str:
    """The error's message on one line (continuation lines joined with '; ')."""
    parts = [part.strip() for part in str(error).splitlines() if part.strip()]
    return "; ".join(parts) or type(error).__name__
