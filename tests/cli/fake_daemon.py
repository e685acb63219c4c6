"""A small DMR-shaped HTTP server for CLI tests: canned answers, every request recorded.

It listens on a Unix socket and on a loopback TCP port at once (the two ways the CLI reaches the
daemon), answers from a table of routes the test fills in, and can stream a body in chunks with
pauses (pull progress, chat SSE, ``logs -f``). Unknown routes get DMR's 404 ``not found``.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # percent-decoded, without the query
    raw_path: str  # as sent on the request line
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    transport: str  # "unix" or "tcp"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # Streamed replies: chunks sent with chunked encoding, `pause` seconds apart.
    chunks: Iterable[bytes] | None = None
    pause: float = 0.0

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(value).encode(), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Reply:
        return cls(status, text.encode(), "text/plain; charset=utf-8")

    @classmethod
    def ndjson(cls, events: Iterable[dict[str, Any]], pause: float = 0.0) -> Reply:
        return cls(
            200,
            content_type="application/json",
            chunks=[json.dumps(e).encode() + b"\n" for e in events],
            pause=pause,
        )

    @classmethod
    def sse(cls, payloads: Iterable[Any], pause: float = 0.0) -> Reply:
        chunks = [
            b"data: " + (p.encode() if isinstance(p, str) else json.dumps(p).encode()) + b"\n\n"
            for p in payloads
        ]
        return cls(200, content_type="text/event-stream", chunks=chunks, pause=pause)


Handler = Callable[[RecordedRequest], Reply]


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCPHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class FakeDaemon:
    """Start with ``with FakeDaemon(tmp_path) as daemon:``; add routes with ``daemon.on(...)``."""

    def __init__(self, workdir: Path) -> None:
        self.socket_path = str(workdir / "fake-modelrunner.sock")
        self.requests: list[RecordedRequest] = []
        self._routes: dict[tuple[str, str], Handler] = {}
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0
        self.on("GET", "/version", Reply.json({"version": "0.0.0-fake"}))

    # --- routes ---------------------------------------------------------------------------------

    def on(self, method: str, path: str, reply: Reply | Handler) -> None:
        """Answer ``method path`` (exact, percent-decoded path) with a reply or a function of the
        request."""
        handler: Handler = reply if callable(reply) else (lambda _req, r=reply: r)
        self._routes[(method.upper(), path)] = handler

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # --- env for the CLI ------------------------------------------------------------------------

    @property
    def unix_env(self) -> dict[str, str]:
        return {"MODEL_RUNNER_HOST": f"unix://{self.socket_path}"}

    @property
    def tcp_env(self) -> dict[str, str]:
        return {"MODEL_RUNNER_HOST": f"http://127.0.0.1:{self.port}"}

    # --- lifetime -------------------------------------------------------------------------------

    def __enter__(self) -> FakeDaemon:
        handler_class = self._handler_class()
        unix_server = _UnixHTTPServer(self.socket_path, handler_class)
        tcp_server = _TCPHTTPServer(("127.0.0.1", 0), handler_class)
        self.port = tcp_server.server_address[1]
        self._servers = [unix_server, tcp_server]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def _dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return Reply.text("not found\n", 404)
        return handler(request)

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        daemon = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                request = RecordedRequest(
                    method=self.command,
                    path=urllib.parse.unquote(split.path),
                    raw_path=split.path,
                    query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self._read_body(),
                    transport="unix" if isinstance(self.server, _UnixHTTPServer) else "tcp",
                )
                reply = daemon._dispatch(request)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.chunks is None:
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in _paced(reply.chunks, reply.pause):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _handle

            def address_string(self) -> str:
                # A Unix socket peer has no address; the stdlib would index into an empty string.
                return "unix" if isinstance(self.server, _UnixHTTPServer) else super().address_string()

        return _Handler


def _paced(chunks: Iterable[bytes], pause: float) -> Iterator[bytes]:
    for i, chunk in enumerate(chunks):
        if i and pause:
            time.sleep(pause)
        yield chunk


def free_port() -> int:
    """A loopback TCP port nothing listens on (for "daemon not running" tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
