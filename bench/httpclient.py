"""A lean HTTP/1.1 client for measuring: h11 over trio streams, one keep-alive connection each.

Why not httpx: its per-request overhead (about 0.3 ms on these machines) is several times the
proxy cost being measured, and it hides when each byte arrived. This client does one thing: send a
request on a kept-alive connection (Unix socket or loopback TCP), read the response, and stamp
when the first byte and each server-sent event arrived. Both arms of a comparison use it, so
whatever it costs cancels out of the differences.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import h11
import trio

__all__ = ["Endpoint", "HttpConnection", "HttpError", "Response", "split_sse_events"]

RECEIVE_BYTES = 65536


class HttpError(Exception):
    """The connection broke, or the peer spoke broken HTTP."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect: a Unix socket path, or a loopback host and port."""

    unix_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def unix(cls, path: str) -> Endpoint:
        return cls(unix_path=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> Endpoint:
        return cls(host=host, port=port)

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"

    async def connect(self) -> trio.SocketStream:
        if self.unix_path is not None:
            return await trio.open_unix_socket(self.unix_path)
        stream = await trio.open_tcp_stream(self.host, self.port)
        return stream


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    sent_at: float
    """perf_counter() when the request's last byte was handed to the kernel."""
    first_byte_at: float
    """When the first byte of the response arrived."""
    done_at: float
    """When the end of the response was read."""
    event_times: list[float] = field(default_factory=list)
    """With ``sse=True``: when each complete server-sent event (ending in a blank line) arrived."""

    @property
    def latency(self) -> float:
        return self.done_at - self.sent_at

    @property
    def time_to_first_byte(self) -> float:
        return self.first_byte_at - self.sent_at


def split_sse_events(buffer: bytes) -> tuple[int, bytes]:
    """Count complete server-sent events in ``buffer``; return (count, unfinished rest).

    An event ends with a blank line; ``\\r\\n`` line ends count the same as ``\\n`` (the SSE spec
    allows both). Pure: used while streaming to stamp each event's arrival.
    """
    normalized = buffer.replace(b"\r\n", b"\n")
    parts = normalized.split(b"\n\n")
    return len(parts) - 1, parts[-1]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it.

    Not safe for concurrent use: one request at a time (give each concurrent client its own).
    """

    def __init__(self, endpoint: Endpoint, host_header: str = "localhost") -> None:
        self.endpoint = endpoint
        self._host_header = host_header
        self._stream: trio.SocketStream | None = None
        self._h11: h11.Connection | None = None
        self.connects = 0

    async def _ensure_open(self) -> tuple[trio.SocketStream, h11.Connection]:
        if self._stream is None or self._h11 is None:
            self._stream = await self.endpoint.connect()
            self._h11 = h11.Connection(h11.CLIENT)
            self.connects += 1
        return self._stream, self._h11

    async def aclose(self) -> None:
        stream, self._stream, self._h11 = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        headers: tuple[tuple[str, str], ...] = (),
        sse: bool = False,
    ) -> Response:
        """Send one request and read the whole response; a checkpoint.

        A kept-alive connection the server closed while idle is reopened and the request sent
        again, once (nothing of it was processed: the server had not read a byte).

        Raises:
            HttpError: the connection broke or the response was not valid HTTP/1.1.
            OSError: nothing listens at the endpoint.
        """
        for attempt in (1, 2):
            reused = self._stream is not None
            try:
                return await self._request_once(method, target, body, headers, sse)
            except _ClosedBeforeResponse as exc:
                await self.aclose()
                if attempt == 2 or not reused:
                    raise HttpError(f"{self.endpoint} closed the connection before answering") from exc
        raise AssertionError("unreachable")

    async def _request_once(
        self, method: str, target: str, body: bytes, headers: tuple[tuple[str, str], ...], sse: bool
    ) -> Response:
        stream, conn = await self._ensure_open()
        all_headers = [("Host", self._host_header), ("Content-Length", str(len(body))), *headers]
        data = conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        try:
            await stream.send_all(data or b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClosedBeforeResponse() from exc
        sent_at = time.perf_counter()
        first_byte_at = 0.0
        status = 0
        response_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        event_times: list[float] = []
        pending = b""
        now = sent_at
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self.aclose()
                raise HttpError(f"{self.endpoint} answered invalid HTTP: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    received = await stream.receive_some(RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    if not first_byte_at:
                        raise _ClosedBeforeResponse() from exc
                    await self.aclose()
                    raise HttpError(f"{self.endpoint} broke the connection mid-response") from exc
                now = time.perf_counter()
                if not received and not first_byte_at:
                    raise _ClosedBeforeResponse()
                if not first_byte_at:
                    first_byte_at = now
                conn.receive_data(received)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = list(event.headers)
            elif isinstance(event, h11.Data):
                chunk = bytes(event.data)
                chunks.append(chunk)
                if sse:
                    count, pending = split_sse_events(pending + chunk)
                    event_times.extend([now] * count)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                await self.aclose()
                raise HttpError(f"{self.endpoint} closed the connection mid-response")
        done_at = now
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            await self.aclose()
        else:
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                await self.aclose()
        return Response(
            status, response_headers, b"".join(chunks), sent_at, first_byte_at, done_at, event_times
        )


class _ClosedBeforeResponse(Exception):
    pass
