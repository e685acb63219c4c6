"""HTTP/1.1 client for engines: one keep-alive connection pool per Unix socket (llhttp over trio).

Why not httpx: a request through httpx's pool costs ~0.35 ms of client overhead (engine.md §4), a
third of the proxy's whole budget, most of it h11; here responses are parsed by llhttp
(`_wire.MessageReader`) in a few microseconds.

Pool rules (the shape of httpcore's pool):

* a request takes the most recently used idle connection (LIFO keeps few sockets warm) or opens
  a new one; idle connections older than `idle_expiry` are dropped first, because llama-server
  (cpp-httplib) closes a keep-alive connection after 5 s idle, and after 100 requests;
* a connection returns to the pool only when its response was read to the end and both sides
  agree to keep it (`Connection: close` or a half-read body closes it instead);
* a request that fails on a *reused* connection before any response byte arrived is retried once
  on a new connection: the engine closed the idle socket under us, so it never saw the request;
* cancellation or any error closes the connection (under a shield), never pools it.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import trio
from modelrunner.api._sockets import read_when_ready
from modelrunner.api._wire import END, Event, Head, MessageReader, ProtocolError, request_bytes

__all__ = [
    "PoolSet",
    "UnixConnectionPool",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamResponse",
]

Headers = list[tuple[bytes, bytes]]

_RECEIVE_SIZE = 256 * 1024


class UpstreamError(Exception):
    """The engine's connection failed: it broke, closed early, or sent invalid HTTP."""

    def __init__(self, message: str, *, response_started: bool = False) -> None:
        self.response_started = response_started
        super().__init__(message)


class UpstreamConnectError(UpstreamError):
    """The engine's socket could not be connected to (missing, refused): the engine is gone."""


class _Connection:
    """One engine connection over a plain non-blocking socket.

    Not a `trio.SocketStream`: its reads and writes yield to the scheduler after every call that
    succeeded, two extra passes of the run loop on each proxied request's critical path. These
    wait (`wait_readable` / `wait_writable`, both checkpoints) only when the socket is not ready;
    the pool checks for cancellation before each request.
    """

    __slots__ = ("bytes_received", "drained", "idle", "last_used", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = MessageReader(requests=False, max_head_bytes=256 * 1024)
        self.last_used = trio.current_time()
        self.bytes_received = 0
        self.idle = True
        self.drained = False

    async def send_all(self, data: bytes) -> None:
        sock = self.sock
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)

    async def _receive(self) -> bytes:
        sock = self.sock
        data = await read_when_ready(lambda: sock.recv(_RECEIVE_SIZE), sock, drained=self.drained)
        self.drained = 0 < len(data) < _RECEIVE_SIZE
        return data

    async def next_event(self) -> Event | None:
        """The next response event; None when the engine closed the connection."""
        reader = self.reader
        while True:
            event = reader.next_event()
            if event is not None:
                return event
            if reader.eof:
                return None
            data = await self._receive()
            if data:
                self.bytes_received += len(data)
                reader.feed(data)
            else:
                reader.feed_eof()

    def close(self) -> None:
        """Close now; a task waiting on the socket gets `trio.ClosedResourceError`."""
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.close()  # nothing to wait for: no TLS, no buffered writes


@dataclass
class UpstreamResponse:
    """A response whose head has arrived; the body is read with `receive()` / `read()`."""

    status: int
    headers: Headers
    keep_alive: bool
    _conn: _Connection
    _close_delimited: bool = False
    _done: bool = False
    tap: Callable[[bytes], None] | None = None
    """Called with each piece of the body as it is received (the request recorder)."""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def receive(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none have); b"" at the end.

        Raises:
            UpstreamError: the engine broke the connection mid-body.
        """
        if self._done:
            return b""
        try:
            event = await self._conn.next_event()
        except (ProtocolError, trio.BrokenResourceError, OSError) as exc:
            raise UpstreamError(
                f"engine connection broke mid-response: {exc}", response_started=True
            ) from exc
        if isinstance(event, bytes):
            # Pieces that arrived together leave together: an engine that got ahead of the proxy
            # (a burst of stream chunks in one read) costs one write to the client, not one each.
            more = self._conn.reader.take_body()
            data = b"".join([event, *more]) if more else event
            if self.tap is not None:
                self.tap(data)
            return data
        if event is END:
            self._done = True
            return b""
        if event is None and self._close_delimited:
            self._done = True  # a body without length ends with the connection
            self.keep_alive = False
            return b""
        raise UpstreamError("engine closed the connection mid-response", response_started=True)

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while piece := await self.receive():
            parts.append(piece)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        return self._done


class UnixConnectionPool:
    """Keep-alive connections to one engine socket. Use `request()`; close with `aclose()`.

    `max_connections` bounds the connections open at once, idle ones included: llama-server serves
    each keep-alive connection with one of a few HTTP threads (`--threads-http`, by default
    `--parallel` + 2 on small machines) for as long as it stays open, so connections beyond its
    slots would only wait inside the engine, and idle ones would pin the threads its health checks
    need. Requests beyond the limit wait here for a connection to come back.
    """

    def __init__(
        self,
        socket_path: Path | str,
        *,
        max_idle: int = 32,
        idle_expiry: float = 4.0,
        max_connections: int | None = None,
    ) -> None:
        self.socket_path = str(socket_path)
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self.max_connections = max_connections
        self.capacity_known = max_connections is not None
        self.capacity_lock = trio.Lock()
        """Held while the proxy learns the engine's capacity, so only one request asks."""
        self._idle: list[_Connection] = []
        self._active = 0
        self._open = 0
        self._waiters: deque[trio.Event] = deque()
        self._closed = False
        self.opened = 0
        """Connections opened so far (for tests and metrics)."""

    def __repr__(self) -> str:
        return (
            f"<UnixConnectionPool {self.socket_path} open={self._open} idle={len(self._idle)} "
            f"active={self._active} limit={self.max_connections}>"
        )

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def active_count(self) -> int:
        return self._active

    @property
    def open_count(self) -> int:
        return self._open

    def set_capacity(self, max_connections: int | None) -> None:
        self.max_connections = max_connections
        self.capacity_known = True
        for _ in range(len(self._waiters)):  # the limit may have grown by many
            self._notify_sync()

    def _notify_sync(self) -> None:
        """Wake the longest-waiting request: a returned or closed connection serves exactly one.

        Waking them all would make every request at the limit cost a task switch per waiter (at
        16 clients over a 2-slot engine, 14 wake-ups to hand out one connection).
        """
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.is_set():
                waiter.set()
                return

    def _take_idle_sync(self) -> tuple[_Connection | None, list[_Connection]]:
        """The freshest usable idle connection, plus expired ones for the caller to close."""
        now = trio.current_time()
        expired = [c for c in self._idle if now - c.last_used > self.idle_expiry]
        if expired:
            self._idle = [c for c in self._idle if c not in expired]
        while self._idle:
            conn = self._idle.pop()
            if conn.reader.pending == 0 and not conn.reader.eof:
                return conn, expired
            expired.append(conn)
        return None, expired

    async def _close(self, conn: _Connection, *, counted: bool = True) -> None:
        if counted:
            self._open -= 1
            self._notify_sync()
        await conn.aclose()

    async def _checkout(self, extra: bool) -> tuple[_Connection, bool]:
        """A connection for one request: (connection, whether it was reused).

        Waits while the pool is at its limit; `extra` opens one beyond the limit instead (it is
        closed after use).
        """
        woken = False
        while True:
            conn, expired = self._take_idle_sync()
            for old in expired:
                await self._close(old)
            if conn is not None:
                return conn, True
            if extra or self.max_connections is None or self._open < self.max_connections:
                if not extra:
                    self._open += 1
                try:
                    return await self._connect(), False
                except BaseException:
                    if not extra:
                        self._open -= 1
                        self._notify_sync()
                    raise
            waiter = trio.Event()
            if woken:
                self._waiters.appendleft(waiter)  # a newcomer took it first: stay first in line
            else:
                self._waiters.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                if waiter.is_set():
                    self._notify_sync()  # woken but leaving: the connection goes to the next one
                else:
                    self._waiters.remove(waiter)
                raise
            woken = True

    async def _connect(self) -> _Connection:
        try:
            stream = await trio.open_unix_socket(self.socket_path)
            sock = socket.socket(fileno=stream.socket.detach())
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise UpstreamConnectError(
                    f"engine socket {self.socket_path} is not accepting connections: {exc.strerror or exc}"
                ) from exc
            raise UpstreamConnectError(f"cannot connect to engine socket {self.socket_path}: {exc}") from exc
        self.opened += 1
        return _Connection(sock)

    def request(
        self, method: bytes, target: bytes, headers: Headers, body: bytes = b"", *, extra: bool = False
    ) -> _PooledRequest:
        """`async with` it to send one request and get its response once the head has arrived.

        `headers` must include `host`; `content-length` is added for `body`. Leaving the block
        returns the connection to the pool if the body was read to the end, else closes it.
        `extra` requests (metrics scrapes) do not wait for the limit: they use an idle connection
        or a short-lived one of their own.

        Raises (on entry):
            UpstreamConnectError: the socket cannot be connected to.
            UpstreamError: the connection failed before a response head arrived.
        """
        return _PooledRequest(self, request_bytes(method, target, headers, body), extra)

    async def _open_exchange(self, request: bytes, extra: bool) -> tuple[_Connection, bool, UpstreamResponse]:
        """Send `request` on a pooled connection: (connection, whether it counts, response)."""
        if self._closed:
            raise UpstreamConnectError(f"connection pool for {self.socket_path} is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        attempt = 0
        while True:
            attempt += 1
            conn, reused = await self._checkout(extra)
            counted = reused or not extra
            self._active += 1
            try:
                return conn, counted, await self._send_and_read_head(conn, request)
            except BaseException as exc:
                self._active -= 1
                await self._close(conn, counted=counted)
                if isinstance(exc, _StaleConnection) and reused and attempt == 1:
                    continue  # the engine closed this idle connection; it never saw the request
                if isinstance(exc, _StaleConnection):
                    raise UpstreamError(str(exc)) from exc
                raise

    async def _finish_exchange(
        self, conn: _Connection, response: UpstreamResponse, counted: bool, failed: bool
    ) -> None:
        self._active -= 1
        if failed:
            await self._close(conn, counted=counted)
        else:
            await self._release(conn, response, counted=counted)

    async def _send_and_read_head(self, conn: _Connection, request: bytes) -> UpstreamResponse:
        conn.idle = False
        try:
            await conn.send_all(request)
            while True:
                event = await conn.next_event()
                if isinstance(event, Head):
                    if 100 <= event.status < 200:
                        await self._skip_interim(conn)
                        continue
                    framed = any(
                        name in (b"content-length", b"transfer-encoding") for name, _ in event.headers
                    )
                    return UpstreamResponse(
                        event.status, event.headers, event.keep_alive, conn, _close_delimited=not framed
                    )
                raise _StaleConnection("engine closed the connection before answering")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if conn.bytes_received == 0:
                raise _StaleConnection(f"engine connection failed before answering: {exc}") from exc
            raise UpstreamError(f"engine connection failed: {exc}") from exc
        except ProtocolError as exc:
            raise UpstreamError(f"engine sent invalid HTTP: {exc}") from exc

    @staticmethod
    async def _skip_interim(conn: _Connection) -> None:
        # A 1xx response is a whole message of its own: skip to its end.
        while (event := await conn.next_event()) is not END:
            if event is None:
                raise _StaleConnection("engine closed the connection after an interim response")

    async def _release(self, conn: _Connection, response: UpstreamResponse, *, counted: bool) -> None:
        if (
            counted
            and not self._closed
            and response.complete
            and response.keep_alive
            and conn.reader.pending == 0
            and not conn.reader.eof
            and len(self._idle) < self.max_idle
        ):
            conn.last_used = trio.current_time()
            conn.bytes_received = 0
            conn.idle = True
            self._idle.append(conn)
            self._notify_sync()
            return
        await self._close(conn, counted=counted)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._close(conn)


class _PooledRequest:
    """`UnixConnectionPool.request()`'s block: the response on entry, the connection settled on exit.

    A class, not an `@asynccontextmanager`: a generator per request costs trio's async-generator
    hooks, and every proxied request passes here.
    """

    __slots__ = ("_conn", "_counted", "_extra", "_pool", "_request", "_response")

    def __init__(self, pool: UnixConnectionPool, request: bytes, extra: bool) -> None:
        self._pool = pool
        self._request = request
        self._extra = extra
        self._conn: _Connection | None = None
        self._counted = False
        self._response: UpstreamResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        if self._conn is not None:
            raise RuntimeError("a pooled request is sent once")
        self._conn, self._counted, self._response = await self._pool._open_exchange(
            self._request, self._extra
        )
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, response = self._conn, self._response
        if conn is not None and response is not None:
            self._conn = None
            await self._pool._finish_exchange(conn, response, self._counted, failed=exc_type is not None)


class _StaleConnection(Exception):
    """A connection failed before any response byte: safe to retry on a fresh one if it was reused."""


class PoolSet:
    """One `UnixConnectionPool` per engine socket path, created on first use."""

    def __init__(
        self, *, max_idle_per_pool: int = 32, idle_expiry: float = 4.0, max_pools: int = 256
    ) -> None:
        self._pools: dict[str, UnixConnectionPool] = {}
        self._max_idle = max_idle_per_pool
        self._idle_expiry = idle_expiry
        self._max_pools = max_pools

    def get(self, socket_path: Path | str) -> UnixConnectionPool:
        key = str(socket_path)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= self._max_pools:
                self._evict_unused_sync()
            pool = UnixConnectionPool(key, max_idle=self._max_idle, idle_expiry=self._idle_expiry)
            self._pools[key] = pool
        return pool

    def _evict_unused_sync(self) -> None:
        # Pools of runners that went away keep no connections for long (idle expiry); drop the
        # ones with nothing in use so the dict stays bounded. Their idle sockets are simply
        # dropped; the engine closes its side on its own idle timeout.
        for key, pool in list(self._pools.items()):
            if pool.active_count == 0:
                del self._pools[key]
                for conn in pool._idle:
                    conn.close()
                pool._idle = []

    async def discard(self, socket_path: Path | str) -> None:
        """Close and forget the pool of a runner that is gone."""
        pool = self._pools.pop(str(socket_path), None)
        if pool is not None:
            await pool.aclose()

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()

    def __len__(self) -> int:
        return len(self._pools)
