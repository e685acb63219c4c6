"""The lean HTTP server at the byte level: malformed input, limits, keep-alive, pipelining, timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from modelrunner.api import ApiConfig, ServerLimits, open_api_server
from modelrunner.api._server import ListenerError

from tests.api.conftest import Fakes, Served, serve_fakes


async def _exchange(served: Served, data: bytes, *, until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", served.server.tcp_port or 0)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(5):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
                if not until_close and b"\r\n\r\n" in received:
                    break
        return received


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_requests_get_4xx_and_close(served: Served, raw: bytes, status: int) -> None:
    response = await _exchange(served, raw)
    assert _status(response) == status
    assert b"connection: close" in response.lower()


async def test_keep_alive_and_pipelining(served: Served) -> None:
    request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
    response = await _exchange(
        served, request * 3 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.count(b"HTTP/1.1 200 ") == 4
    assert response.count(b'{"version":"test-1.0"}') == 3
    assert response.endswith(b"Docker Model Runner is running")


async def test_http_1_0_and_head(served: Served) -> None:
    response = await _exchange(served, b"GET /version HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b'{"version":"test-1.0"}\n')
    response = await _exchange(served, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(response) == 200
    assert response.endswith(b"\r\n\r\n")  # no body for HEAD


async def test_expect_100_continue(served: Served) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", served.server.tcp_port or 0)
    async with stream:
        body = b'{"all": true}'
        await stream.send_all(
            b"POST /engines/unload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        with trio.fail_after(5):
            interim = await stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(body)
        with trio.fail_after(5):
            final = await stream.receive_some(65536)
        assert final.startswith(b"HTTP/1.1 200 ")
        assert final.endswith(b'{"unloaded_runners":2}\n')


async def test_oversized_declared_body_is_refused_without_reading_it(served: Served) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", served.server.tcp_port or 0)
    async with stream:
        await stream.send_all(
            b"POST /engines/unload HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{"
        )
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert _status(received) == 400
        assert b"request too large" in received


async def test_idle_and_slow_clients_are_dropped(fakes: Fakes, tmp_path: Path) -> None:
    limits = ServerLimits(keepalive_timeout=0.3, body_read_timeout=0.3)
    async with serve_fakes(fakes, tmp_path, limits=limits) as served:
        # Headers never finished: dropped after the timeout, no answer needed.
        response = await _exchange(served, b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert response == b""
        # A body that never arrives: 408.
        response = await _exchange(
            served, b"POST /engines/unload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"
        )
        assert _status(response) == 408


async def test_client_vanishing_mid_body_leaves_the_server_healthy(served: Served) -> None:
    for _ in range(5):
        stream = await trio.open_tcp_stream("127.0.0.1", served.server.tcp_port or 0)
        await stream.send_all(b"POST /models/load HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        await stream.aclose()
    response = await served.client.get("/version")
    assert response.status_code == 200


async def test_handler_bug_is_a_500_and_the_server_goes_on(served: Served) -> None:
    async def broken() -> list[object]:
        raise RuntimeError("boom")

    served.fakes.models.list_models = broken  # type: ignore[method-assign]
    response = await served.client.get("/models")
    assert response.status_code == 500
    assert response.text == "internal error: RuntimeError: boom\n"
    assert (await served.client.get("/version")).status_code == 200


async def test_non_loopback_tcp_needs_allow_remote(fakes: Fakes) -> None:
    with pytest.raises(ListenerError, match="not a loopback address"):
        async with open_api_server(fakes.services, ApiConfig(tcp=("0.0.0.0", 0), unix_path=None)):
            pass


async def test_live_socket_is_not_stolen_and_stale_one_is_replaced(fakes: Fakes, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    config = ApiConfig(tcp=None, unix_path=path, unix_mode=0o600)
    async with open_api_server(fakes.services, config):
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(ListenerError, match="in use"):
            async with open_api_server(fakes.services, config):
                pass
    assert not path.exists()  # removed on exit
    stale = trio.socket.socket(trio.socket.AF_UNIX)
    await stale.bind(str(path))  # a socket file nobody listens on, as a crashed daemon leaves
    stale.close()
    async with open_api_server(fakes.services, config):
        assert path.exists()
    path.write_text("not a socket")
    with pytest.raises(ListenerError, match="not a socket"):
        async with open_api_server(fakes.services, config):
            pass


async def test_unknown_socket_group_is_an_error(fakes: Fakes, tmp_path: Path) -> None:
    config = ApiConfig(tcp=None, unix_path=tmp_path / "s.sock", unix_group="no-such-group-xyz")
    with pytest.raises(ListenerError, match="does not exist"):
        async with open_api_server(fakes.services, config):
            pass
