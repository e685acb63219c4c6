"""Listeners and the server's lifetime: `open_api_server` (tests, embedding) and `serve` (daemon).

The server listens on a Unix socket (default `/run/modelrunner/modelrunner.sock`, mode 0660, group
configurable) and on TCP (default `127.0.0.1:12434`). Binding TCP to anything but a loopback address
needs `ApiConfig.allow_remote`: a model server reachable from the network is a decision, not a
default. A stale socket file (nobody answering on it) is replaced; a live one is an error, so two
daemons never fight over one path.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import final

import trio
from modelrunner.api._app import ApiApp, ApiServices
from modelrunner.api._config import ApiConfig
from modelrunner.api._http import serve_connection
from modelrunner.api._monitor import ConnectionMonitor

__all__ = ["ApiServer", "ListenerError", "open_api_server", "serve"]

log = logging.getLogger("modelrunner.api")

_BACKLOG = 1024


class ListenerError(Exception):
    """A listener could not be opened (address in use, not allowed, bad group...)."""

    status_hint = 500


@final
@dataclass
class ApiServer:
    """A running API server. Obtain with `async with open_api_server(...)`."""

    app: ApiApp
    tcp_address: tuple[str, int] | None = None
    unix_path: Path | None = None
    _listeners: list[trio.SocketListener] = field(default_factory=list)

    @property
    def tcp_port(self) -> int | None:
        return self.tcp_address[1] if self.tcp_address else None

    @property
    def base_url(self) -> str:
        """`http://host:port` of the TCP listener. Raises RuntimeError when there is none."""
        if self.tcp_address is None:
            raise RuntimeError("the server has no TCP listener")
        host, port = self.tcp_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _open_tcp(host: str, port: int, allow_remote: bool) -> trio.SocketListener:
    if not allow_remote and not _is_loopback(host):
        raise ListenerError(
            f"refusing to listen on {host}:{port}: not a loopback address; binding beyond this "
            "machine must be asked for explicitly (allow_remote / --host with --allow-remote)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return trio.SocketListener(sock)


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _resolve_gid(group: str | int) -> int:
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenerError(f"socket group {group!r} does not exist") from None


def _open_unix_blocking(path: Path, mode: int, group: str | int | None) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ListenerError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_is_live(path):
            raise ListenerError(f"{path} is in use by another server (is a daemon already running?)")
        path.unlink()  # stale: left behind by a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a tight umask, then widen to `mode`: no window where others can connect.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(path, -1, _resolve_gid(group))
        os.chmod(path, mode)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenerError(f"{path} is in use") from exc
        raise ListenerError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def _open_unix(path: Path, mode: int, group: str | int | None) -> trio.SocketListener:
    sock = await trio.to_thread.run_sync(_open_unix_blocking, path, mode, group)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


@asynccontextmanager
async def open_api_server(services: ApiServices, config: ApiConfig | None = None) -> AsyncIterator[ApiServer]:
    """Start serving; leaving the block stops accepting, cancels in-flight requests and closes
    the listeners and engine connection pools (the Unix socket file is removed).

    `config.tcp` with port 0 picks a free port (`server.tcp_port`).

    Raises:
        ListenerError: a listener could not be opened.
    """
    config = config or ApiConfig()
    app = ApiApp(services, config)
    server = ApiServer(app)
    listeners: list[trio.SocketListener] = []
    try:
        if config.tcp is not None:
            host, port = config.tcp
            listener = await _open_tcp(host, port, config.allow_remote)
            listeners.append(listener)
            bound = listener.socket.getsockname()
            server.tcp_address = (bound[0], bound[1])
        if config.unix_path is not None:
            listeners.append(await _open_unix(config.unix_path, config.unix_mode, config.unix_group))
            server.unix_path = config.unix_path
        server._listeners = listeners
        # Idle keep-alive connections close within a tenth of their timeout after it (at most 1 s).
        monitor = ConnectionMonitor(sweep_interval=min(1.0, max(config.limits.keepalive_timeout / 10, 0.001)))
        handler = partial(serve_connection, handler=app, limits=config.limits, monitor=monitor)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, handler, [listener])
            log.info(
                "API listening on %s",
                ", ".join(
                    filter(
                        None,
                        [
                            server.base_url if server.tcp_address else None,
                            f"unix:{server.unix_path}" if server.unix_path else None,
                        ],
                    )
                ),
            )
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
            await app.aclose()
        if server.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                server.unix_path.unlink()


async def serve(
    services: ApiServices,
    config: ApiConfig | None = None,
    *,
    task_status: trio.TaskStatus[ApiServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `await nursery.start(serve, services, config)` returns the server once
    its listeners are open."""
    async with open_api_server(services, config) as server:
        task_status.started(server)
        await trio.sleep_forever()
