"""Readiness polling: the pure response reader and the trio loop against a scripted socket server.

The real llama-server is polled in tests/engines/test_llamacpp_integration.py; here a tiny trio
server answers what we tell it to, so the loop's edges (no socket yet, 503, refused, junk) are
reachable on purpose.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from modelrunner.engines.health import (
    HEALTH_REQUEST,
    EngineGaveUp,
    EngineUnhealthy,
    HealthState,
    classify_health,
    probe_health,
    read_health_status,
    wait_ready,
)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}", 200),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", 503),
        (b"HTTP/1.1 200 OK\r\n", None),  # headers not complete yet
        (b"", None),
        (b"garbage\r\n\r\n", None),
    ],
)
def test_read_health_status(data: bytes, status: int | None) -> None:
    assert read_health_status(data) == status


def test_classify() -> None:
    assert classify_health(200) is HealthState.READY
    assert classify_health(503) is HealthState.LOADING
    assert classify_health(None) is HealthState.LOADING
    assert classify_health(500) is HealthState.FAILED


def test_request_bytes_are_a_complete_get() -> None:
    assert HEALTH_REQUEST.startswith(b"GET /health HTTP/1.1\r\n")
    assert HEALTH_REQUEST.endswith(b"\r\n\r\n")


@asynccontextmanager
async def scripted_server(path: Path, answers: list[bytes]) -> AsyncIterator[list[bytes]]:
    """Serve one scripted answer per connection (the last one repeats); record the requests."""
    requests: list[bytes] = []
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(1024)
                if not chunk:
                    return
                data += chunk
            requests.append(data)
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        yield requests
        nursery.cancel_scope.cancel()


LOADING = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}"


async def test_waits_through_503_until_200(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    async with scripted_server(path, [LOADING, LOADING, OK]) as requests:
        with trio.fail_after(5):
            probes = await wait_ready(path, interval=0.01)
    assert probes == 3
    assert requests[0] == HEALTH_REQUEST


async def test_waits_for_the_socket_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"

    async def late_server(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(0.05)
        async with scripted_server(path, [OK]):
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(late_server)
        assert await probe_health(path) is None
        with trio.fail_after(5):
            assert await wait_ready(path, interval=0.01) > 1
        nursery.cancel_scope.cancel()


async def test_a_stale_socket_file_reads_as_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    assert await probe_health(path) is None


async def test_stops_when_the_engine_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    calls = 0

    def exited() -> str | None:
        nonlocal calls
        calls += 1
        return "exited with code 1" if calls >= 3 else None

    with pytest.raises(EngineGaveUp, match="exited with code 1"):
        await wait_ready(path, gave_up=exited, interval=0.01)


async def test_other_statuses_are_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
    async with scripted_server(path, [answer]):
        with pytest.raises(EngineUnhealthy) as info:
            await wait_ready(path, interval=0.01)
    assert info.value.status == 500


async def test_the_caller_owns_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "engine.sock"
    async with scripted_server(path, [LOADING]):
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.2):
                await wait_ready(path, interval=0.01)


