"""A scripted engine on a Unix socket for the compatibility layers' handler tests: it records each
request and answers what the test says (JSON, an SSE stream sent in pieces, a broken stream).

`GET /props` (which the proxy asks once per runner, to learn its slots) is answered with four
slots and not recorded."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

Answer = Callable[["EngineRequest"], Sequence[bytes]]
"""Returns the pieces to send, in order; an empty piece means: close the connection now."""


@dataclass(frozen=True)
class EngineRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedEngine:
    path: Path
    answer: Answer
    requests: list[EngineRequest] = field(default_factory=list)


async def _read_request(stream: trio.SocketStream, buffer: bytearray) -> EngineRequest | None:
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        body += chunk
    buffer[:] = body[length:]
    return EngineRequest(method, target, headers, bytes(body[:length]))


@asynccontextmanager
async def scripted_engine(tmp_path: Path, answer: Answer) -> AsyncIterator[ScriptedEngine]:
    engine = ScriptedEngine(tmp_path / "engine.sock", answer)
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(engine.path))
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while (request := await _read_request(stream, buffer)) is not None:
                    if request.target == "/props":
                        await stream.send_all(json_answer({"total_slots": 4})[0])
                        continue
                    engine.requests.append(request)
                    for piece in engine.answer(request):
                        if not piece:
                            return
                        await stream.send_all(piece)
                        await trio.sleep(0.001)  # separate reads on the proxy side

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        yield engine
        nursery.cancel_scope.cancel()


def json_answer(value: object, status: int = 200, reason: str = "OK") -> list[bytes]:
    body = json.dumps(value).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nAccess-Control-Allow-Origin: *\r\n\r\n"
    )
    return [head.encode() + body]


def sse_answer(events: Sequence[bytes | dict[str, Any] | str], *, end: bool = True) -> list[bytes]:
    """A chunked `text/event-stream` answer, one HTTP chunk per event (dicts become `data:` JSON,
    strings are sent as raw SSE text). `end=False` closes the connection instead of ending the body."""
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for event in events:
        if isinstance(event, dict):
            data = b"data: " + json.dumps(event).encode() + b"\n\n"
        elif isinstance(event, str):
            data = event.encode()
        else:
            data = event
        pieces.append(b"%x\r\n%s\r\n" % (len(data), data))
    pieces.append(b"0\r\n\r\n" if end else b"")
    return pieces


def chunk(
    content: str | None = None,
    *,
    reasoning: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One OpenAI chat-completion stream chunk as llama-server writes it."""
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    out: dict[str, Any] = {
        "choices": [] if usage is not None else [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": 1795806626,
        "id": "chatcmpl-x",
        "model": "engine-alias",
        "object": "chat.completion.chunk",
    }
    if usage is not None:
        out["usage"] = usage
    if timings is not None:
        out["timings"] = timings
    return out


# What llama-server streams for a tool call (b11312, captured): the arguments come in fragments.
TOOL_CALL_EVENTS: list[dict[str, Any] | str] = [
    chunk(None)
    | {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
    chunk(
        tool_calls=[
            {
                "index": 0,
                "id": "call-1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{"},
            }
        ]
    ),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": '"city'}}]),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": '": "'}}]),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": 'Paris"}'}}]),
    chunk(finish="tool_calls", timings={"prompt_ms": 18.0, "predicted_ms": 11.25}),
    chunk(usage={"completion_tokens": 16, "prompt_tokens": 257, "total_tokens": 273}),
]


def sse(event: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying a chunk (or a literal such as `[DONE]`)."""
    return b"data: " + (event.encode() if isinstance(event, str) else json.dumps(event).encode()) + b"\n\n"
