"""Readiness: ``GET /health`` on the engine's Unix socket until it answers 200.

The protocol part is pure (h11-style): ``HEALTH_REQUEST`` is the bytes to send and
``read_health_status`` turns the bytes received into a status code, using h11 to parse them. The
I/O part, ``probe_health`` and ``wait_ready``, is a thin trio layer: one short-lived connection per
probe (llama-server answers 503 while loading, 200 when ready, and the socket file exists before
it listens, so "connection refused" and "no such file" both mean "not yet").

``wait_ready`` takes no timeout: the caller owns the deadline (``trio.fail_after`` around the whole
load), as the style guide asks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path

import h11
import trio

__all__ = [
    "FIRST_POLL_INTERVAL",
    "HEALTH_REQUEST",
    "POLL_INTERVAL",
    "EngineGaveUp",
    "EngineUnhealthy",
    "HealthState",
    "classify_health",
    "probe_health",
    "read_health_status",
    "wait_ready",
]

POLL_INTERVAL = 0.1  # seconds between probes once loading takes a while
# The first probes come sooner (10, 20, 40, 80 ms): a tiny model is ready 35-100 ms after exec,
# and a fixed 100 ms grid would add up to 100 ms to every cold start.
FIRST_POLL_INTERVAL = 0.01
PROBE_TIMEOUT = 2.0  # one probe; a loaded engine answers /health in well under a millisecond
MAX_RESPONSE_BYTES = 64 * 1024

HEALTH_REQUEST = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: */*\r\n\r\n"


class HealthState(enum.Enum):
    READY = "ready"  # 200
    LOADING = "loading"  # 503, connection refused, socket file missing
    FAILED = "failed"  # any other answer: the engine is up but unhealthy


def read_health_status(data: bytes) -> int | None:
    """The status code of the HTTP response in ``data``, or None if it is incomplete or not HTTP."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/health", headers=[("Host", "localhost")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    if isinstance(event, h11.Response):
        return event.status_code
    return None


def classify_health(status: int | None) -> HealthState:
    if status == 200:
        return HealthState.READY
    if status is None or status == 503:
        return HealthState.LOADING
    return HealthState.FAILED


async def probe_health(socket_path: Path) -> int | None:
    """One ``GET /health``; the status code, or None when nothing answers (yet).

    A checkpoint. Never raises for connection problems (they mean "not ready").
    """
    try:
        with trio.move_on_after(PROBE_TIMEOUT):
            stream = await trio.open_unix_socket(str(socket_path))
            async with stream:
                await stream.send_all(HEALTH_REQUEST)
                received = bytearray()
                while len(received) < MAX_RESPONSE_BYTES:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    received += chunk
                    status = read_health_status(bytes(received))
                    if status is not None:
                        return status
                return read_health_status(bytes(received))
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        # ENOENT (no socket yet), ECONNREFUSED (stale or not listening), resets while the engine
        # dies: all mean "no answer"; whether the engine is gone is the caller's question.
        return None
    return None


async def wait_ready(
    socket_path: Path,
    *,
    gave_up: Callable[[], str | None] = lambda: None,
    interval: float = POLL_INTERVAL,
    first_interval: float = FIRST_POLL_INTERVAL,
) -> int:
    """Probe until the engine answers 200; return how many probes it took.

    Probes back off from ``first_interval`` to ``interval`` (doubling), then stay there.

    ``gave_up`` is called before each probe; when it returns a reason (the task exited), polling
    stops with ``EngineGaveUp(reason)``. Raises ``EngineUnhealthy`` on an answer that is neither 200
    nor 503. No timeout of its own: cancel it (``trio.fail_after``) to bound the wait.
    """
    probes = 0
    delay = min(first_interval, interval)
    while True:
        reason = gave_up()
        if reason is not None:
            raise EngineGaveUp(reason)
        probes += 1
        status = await probe_health(socket_path)
        state = classify_health(status)
        if state is HealthState.READY:
            return probes
        if state is HealthState.FAILED:
            raise EngineUnhealthy(status)
        await trio.sleep(delay)
        delay = min(delay * 2, interval)


class EngineGaveUp(Exception):
    """The engine stopped (exited) before it was ready."""


class EngineUnhealthy(Exception):
    """The engine answered /health with something other than 200 or 503."""

    def __init__(self, status: int | None) -> None:
        self.status = status
        super().__init__(f"engine answered /health with HTTP {status}")
