"""`ApiConfig`: the API server's slice of the daemon configuration, and how to read it from DMR's
environment variables. Pure: the environment is passed in (only cli/ reads `os.environ`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelrunner.api._cors import parse_origins
from modelrunner.api._http import ServerLimits

__all__ = ["DEFAULT_PORT", "DEFAULT_SOCKET", "ApiConfig", "InvalidBindAddress", "parse_bind_address"]

DEFAULT_PORT = 12434
DEFAULT_SOCKET = Path("/run/modelrunner/modelrunner.sock")


class InvalidBindAddress(ValueError):
    """A listen address is not `host:port`, `:port`, `port` or `http://host:port`."""


@dataclass(frozen=True)
class ApiConfig:
    """The API server's configuration (built once by cli/)."""

    tcp: tuple[str, int] | None = ("127.0.0.1", DEFAULT_PORT)
    """Host and port; port 0 picks a free one. None: no TCP listener."""
    unix_path: Path | None = DEFAULT_SOCKET
    unix_mode: int = 0o660
    unix_group: str | int | None = None
    """Group owning the socket (name or gid); None keeps the daemon's group."""
    allow_remote: bool = False
    """Binding TCP to a non-loopback address must be asked for explicitly."""
    cors_origins: tuple[str, ...] = ()
    """`DMR_ORIGINS` entries; DMR's local origins are always allowed."""
    body_limit: int = 10 << 20
    """Largest JSON request body (DMR: 10 MiB); `/models/load` archives are streamed, unlimited."""
    version: str = ""
    """What `GET /version` reports."""
    version_details: Mapping[str, Any] = field(default_factory=dict)
    """Extra `GET /version` fields (the daemon adds its containerd); DMR clients read only `version`."""
    log_dir: Path | None = None
    """Directory of the service and engine logs for `GET /logs` (501 when None)."""
    service_log_name: str = "modelrunner.log"
    engine_log_glob: str = "engine-*.log"
    metrics_enabled: bool = True
    engine_scrape_timeout: float = 2.0
    """Seconds `/metrics` waits for each runner's own metrics."""
    limits: ServerLimits = field(default_factory=ServerLimits)
    pool_max_idle: int = 32
    """Idle keep-alive connections kept per runner socket."""
    pool_max_connections: int = 16
    """Connections per runner at most (llama.cpp runners: their parallel slots, if fewer)."""
    record_requests: bool = True
    """Keep the last requests per model for `GET /engines/requests` (as DMR does)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> ApiConfig:
        """Read DMR's variables: `MODEL_RUNNER_PORT` (a port, or `host:port`), `MODEL_RUNNER_SOCK`,
        `DMR_ORIGINS`, `DISABLE_METRICS` and `MODEL_RUNNER_LOG_DIR`; `overrides` (from command-line
        flags) win. Values are trimmed of spaces and quotes, as DMR does.

        Raises:
            InvalidBindAddress: `MODEL_RUNNER_PORT` is not a port or `host:port`.
        """

        def get(name: str) -> str:
            return environ.get(name, "").strip().strip("'\"")

        values: dict[str, Any] = {}
        if port := get("MODEL_RUNNER_PORT"):
            values["tcp"] = parse_bind_address(port)
        if sock := get("MODEL_RUNNER_SOCK"):
            values["unix_path"] = Path(sock)
        if origins := get("DMR_ORIGINS"):
            values["cors_origins"] = parse_origins(origins)
        if get("DISABLE_METRICS").lower() in ("1", "true", "yes"):
            values["metrics_enabled"] = False
        if log_dir := get("MODEL_RUNNER_LOG_DIR"):
            values["log_dir"] = Path(log_dir)
        return replace(cls(), **{**values, **overrides})


def parse_bind_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`12434`, `:12434`, `0.0.0.0:12434`, `[::1]:12434` or `http://127.0.0.1:12434` (the form
    `MODEL_RUNNER_HOST` takes) to (host, port). A bare port binds `default_host` (loopback).

    Raises:
        InvalidBindAddress: anything else.
    """
    value = text.strip()
    if "://" in value:
        parts = urlsplit(value)
        host, port = parts.hostname or default_host, parts.port
        if port is None:
            raise InvalidBindAddress(f"{text!r} names no port; expected e.g. http://127.0.0.1:12434")
        return host, port
    if value.isdigit():
        host, port_text = default_host, value
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise InvalidBindAddress(f"{text!r} is not a port or host:port")
        host = host.strip("[]") or default_host
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidBindAddress(f"{text!r}: the port must be a number from 0 to 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidBindAddress(f"{text!r}: the host must be an IP address or localhost") from None
    return host, int(port_text)
