"""Errors the CLI reports, and the exit status each maps to.

Every failure a user can cause or meet (a typo in a flag, a model that is not there, a daemon that
is not running, an error body from the daemon) becomes one ``CLIError``. The single top-level
handler in ``main`` prints it as ``modelrunner: error: <one line>`` and exits with its
``exit_status``; only ``--debug`` shows a traceback. Anything else that escapes is a bug in the CLI
and is reported as an internal error.
"""

from __future__ import annotations

import enum

__all__ = [
    "CLIError",
    "DaemonError",
    "DaemonUnavailable",
    "ExitStatus",
    "NotFound",
    "UsageError",
]


class ExitStatus(enum.IntEnum):
    """Exit codes of the ``modelrunner`` command; scripts may rely on them."""

    SUCCESS = 0
    ERROR = 1  # the daemon refused or failed the request, or a stream ended in an error
    USAGE = 2  # bad flags or arguments (argparse uses 2 as well)
    UNAVAILABLE = 3  # the daemon is not running or cannot be reached
    NOT_FOUND = 4  # the model (or other named thing) does not exist
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class CLIError(Exception):
    """A failure to report to the user as one line, without a traceback."""

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, *, detail: str = "") -> None:
        self.message = message
        # The full text (for example an engine's verbose log tail); shown only with --debug.
        self.detail = detail
        super().__init__(message)


class UsageError(CLIError):
    """The command line asks for something impossible (client-side check)."""

    exit_status = ExitStatus.USAGE


class DaemonUnavailable(CLIError):
    """Nothing answers at the daemon's address."""

    exit_status = ExitStatus.UNAVAILABLE


class DaemonError(CLIError):
    """The daemon answered with an error status, or an error line in a progress stream."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: str = "") -> None:
        self.status_code = status_code
        super().__init__(message, detail=detail)
        if status_code == 404:
            self.exit_status = ExitStatus.NOT_FOUND


class NotFound(CLIError):
    """A local thing the command needs (a file, for example) does not exist."""

    exit_status = ExitStatus.NOT_FOUND
