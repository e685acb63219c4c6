"""A lean HTTP/1.1 server on trio, with llhttp (`_wire.MessageReader`) parsing the requests.

Why not hypercorn: the proxy's budget is under a millisecond of added latency, and hypercorn's trio
worker spends a large part of it in its ASGI plumbing and in h11 (api/README.md has the numbers).
Here one task serves one connection: it reads a request head, hands an `Exchange` (request values
plus response methods) to the application, and writes the response with as few `send_all` calls as
possible (one for a complete response).

Lifetimes: `serve_connection` returns when the connection is done; nothing it starts outlives it.
The application may use `Exchange.cancel_on_disconnect()` around slow work once it has read the
body: the server's `ConnectionMonitor` then notices the client going away (EOF or reset) and
cancels that work, the way Go's net/http cancels a request's context.

Framing rules: a complete response carries `Content-Length`; a streamed one is chunked for HTTP/1.1
clients and close-delimited for HTTP/1.0 ones; HEAD, 204 and 304 responses carry no body. The
connection is kept alive unless the client asked otherwise, the request was HTTP/1.0, the handler
answered `Connection: close`, or the request body could not be drained (then the server reads and
drops what is still arriving for a moment before closing, so the client gets the answer instead of
a reset).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import trio
from modelrunner.api._monitor import ConnectionMonitor
from modelrunner.api._sockets import read_when_ready
from modelrunner.api._wire import (
    END,
    LAST_CHUNK,
    Event,
    Head,
    MessageReader,
    ProtocolError,
    chunk,
    response_head,
)

__all__ = [
    "BodyReadTimeout",
    "BodyTooLarge",
    "ClientDisconnected",
    "Exchange",
    "Handler",
    "ProtocolError",
    "ServerLimits",
    "serve_connection",
]

log = logging.getLogger("modelrunner.api.http")

Headers = list[tuple[bytes, bytes]]
Handler = Callable[["Exchange"], Awaitable[None]]

_RECEIVE_SIZE = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection (or one sending its request head) may stay open."""
    body_read_timeout: float = 60.0
    """Seconds one read of the request body may wait for the client."""
    drain_limit: int = 1 << 20
    """Unread request body up to this size is drained to keep the connection; beyond, it is closed."""


class BodyTooLarge(Exception):
    """The request body exceeds the limit the handler asked for."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body larger than {limit} bytes")


class BodyReadTimeout(Exception):
    """The client stopped sending its request body (408)."""

    status_hint = 408

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")


class ClientDisconnected(Exception):
    """The client closed the connection (or it broke) while the request was being served."""


class Exchange:
    """One request and its response on a server connection.

    Request side: `method`, `target`, `headers` (lowercase names), `read_body()`, `iter_body()`.
    Response side: `respond()` for a complete response, or `start_response()`, `send()` and
    `end_response()` for a streamed one.
    """

    __slots__ = (
        "_conn",
        "_continue_sent",
        "_framing",
        "_head",
        "_header_map",
        "body_done",
        "client_gone",
        "headers",
        "http_version",
        "method",
        "response_finished",
        "response_started",
        "status",
        "target",
    )

    def __init__(self, conn: _ServerConnection, head: Head) -> None:
        self._conn = conn
        self._head = head
        self.method = head.method
        self.target = head.target
        self.headers: Headers = head.headers
        self.http_version = head.http_version
        self._header_map: dict[bytes, bytes] | None = None
        self.body_done = False
        self._continue_sent = False
        self._framing = ""  # "", "length", "chunked" or "close" once a streamed response started
        self.response_started = False
        self.response_finished = False
        self.client_gone = False
        self.status = 0

    # -- request -------------------------------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lowercase); repeated headers are joined with `, `."""
        if self._header_map is None:
            joined: dict[bytes, bytes] = {}
            for key, value in self.headers:
                joined[key] = joined[key] + b", " + value if key in joined else value
            self._header_map = joined
        return self._header_map.get(name)

    def header_str(self, name: bytes) -> str | None:
        value = self.header(name)
        return None if value is None else value.decode("latin-1")

    @property
    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        return int(value) if value is not None else None  # llhttp validated it is a number

    @property
    def keep_alive(self) -> bool:
        conn = self._conn
        return (
            self._head.keep_alive and self.http_version == "1.1" and not conn.broken and not conn.peer_closed
        )

    async def read_body(self, limit: int) -> bytes:
        """Read the whole request body.

        Raises:
            BodyTooLarge: the declared or received body exceeds `limit` (the connection will be
                closed after the response, as the rest of the body is not read).
            BodyReadTimeout: the client stopped sending.
            ClientDisconnected: the client went away before sending all of it.
            ProtocolError: the body is not valid HTTP framing.
        """
        declared = self.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit)
        parts: list[bytes] = []
        size = 0
        # Not `async for ... in iter_body()`: an async generator per request costs trio's
        # finalizer hooks, and this is on every inference request's path.
        while (piece := await self._next_body_piece()) is not None:
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield the request body as it arrives. Raises as `read_body`."""
        while (piece := await self._next_body_piece()) is not None:
            yield piece

    async def _next_body_piece(self) -> bytes | None:
        """The next piece of the request body; None at its end. Raises as `read_body`."""
        conn = self._conn
        while not self.body_done:
            if not self._continue_sent and self.header(b"expect") == b"100-continue":
                # The client waits for this before sending the body (curl does for big bodies).
                self._continue_sent = True
                await conn.send_bytes(_CONTINUE)
            # Usually the body came with the head and is parsed already: no timer needed then.
            event = conn.reader.next_event()
            if event is None:
                try:
                    with trio.fail_after(conn.limits.body_read_timeout):
                        event = await conn.next_event()
                except trio.TooSlowError:
                    conn.broken = True
                    raise BodyReadTimeout(conn.limits.body_read_timeout) from None
            if event is END:
                self.body_done = True
            elif isinstance(event, bytes):
                return event
            else:
                self.client_gone = True
                raise ClientDisconnected("client closed the connection before sending the whole body")
        return None

    def cancel_on_disconnect(self) -> _DisconnectWatch:
        """`async with` it around slow work to stop that work when the client disconnects.

        Use it once the request body has been read (before that, a disconnect shows up as
        `ClientDisconnected` from the body reads). A disconnect sets `client_gone` and cancels the
        whole connection: the cancellation unwinds the handler (its `finally` blocks run) and is
        absorbed where the connection is served, which then closes. The server's
        `ConnectionMonitor` does the watching, so this costs a request two system calls and no
        task or cancel scope of its own.
        """
        return _DisconnectWatch(self)

    # -- response ------------------------------------------------------------------------------

    def _final_headers(self, headers: Headers) -> tuple[Headers, bool]:
        close = not self.keep_alive
        if any(name == b"connection" and value.lower() == b"close" for name, value in headers):
            close = True
        elif close:
            headers = [*headers, (b"connection", b"close")]
        return headers, close

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """Send a complete response with `Content-Length`.

        Raises:
            ClientDisconnected: the client is gone.
        """
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        no_body = status in _NO_BODY_STATUS
        if not no_body:
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        headers, close = self._final_headers(headers)
        data = response_head(status, headers)
        if body and not no_body and self.method != "HEAD":
            data += body
        self.response_finished = True
        if close:
            self._conn.closing = True
        await self._conn.send_bytes(data)

    async def start_response(self, status: int, headers: Headers) -> None:
        """Send the status line and headers of a streamed response."""
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        if status in _NO_BODY_STATUS or self.method == "HEAD":
            self._framing = "none"
        elif any(name == b"content-length" for name, _ in headers):
            self._framing = "length"
        elif self.http_version == "1.1":
            self._framing = "chunked"
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        else:
            self._framing = "close"  # HTTP/1.0: the end of the body is the end of the connection
            self._conn.closing = True
        headers, close = self._final_headers(headers)
        if close:
            self._conn.closing = True
        await self._conn.send_bytes(response_head(status, headers))

    async def send(self, data: bytes) -> None:
        """Send a piece of a streamed response body; a no-op for empty data.

        Raises:
            ClientDisconnected: the client is gone.
        """
        if not data or self._framing == "none":
            return
        await self._conn.send_bytes(chunk(data) if self._framing == "chunked" else data)

    async def end_response(self) -> None:
        self.response_finished = True
        if self._framing == "chunked":
            await self._conn.send_bytes(LAST_CHUNK)


class _DisconnectWatch:
    """`Exchange.cancel_on_disconnect()`: the client socket in the monitor's set for a while."""

    __slots__ = ("_exchange", "_fd")

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._fd = -1

    async def __aenter__(self) -> None:
        exchange = self._exchange
        conn = exchange._conn
        # Unread request bytes would make the socket look idle when it is not: only watch a
        # connection whose request was read whole, with nothing pipelined behind it.
        if exchange.body_done and not conn.reader.pending and not conn.reader.eof:
            fd = conn.fileno()
            if fd >= 0 and conn.monitor.watch(fd, self._client_spoke):
                self._fd = fd

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd >= 0:
            self._exchange._conn.monitor.unwatch(self._fd)
            self._fd = -1

    def _client_spoke(self, data: bytes) -> None:
        self._fd = -1  # the monitor watches once
        exchange = self._exchange
        conn = exchange._conn
        if data:
            # A pipelined next request: kept for the connection to parse after this answer.
            try:
                conn.reader.feed(data)
            except ProtocolError:
                conn.broken = True  # answer this request, then close
            return
        exchange.client_gone = True
        conn.peer_closed = True
        conn.reader.feed_eof()
        conn.scope.cancel()


class _ServerConnection:
    __slots__ = (
        "broken",
        "closing",
        "drained",
        "limits",
        "monitor",
        "peer_closed",
        "reader",
        "scope",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, limits: ServerLimits, monitor: ConnectionMonitor) -> None:
        self.stream = stream
        self.limits = limits
        self.monitor = monitor
        self.scope = trio.CancelScope()
        """Around all of the connection's work: the monitor cancels it when the client hangs up
        mid-request or an idle connection times out."""
        self.reader = MessageReader(requests=True, max_head_bytes=limits.max_header_bytes)
        self.peer_closed = False
        self.broken = False
        """The request stream is unusable (bad framing, timeout): answer, then close."""
        self.closing = False
        """The response said `Connection: close` (or is close-delimited)."""
        self.drained = False

    def fileno(self) -> int:
        """The client socket's descriptor; -1 when closed or not a socket."""
        stream = self.stream
        return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    async def next_event(self) -> Event | None:
        """The next request event; None once the client has closed."""
        reader = self.reader
        while True:
            event = reader.next_event()
            if event is not None:
                return event
            if reader.eof:
                return None
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:
                try:
                    reader.feed(bytes(data))
                except ProtocolError:
                    self.broken = True
                    raise
            else:
                self.peer_closed = True
                reader.feed_eof()

    # A socket is read and written directly, waiting through trio only when it is not ready:
    # trio's stream methods yield to the scheduler after every call that succeeded, a pass of the
    # run loop on the request's way to the engine and one after every streamed chunk. The
    # descriptor is asked for each time, so a closed socket reads as -1, never as a reused one.

    async def _receive(self) -> bytes:
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            return bytes(await stream.receive_some(_RECEIVE_SIZE))
        sock = stream.socket
        try:
            data = await read_when_ready(
                lambda: os.read(sock.fileno(), _RECEIVE_SIZE), sock, drained=self.drained
            )
        except OSError as exc:  # reset by the peer, or closed under us
            raise trio.BrokenResourceError(str(exc)) from exc
        self.drained = 0 < len(data) < _RECEIVE_SIZE
        return data

    async def send_bytes(self, data: bytes) -> None:
        stream = self.stream
        try:
            if isinstance(stream, trio.SocketStream):
                try:
                    sent = os.write(stream.socket.fileno(), data)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]  # the client reads slowly: wait for room the usual way
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.peer_closed = True
            raise ClientDisconnected("client closed the connection") from exc

    async def drain_request_body(self, exchange: Exchange) -> bool:
        """Read and drop the rest of the request body; False if it is too big or the peer left."""
        remaining = self.limits.drain_limit
        with trio.move_on_after(self.limits.body_read_timeout):
            while True:
                event = await self.next_event()
                if event is END:
                    exchange.body_done = True
                    return True
                if not isinstance(event, bytes):
                    return False
                remaining -= len(event)
                if remaining < 0:
                    return False
        return False

    async def send_protocol_error(self, exc: ProtocolError, started: bool) -> None:
        if started:
            return  # a response is already (partly) out; just close
        body = f"{exc}\n".encode()
        data = response_head(
            exc.status_hint,
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            ],
        )
        try:
            with trio.move_on_after(1):
                await self.stream.send_all(data + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_connection(
    stream: trio.abc.Stream, handler: Handler, limits: ServerLimits, monitor: ConnectionMonitor
) -> None:
    """Serve HTTP/1.1 requests on `stream` until the client or the protocol ends the connection.

    `monitor` (running in the server's nursery) watches for hang-ups and idle timeouts.
    """
    conn = _ServerConnection(stream, limits, monitor)
    try:
        with conn.scope:
            await _serve_requests(conn, handler)
    finally:
        monitor.clear_deadline(conn)
        with trio.CancelScope(shield=True):
            if conn.broken and not conn.peer_closed:
                await _linger(stream)
            await stream.aclose()


async def _linger(stream: trio.abc.Stream) -> None:
    """Close our side, then read and drop what the client is still sending, briefly.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the error
    response just written before the client reads it (a refused oversized body, a protocol
    error). Go's net/http lingers the same way.
    """
    with trio.move_on_after(1.0):
        try:
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
            dropped = 0
            while dropped < (64 << 20):
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            return


async def _serve_requests(conn: _ServerConnection, handler: Handler) -> None:
    limits = conn.limits
    monitor = conn.monitor
    exchange: Exchange | None = None
    try:
        while True:
            event: object = conn.reader.next_event()  # a pipelined request needs no waiting
            if event is None:
                # Idle (or sending its head) for longer than the keep-alive timeout: the monitor
                # cancels the connection.
                monitor.set_deadline(conn, limits.keepalive_timeout, conn.scope.cancel)
                try:
                    event = await conn.next_event()
                finally:
                    monitor.clear_deadline(conn)
                if conn.scope.cancel_called:
                    return  # timed out as the request arrived: too late to start on it
            if not isinstance(event, Head):
                return  # keep-alive timeout or the client closed
            exchange = Exchange(conn, event)
            await _run_handler(exchange, handler)
            if conn.peer_closed or conn.broken or conn.closing or not exchange.keep_alive:
                if not exchange.body_done:
                    conn.broken = True  # unread input: linger before closing
                return
            # The handler answered without reading the whole body: drop the rest (if small) and
            # keep the connection, or close it.
            if not exchange.body_done and not await conn.drain_request_body(exchange):
                conn.broken = True
                return
            exchange = None
    except ProtocolError as exc:
        conn.broken = True
        await conn.send_protocol_error(exc, started=exchange is not None and exchange.response_started)
    except ClientDisconnected:
        pass


async def _run_handler(exchange: Exchange, handler: Handler) -> None:
    try:
        await handler(exchange)
    except ClientDisconnected:
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", exchange.method, exchange.target)
        if exchange.response_started:
            raise ClientDisconnected("aborted a response after an internal error") from None
        exchange._conn.broken = True
        await exchange.respond(
            500, [(b"content-type", b"text/plain; charset=utf-8")], b"internal server error\n"
        )
        return
    if not exchange.response_finished:
        if exchange.client_gone:
            raise ClientDisconnected("client went away before the response was complete")
        if exchange.response_started:
            # A streamed response the handler did not end: the client must not take a
            # truncated body for a complete one, so the connection is dropped.
            raise ClientDisconnected("handler left a streamed response unfinished")
        log.error("handler for %s %s returned without responding", exchange.method, exchange.target)
        await exchange.respond(500, [(b"content-type", b"text/plain; charset=utf-8")], b"no response\n")
