"""Exceptions that carry an exit code and a one-line message for the CLI.

Exit codes (documented in the README):
  0  success
  1  failure while working (solver failure with --strict, internal error)
  2  usage error or bad input (missing/unreadable file, wrong shapes, NaN/Inf, ...)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class NettrimError(Exception):
    """Base error: ``str(err)`` is the one line shown to the user."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class BadInput(NettrimError):
    """The user gave us something we cannot use (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class SolverFailure(NettrimError):
    """The solver could not produce an acceptable answer (exit code 1)."""

    exit_code = EXIT_FAILURE


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt ``error`` was raised while handling, if any: Ctrl-C landing inside a
    library's cleanup (zipfile's close while ``np.savez`` writes a work-folder record) comes
    out as that library's own error, with the KeyboardInterrupt as its context."""
    seen: set[int] = set()
    e = error.__context__
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__context__
    return None
