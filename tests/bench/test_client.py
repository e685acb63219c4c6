"""bench.httpclient and bench.sse: SSE framing, arrival stamps, keep-alive and reconnects, against
a small trio HTTP server on a Unix socket."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bench.httpclient import Endpoint, HttpConnection, HttpError, split_sse_events
from bench.load import RequestSpec, run_closed_loop
from bench.sse import first_token_index, parse_sse_events, token_event_indices


def test_split_sse_events_counts_complete_events() -> None:
    assert split_sse_events(b"data: 1\n\ndata: 2\n\ndata: 3") == (2, b"data: 3")
    assert split_sse_events(b"data: 1\r\n\r\n") == (1, b"")
    assert split_sse_events(b"") == (0, b"")


def test_parse_sse_events_and_token_indices() -> None:
    role = {"choices": [{"delta": {"role": "assistant", "content": None}}]}
    token = {"choices": [{"delta": {"content": "Hello"}}]}
    completion = {"choices": [{"text": "abc"}]}
    body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (role, token, completion))
    body += b"data: [DONE]\n\n"
    events = parse_sse_events(body)
    assert events == [role, token, completion, "[DONE]"]
    assert token_event_indices(events) == [1, 2]
    assert first_token_index(events) == 1
    assert first_token_index([role, "[DONE]"]) is None


async def serve(
    socket_path: Path,
    answers: list[bytes],
    *,
    close_after: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer each request on a connection with the next canned response; close the connection
    after ``close_after`` responses (as cpp-httplib does after 100)."""
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(socket_path))
    sock.listen(8)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        served = 0
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    buffer += data
                _, _, buffer = buffer.partition(b"\r\n\r\n")
                for part in answers.pop(0).split(b"|PAUSE|"):
                    await stream.send_all(part)
                    await trio.sleep(0.02)
                served += 1
                if close_after is not None and served >= close_after:
                    return

    await trio.serve_listeners(handle, [listener])


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Short: Unix socket paths max out at 107 bytes, and pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="mrb-test-", dir="/tmp"))
    try:
        yield directory / "s.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def response(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_keep_alive_reuses_one_connection(socket_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, socket_path, [response(b"one"), response(b"two")])
        connection = HttpConnection(Endpoint.unix(str(socket_path)))
        first = await connection.request("GET", "/a")
        second = await connection.request("GET", "/b")
        await connection.aclose()
        nursery.cancel_scope.cancel()
    assert (first.status, first.body, second.body) == (200, b"one", b"two")
    assert connection.connects == 1
    assert first.sent_at <= first.first_byte_at <= first.done_at


async def test_reconnects_once_when_the_server_closed_an_idle_connection(socket_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        answers = [response(b"one"), response(b"two")]
        await nursery.start(functools.partial(serve, socket_path, answers, close_after=1))
        connection = HttpConnection(Endpoint.unix(str(socket_path)))
        await connection.request("GET", "/a")
        await trio.sleep(0.05)  # the server has closed its side by now
        second = await connection.request("GET", "/b")
        await connection.aclose()
        nursery.cancel_scope.cancel()
    assert second.body == b"two" and connection.connects == 2


async def test_sse_events_are_stamped_as_they_arrive(socket_path: Path) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        b"9\r\ndata: 1\n\n\r\n|PAUSE|9\r\ndata: 2\n\n\r\n|PAUSE|0\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, socket_path, [chunked])
        connection = HttpConnection(Endpoint.unix(str(socket_path)))
        result = await connection.request("POST", "/stream", b"{}", sse=True)
        await connection.aclose()
        nursery.cancel_scope.cancel()
    assert result.body == b"data: 1\n\ndata: 2\n\n"
    assert len(result.event_times) == 2
    assert result.event_times[1] - result.event_times[0] >= 0.015  # the server paused between them
    assert result.time_to_first_byte <= result.event_times[0] - result.sent_at + 1e-9


async def test_a_connection_that_never_answers_is_an_error(socket_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve, socket_path, [b""], close_after=1))
        connection = HttpConnection(Endpoint.unix(str(socket_path)))
        with pytest.raises(HttpError, match="closed the connection"):
            await connection.request("GET", "/a")
        nursery.cancel_scope.cancel()


async def test_nothing_listening_raises_oserror(socket_path: Path) -> None:
    connection = HttpConnection(Endpoint.unix(str(socket_path)))
    with pytest.raises(OSError):
        await connection.request("GET", "/")


async def test_closed_loop_stops_at_the_request_count_and_counts_failures(socket_path: Path) -> None:
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    answers = [response(b"ok")] * 6 + [not_found] + [response(b"ok")] * 50
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, socket_path, answers)
        result = await run_closed_loop(
            Endpoint.unix(str(socket_path)),
            RequestSpec("GET", "/"),
            concurrency=3,
            duration=30,
            max_requests=10,
        )
        nursery.cancel_scope.cancel()
    assert sum(result.statuses.values()) == 10
    assert result.statuses == {200: 9, 404: 1}
    assert (result.completed, result.failures) == (9, 1)
    assert result.throughput > 0


async def test_closed_loop_stops_at_the_time_limit(socket_path: Path) -> None:
    slow = response(b"ok").replace(b"\r\n\r\nok", b"\r\n\r\n|PAUSE|ok")  # 20 ms per answer
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, socket_path, [slow] * 1000)
        result = await run_closed_loop(
            Endpoint.unix(str(socket_path)),
            RequestSpec("GET", "/"),
            concurrency=2,
            duration=0.2,
            max_requests=1_000_000,
        )
        nursery.cancel_scope.cancel()
    assert 2 <= result.completed <= 40
    assert 0.2 <= result.elapsed < 1.0


async def test_closed_loop_validates_its_bounds(socket_path: Path) -> None:
    with pytest.raises(ValueError):
        await run_closed_loop(
            Endpoint.unix(str(socket_path)),
            RequestSpec("GET", "/"),
            concurrency=0,
            duration=1,
            max_requests=1,
        )
