"""Where the daemon is: resolved once from the environment, as a value.

``MODEL_RUNNER_HOST`` wins and takes ``http://host:port``, ``https://host:port``, a bare
``host:port`` (``http://`` is assumed, as DMR's CLI does) or ``unix:///path/to.sock``. Without it
the CLI uses the daemon's Unix socket: ``MODEL_RUNNER_SOCK`` if set, else
``/run/modelrunner/modelrunner.sock`` (the default of ``modelrunner serve --socket``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from modelrunner.cli._errors import UsageError

__all__ = ["DEFAULT_SOCKET", "Endpoint", "resolve_endpoint"]

DEFAULT_SOCKET = "/run/modelrunner/modelrunner.sock"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The daemon's address: a base URL, plus a Unix socket path when the URL is a placeholder.

    For a Unix socket ``base_url`` is ``http://localhost`` (what httpx and the daemon see as the
    Host) and ``socket_path`` names the socket to dial.
    """

    base_url: str
    socket_path: str | None = None
    source: str = "default"  # which setting chose it, for error messages

    @property
    def display(self) -> str:
        """The address as a user would write it in MODEL_RUNNER_HOST."""
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return self.base_url

    @property
    def openai_base_url(self) -> str:
        """Base URL an OpenAI client on this machine should use (``…/engines/v1/``)."""
        return f"{self.display.rstrip('/')}/engines/v1/"


def resolve_endpoint(environ: Mapping[str, str]) -> Endpoint:
    """Pick the daemon's address from ``MODEL_RUNNER_HOST`` / ``MODEL_RUNNER_SOCK``.

    Raises:
        UsageError: ``MODEL_RUNNER_HOST`` is set but is not an http(s) URL or a unix socket URL.
    """
    host = environ.get("MODEL_RUNNER_HOST", "").strip().strip("'\"")
    if host:
        return _parse_host(host)
    sock = environ.get("MODEL_RUNNER_SOCK", "").strip().strip("'\"")
    if sock:
        return Endpoint("http://localhost", socket_path=sock, source="MODEL_RUNNER_SOCK")
    return Endpoint("http://localhost", socket_path=DEFAULT_SOCKET, source="default")


def _parse_host(host: str) -> Endpoint:
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if not path.startswith("/"):
            raise UsageError(
                f"MODEL_RUNNER_HOST={host!r}: a unix socket URL needs an absolute path, "
                "like unix:///run/modelrunner/modelrunner.sock"
            )
        return Endpoint("http://localhost", socket_path=path, source="MODEL_RUNNER_HOST")
    if "://" not in host:
        host = f"http://{host}"
    parsed = urllib.parse.urlsplit(host)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(
            f"MODEL_RUNNER_HOST={host!r} is not a daemon address; use http://HOST:PORT "
            "or unix:///path/to.sock"
        )
    try:
        parsed.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise UsageError(f"MODEL_RUNNER_HOST={host!r}: {exc}") from exc
    if parsed.query or parsed.fragment:
        raise UsageError(f"MODEL_RUNNER_HOST={host!r} must not contain a query or fragment")
    return Endpoint(host.rstrip("/"), source="MODEL_RUNNER_HOST")
