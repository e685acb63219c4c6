"""The engine connection pool and the proxy's failure handling, against a scripted engine on a Unix
socket (misbehaviour a real llama-server shows only rarely: idle closes, resets, broken streams)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from modelrunner.api._upstream import UnixConnectionPool, UpstreamConnectError, UpstreamError

from tests.api.conftest import Served, serve_fakes

Script = Callable[[trio.SocketStream, "FakeEngine"], Awaitable[None]]

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 28\r\n"
    b'Access-Control-Allow-Origin: *\r\n\r\n{"model":"alias","value":42}'
)


@dataclass
class FakeEngine:
    path: Path
    script: Script
    connections: int = 0
    requests: int = 0
    events: list[str] = field(default_factory=list)
    client_closed: trio.Event = field(default_factory=trio.Event)

    async def read_request(self, stream: trio.SocketStream) -> bytes | None:
        """One request (head + Content-Length body), or None at EOF."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive_some(65536)
        self.requests += 1
        return head + b"\r\n\r\n" + body


@asynccontextmanager
async def fake_engine(tmp_path: Path, script: Script) -> AsyncIterator[FakeEngine]:
    engine = FakeEngine(tmp_path / "engine.sock", script)
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(engine.path))
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        engine.connections += 1
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await script(stream, engine)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        yield engine
        nursery.cancel_scope.cancel()


async def keep_alive_ok(stream: trio.SocketStream, engine: FakeEngine) -> None:
    while await engine.read_request(stream) is not None:
        await stream.send_all(OK)


async def one_per_connection_silent_close(stream: trio.SocketStream, engine: FakeEngine) -> None:
    # Answers one request, then closes without `Connection: close` (an idle-timeout close).
    if await engine.read_request(stream) is not None:
        await stream.send_all(OK)


async def request(pool: UnixConnectionPool, body: bytes = b"{}") -> tuple[int, bytes]:
    async with pool.request(b"POST", b"/v1/x", [(b"host", b"localhost")], body) as response:
        return response.status, await response.read()


async def test_connections_are_reused(tmp_path: Path) -> None:
    async with fake_engine(tmp_path, keep_alive_ok) as engine:
        pool = UnixConnectionPool(engine.path)
        for _ in range(10):
            assert await request(pool) == (200, b'{"model":"alias","value":42}')
        assert (pool.opened, engine.connections, pool.idle_count) == (1, 1, 1)
        await pool.aclose()


async def test_silently_closed_idle_connection_is_retried(tmp_path: Path) -> None:
    async with fake_engine(tmp_path, one_per_connection_silent_close) as engine:
        pool = UnixConnectionPool(engine.path)
        for _ in range(5):
            assert (await request(pool))[0] == 200
            await trio.sleep(0.01)  # let the engine's close arrive
        assert engine.requests == 5
        assert pool.opened == 5
        await pool.aclose()


async def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async def close_header(stream: trio.SocketStream, engine: FakeEngine) -> None:
        while await engine.read_request(stream) is not None:
            await stream.send_all(
                OK.replace(b"Content-Length: 28", b"Connection: close\r\nContent-Length: 28")
            )

    async with fake_engine(tmp_path, close_header) as engine:
        pool = UnixConnectionPool(engine.path)
        for _ in range(3):
            assert (await request(pool))[0] == 200
        assert pool.idle_count == 0
        assert engine.connections == 3
        await pool.aclose()


async def test_idle_connections_expire(tmp_path: Path) -> None:
    async with fake_engine(tmp_path, keep_alive_ok) as engine:
        pool = UnixConnectionPool(engine.path, idle_expiry=0.05)
        await request(pool)
        await trio.sleep(0.1)
        await request(pool)
        assert pool.opened == 2
        await pool.aclose()


async def test_fresh_connection_failure_is_not_retried(tmp_path: Path) -> None:
    async def hang_up(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)  # and close without answering

    async with fake_engine(tmp_path, hang_up) as engine:
        pool = UnixConnectionPool(engine.path)
        with pytest.raises(UpstreamError, match="before answering"):
            await request(pool)
        assert engine.requests == 1  # a POST is never sent twice on fresh connections
        await pool.aclose()


async def test_missing_socket_is_a_connect_error(tmp_path: Path) -> None:
    pool = UnixConnectionPool(tmp_path / "nothing.sock")
    with pytest.raises(UpstreamConnectError, match="not accepting connections"):
        await request(pool)


async def test_broken_body_is_an_error_and_not_pooled(tmp_path: Path) -> None:
    async def truncated(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{partial")

    async with fake_engine(tmp_path, truncated) as engine:
        pool = UnixConnectionPool(engine.path)
        with pytest.raises(UpstreamError, match="mid-response") as info:
            await request(pool)
        assert info.value.response_started
        assert pool.idle_count == 0
        await pool.aclose()


async def test_garbage_answer_is_an_error(tmp_path: Path) -> None:
    async def garbage(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")

    async with fake_engine(tmp_path, garbage) as engine:
        pool = UnixConnectionPool(engine.path)
        with pytest.raises(UpstreamError):
            await request(pool)
        await pool.aclose()


async def test_cancelled_request_closes_its_connection(tmp_path: Path) -> None:
    async def slow(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.receive_some(1)  # returns b"" when the client closes
        engine.client_closed.set()

    async with fake_engine(tmp_path, slow) as engine:
        pool = UnixConnectionPool(engine.path)
        with trio.move_on_after(0.2):
            await request(pool)
        with trio.fail_after(2):
            await engine.client_closed.wait()
        assert pool.active_count == 0 and pool.idle_count == 0
        await pool.aclose()


# -- through the proxy ----------------------------------------------------------------------------


@asynccontextmanager
async def proxy_to(fakes, tmp_path: Path, script: Script) -> AsyncIterator[tuple[Served, FakeEngine]]:
    async with fake_engine(tmp_path, script) as engine:
        fakes.scheduler.socket_path = engine.path
        fakes.scheduler.lease_backend = "scripted"  # not llama.cpp: no /props capacity probe
        async with serve_fakes(fakes, tmp_path) as served:
            yield served, engine


async def test_proxy_relays_and_rewrites(fakes, tmp_path: Path) -> None:
    async with proxy_to(fakes, tmp_path, keep_alive_ok) as (served, _engine):
        response = await served.client.post(
            "/engines/v1/chat/completions?x=1",
            json={"model": "ai/smollm2"},
            headers={"Origin": "http://localhost"},
        )
        assert response.status_code == 200
        assert response.json() == {"model": "ai/smollm2", "value": 42}
        assert response.headers.get_list("access-control-allow-origin") == ["http://localhost"]


async def test_proxy_forwards_original_bytes_and_trimmed_path(fakes, tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def record(stream: trio.SocketStream, engine: FakeEngine) -> None:
        while (raw := await engine.read_request(stream)) is not None:
            seen.append(raw)
            await stream.send_all(OK)

    body = b'{ "model" : "ai/smollm2",  "messages": [] }'  # odd spacing must survive untouched
    async with proxy_to(fakes, tmp_path, record) as (served, _engine):
        response = await served.client.post(
            "/exp/vDD4.40/engines/llama.cpp/v1/completions?a=b",
            content=body,
            headers={"X-Custom": "kept", "Content-Type": "application/json"},
        )
        assert response.status_code == 200
    head, _, forwarded = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/completions?a=b HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"host"] == b"localhost"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"x-custom"] == b"kept"
    assert forwarded == body


async def test_proxy_streams_events_as_they_come(fakes, tmp_path: Path) -> None:
    release = trio.Event()

    async def stream_events(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        first = b'data: {"model":"alias","n":1}\n\n'
        await stream.send_all(b"%x\r\n%s\r\n" % (len(first), first))
        await release.wait()  # the client must have the first event before the second exists
        rest = b'data: {"model":"alias","n":2}\n\ndata: [DONE]\n\n'
        await stream.send_all(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))

    async with proxy_to(fakes, tmp_path, stream_events) as (served, _engine):
        async with served.client.stream(
            "POST", "/v1/chat/completions", json={"model": "ai/smollm2"}
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            pieces = response.aiter_bytes()
            with trio.fail_after(5):
                first = await pieces.__anext__()
            assert first == b'data: {"model":"ai/smollm2","n":1}\n\n'
            release.set()
            rest = b"".join([chunk async for chunk in pieces])
        assert rest == b'data: {"model":"ai/smollm2","n":2}\n\ndata: [DONE]\n\n'
        with trio.fail_after(5):  # the lease is held until the last byte went out, then released
            await served.fakes.scheduler.released_event.wait()
        assert served.fakes.scheduler.released == 1


async def test_engine_dying_mid_stream_drops_the_client_and_reports(fakes, tmp_path: Path) -> None:
    async def die(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n1e\r\ndata: {"model":"a","n":1}\n\n\r\n'
        )

    async with proxy_to(fakes, tmp_path, die) as (served, _engine):
        with pytest.raises(httpx.RemoteProtocolError):
            async with served.client.stream(
                "POST", "/v1/chat/completions", json={"model": "ai/smollm2"}
            ) as response:
                async for _ in response.aiter_bytes():
                    pass
        assert served.fakes.scheduler.leases[-1].broken
        assert (await served.client.get("/version")).status_code == 200


async def test_engine_closing_before_answer_is_502(fakes, tmp_path: Path) -> None:
    async def hang_up(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)

    async with proxy_to(fakes, tmp_path, hang_up) as (served, _engine):
        response = await served.client.post("/v1/chat/completions", json={"model": "ai/smollm2"})
        assert response.status_code == 502
        assert "failed" in response.json()["error"]["message"]
        assert served.fakes.scheduler.leases[-1].broken


async def test_client_gone_during_a_slow_answer_cancels_upstream(fakes, tmp_path: Path) -> None:
    async def slow(stream: trio.SocketStream, engine: FakeEngine) -> None:
        await engine.read_request(stream)
        with trio.move_on_after(10):
            if not await stream.receive_some(1):
                engine.client_closed.set()

    async with proxy_to(fakes, tmp_path, slow) as (served, engine):
        with trio.move_on_after(0.3):
            await served.client.post("/v1/chat/completions", json={"model": "ai/smollm2"})
        with trio.fail_after(5):
            await engine.client_closed.wait()
            await served.fakes.scheduler.released_event.wait()
        metrics = (await served.client.get("/metrics")).text
        gone = 'modelrunner_api_inference_requests_total{mode="completion",outcome="client_gone"} 1.0'
        assert gone in metrics
        assert (await served.client.get("/version")).status_code == 200


async def test_pipelined_inference_requests_are_all_answered_in_order(fakes, tmp_path: Path) -> None:
    async def slow_ok(stream: trio.SocketStream, engine: FakeEngine) -> None:
        # Slow enough that the next pipelined request reaches the disconnect watcher first.
        while await engine.read_request(stream) is not None:
            await trio.sleep(0.05)
            await stream.send_all(OK)

    async with proxy_to(fakes, tmp_path, slow_ok) as (served, engine):
        body = b'{"model": "ai/smollm2"}'
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        stream = await trio.open_tcp_stream("127.0.0.1", served.server.tcp_port or 0)
        async with stream:
            await stream.send_all(request)
            await trio.sleep(0.02)  # the first is with the engine now
            await stream.send_all(request * 2)
            received = b""
            with trio.fail_after(10):
                while received.count(b'"value":42') < 3:
                    chunk = await stream.receive_some(65536)
                    assert chunk, f"connection closed after {received!r}"
                    received += chunk
        assert received.count(b"HTTP/1.1 200 ") == 3
        assert engine.requests == 3


async def test_requests_at_the_limit_are_served_in_arrival_order_one_wakeup_each(tmp_path: Path) -> None:
    async def echo_order(stream: trio.SocketStream, engine: FakeEngine) -> None:
        while (raw := await engine.read_request(stream)) is not None:
            await trio.sleep(0.01)
            await stream.send_all(OK)
            engine.events.append(raw.split(b" ")[1].decode())

    async with fake_engine(tmp_path, echo_order) as engine:
        pool = UnixConnectionPool(engine.path, max_connections=1)
        wakeups = 0
        original = pool._notify_sync

        def counting_notify() -> None:
            nonlocal wakeups
            waiting = len(pool._waiters)
            original()
            wakeups += waiting - len(pool._waiters)

        pool._notify_sync = counting_notify  # type: ignore[method-assign]

        async def one(n: int) -> None:
            async with pool.request(b"GET", b"/r%d" % n, [(b"host", b"x")]) as response:
                await response.read()

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(one, n)
                await trio.sleep(0.001)  # arrive in order
        assert engine.events == [f"/r{n}" for n in range(6)]
        assert wakeups == 5  # one per hand-over, not one per waiter per hand-over
        await pool.aclose()


async def test_pool_waits_at_its_connection_limit(tmp_path: Path) -> None:
    concurrent = 0
    peak = 0

    async def counting(stream: trio.SocketStream, engine: FakeEngine) -> None:
        nonlocal concurrent, peak
        concurrent += 1
        peak = max(peak, concurrent)
        try:
            while await engine.read_request(stream) is not None:
                await trio.sleep(0.02)
                await stream.send_all(OK)
        finally:
            concurrent -= 1

    async with fake_engine(tmp_path, counting) as engine:
        pool = UnixConnectionPool(engine.path, max_connections=2)
        results: list[int] = []

        async def one() -> None:
            results.append((await request(pool))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
        assert results == [200] * 8
        assert pool.opened == 2 and peak == 2
        # A scrape does not wait behind the limit: it gets a connection of its own when none is idle.
        async with pool.request(b"GET", b"/metrics", [(b"host", b"x")], extra=True) as response:
            assert response.status == 200
            await response.read()
        assert pool.open_count <= 2
        await pool.aclose()


async def test_proxy_learns_llama_capacity_from_props(fakes, tmp_path: Path) -> None:
    seen: list[bytes] = []
    props = b'{"total_slots": 3, "model_alias": "x"}'

    async def llama_like(stream: trio.SocketStream, engine: FakeEngine) -> None:
        while (raw := await engine.read_request(stream)) is not None:
            seen.append(raw.split(b"\r\n", 1)[0])
            if raw.startswith(b"GET /props"):
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(props), props)
                )
            else:
                await trio.sleep(0.02)
                await stream.send_all(OK)

    async with fake_engine(tmp_path, llama_like) as engine:
        fakes.scheduler.socket_path = engine.path
        async with serve_fakes(fakes, tmp_path) as served:
            statuses: list[int] = []

            async def one() -> None:
                response = await served.client.post("/v1/chat/completions", json={"model": "ai/smollm2"})
                statuses.append(response.status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(one)
            assert statuses == [200] * 8
            pool = served.server.app.pools.get(engine.path)
            assert pool.max_connections == 4  # the engine's 3 slots plus one queued request
            assert pool.open_count <= 4
            assert seen.count(b"GET /props HTTP/1.1") == 1
            assert seen.count(b"POST /v1/chat/completions HTTP/1.1") == 8
