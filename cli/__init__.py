"""modelrunner.cli: the ``modelrunner`` command (client verbs; ``serve`` is wired in cli/serve.py)."""

from modelrunner.cli._client import DaemonClient, error_message_from_body
from modelrunner.cli._endpoint import DEFAULT_SOCKET, Endpoint, resolve_endpoint
from modelrunner.cli._errors import CLIError, DaemonError, DaemonUnavailable, ExitStatus, NotFound, UsageError
from modelrunner.cli.main import build_parser, main, run_cli

__all__ = [
    "DEFAULT_SOCKET",
    "CLIError",
    "DaemonClient",
    "DaemonError",
    "DaemonUnavailable",
    "Endpoint",
    "ExitStatus",
    "NotFound",
    "UsageError",
    "build_parser",
    "error_message_from_body",
    "main",
    "resolve_endpoint",
    "run_cli",
]
