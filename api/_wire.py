"""HTTP/1.1 on the wire, without I/O: bytes in, events out; values in, bytes out.

Parsing is llhttp (Node.js's parser, through `httptools`): it rejects request smuggling
(`Content-Length` with `Transfer-Encoding`), bad header tokens and obsolete line folding, and
decodes chunked bodies. It costs a few microseconds per message where h11, pure Python, costs tens
to hundreds (api/README.md has the measurement), and the proxy parses two messages per request.

`MessageReader` turns llhttp's push callbacks into a pull API like h11's: `feed()` bytes, then
`next_event()` returns a head, body pieces, `END`, or None when more bytes are needed. What llhttp
leaves to the caller is done here: a limit on the size of a message head (431), and the rule that
an HTTP/1.1 request must carry `Host` (400). Serializing (`response_head`, `request_bytes`,
`chunk`) is plain formatting, with header values checked for CR/LF so nothing can be injected.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools

__all__ = [
    "END",
    "LAST_CHUNK",
    "Event",
    "Head",
    "MessageReader",
    "ProtocolError",
    "chunk",
    "request_bytes",
    "response_head",
]

Headers = list[tuple[bytes, bytes]]


class _End(enum.Enum):
    END = "end"


END = _End.END
"""The message is complete."""

LAST_CHUNK = b"0\r\n\r\n"


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; `status_hint` is the status a server answers with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        self.status_hint = status_hint
        super().__init__(message)


@dataclass(slots=True)
class Head:
    """A request or response head. Header names are lowercase; values as sent."""

    headers: Headers
    http_version: str
    keep_alive: bool
    method: str = ""
    target: str = ""
    status: int = 0
    upgrade: bool = False
    has_body: bool = True
    """False when the head itself says no body follows (no length, not chunked, a request)."""

    def get(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


Event = Head | bytes | _End


class MessageReader:
    """Parses a stream of requests (server side) or responses (client side)."""

    __slots__ = (
        "_events",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_is_request",
        "_max_head",
        "_parser",
        "_url",
        "eof",
    )

    def __init__(self, *, requests: bool, max_head_bytes: int = 64 * 1024) -> None:
        self._is_request = requests
        self._parser = httptools.HttpRequestParser(self) if requests else httptools.HttpResponseParser(self)
        self._events: deque[Event] = deque()
        self._max_head = max_head_bytes
        self._in_head = True
        self._head_bytes = 0
        self._headers: Headers = []
        self._url = b""
        self.eof = False

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse `data`; the events it completes become available from `next_event()`.

        Raises:
            ProtocolError: the bytes are not valid HTTP/1.1 (the connection is unusable after).
        """
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A request asking to switch protocols (h2c, websocket): the head is complete, and
            # what follows is not HTTP/1.1. Answer the request as HTTP/1.1, then close.
            self._finish_upgrade()
        except httptools.HttpParserCallbackError as exc:
            # Raised by one of our callbacks (a rule llhttp does not check); keep our error.
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed HTTP: {exc}") from None
        if self._in_head and self._head_bytes > self._max_head:
            raise ProtocolError(f"message head larger than {self._max_head} bytes", 431)

    def feed_eof(self) -> None:
        """The peer closed its side. A response without length ends here."""
        self.eof = True

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed (or the peer has closed)."""
        return self._events.popleft() if self._events else None

    def take_body(self) -> list[bytes]:
        """The body pieces parsed already and next in line (up to the end of the message)."""
        events = self._events
        pieces: list[bytes] = []
        while events and isinstance(events[0], bytes):
            pieces.append(events.popleft())  # type: ignore[arg-type]
        return pieces

    @property
    def pending(self) -> int:
        return len(self._events)

    # -- llhttp callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The head-size counter is not reset here: the bytes of this very feed were counted
        # before llhttp saw them. It restarts when the previous message ended (below), so a head
        # can exceed the limit by at most one read (64 KiB) before it is refused.
        self._in_head = True
        self._headers = []
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        headers = self._headers
        version = parser.get_http_version()
        head = Head(headers=headers, http_version=version, keep_alive=parser.should_keep_alive())
        if self._is_request:
            assert isinstance(parser, httptools.HttpRequestParser)
            head.method = parser.get_method().decode("ascii", "replace")
            head.target = self._url.decode("latin-1")
            if version == "1.1" and not any(name == b"host" for name, _ in headers):
                raise ProtocolError("HTTP/1.1 request without a Host header")
            names = {name for name, _ in headers}
            head.has_body = b"content-length" in names or b"transfer-encoding" in names
        else:
            assert isinstance(parser, httptools.HttpResponseParser)
            head.status = parser.get_status_code()
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._events.append(END)

    def _finish_upgrade(self) -> None:
        for event in self._events:
            if isinstance(event, Head):
                event.upgrade = True
                event.keep_alive = False
        if self._events and self._events[-1] is not END:
            self._events.append(END)


# -- serializing ------------------------------------------------------------------------------------


def _header_lines(headers: Headers) -> bytes:
    """`name: value\r\n` for each header; ValueError if a name or value holds CR or LF.

    Checked on the joined block (one count of each byte, in C) instead of value by value: every
    proxied request writes two heads.
    """
    block = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    if block.count(b"\r") != len(headers) or block.count(b"\n") != len(headers):
        bad = next(
            part for name, value in headers for part in (name, value) if b"\r" in part or b"\n" in part
        )
        raise ValueError(f"header line contains CR or LF: {bad[:80]!r}")
    return block


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def response_head(status: int, headers: Headers) -> bytes:
    """`HTTP/1.1 <status> <reason>` and the headers, blank line included.

    Raises:
        ValueError: a header name or value contains CR or LF.
    """
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, _REASONS.get(status, b""), _header_lines(headers))


def request_bytes(method: bytes, target: bytes, headers: Headers, body: bytes) -> bytes:
    """A whole request with `Content-Length` (the caller's headers must not carry one).

    Raises:
        ValueError: the target or a header contains CR, LF (or the target a space).
    """
    if b" " in target or b"\r" in target or b"\n" in target:
        raise ValueError(f"invalid request target {target[:80]!r}")
    return b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s" % (
        method,
        target,
        _header_lines(headers),
        len(body),
        body,
    )


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (`data` must not be empty: that is the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)
