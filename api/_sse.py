"""Server-sent events framing and the `model` rewrite of engine responses. Pure; bytes in, bytes out.

The proxy passes an engine's `text/event-stream` to the client event by event: an event is
forwarded as soon as its terminating blank line has arrived, never held for more. `SSEFramer`
splits the arbitrary pieces a socket delivers into whole events (`\\n\\n`, `\\r\\n\\r\\n` or `\\r\\r`
terminated) so each can be rewritten before it goes out.

`rewrite_model` replaces the value of a JSON object's top-level-looking `"model"` key with the name
the client asked for (llama-server reports its `--alias` or the GGUF path instead). It works on the
bytes, without parsing: in compact or spaced JSON a key is preceded by `{` or `,` (and optional
whitespace), while a `"model":` that is *inside* a string value has its quotes escaped as `\\"` and
cannot match. Only the first match is replaced; llama-server's responses have no nested `model`
key, and a later one would belong to a nested object. Parsing and re-serializing instead would
cost milliseconds on large embedding responses and change their float formatting.

`event_data`, `chunk_object` and `first_choice` read a chat-completion stream for the layers that
translate it (Ollama, Responses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "EventTooLarge",
    "ModelRewriter",
    "SSEFramer",
    "chunk_object",
    "encode_model_name",
    "event_data",
    "first_choice",
    "rewrite_model",
]

_MODEL_VALUE = re.compile(rb'([{,]\s*"model"\s*:\s*)"(?:[^"\\]|\\.)*"')
_TERMINATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class ModelRewriter:
    """`rewrite_model` for the many events of one stream, learning the engine's member once.

    The engine writes the same `,"model":"<alias>"` member into every event; once the regex has
    found it, the rest are a plain byte replace of that member (with its delimiter, so it cannot
    match inside a string value, where quotes are escaped). An event without it goes through
    `rewrite_model` as before.
    """

    __slots__ = ("_engine_member", "_literal", "_ours")

    def __init__(self, model: str) -> None:
        self._literal = encode_model_name(model)
        self._engine_member: bytes | None = None
        self._ours = b""

    def __call__(self, payload: bytes) -> bytes:
        member = self._engine_member
        if member is not None and member in payload:
            return payload.replace(member, self._ours, 1)
        if b'"model"' not in payload:
            return payload
        match = _MODEL_VALUE.search(payload)
        if match is None:
            return payload
        self._engine_member = match.group(0)
        self._ours = match.group(1) + self._literal
        return payload[: match.start()] + self._ours + payload[match.end() :]


class EventTooLarge(ValueError):
    """An SSE event grew beyond the framer's limit without a terminating blank line."""


def encode_model_name(name: str) -> bytes:
    """The JSON string literal for `name` (ASCII-escaped, so it is safe to splice into bytes)."""
    return json.dumps(name).encode("ascii")


def rewrite_model(payload: bytes, model_literal: bytes) -> bytes:
    """Replace the first `"model": "<anything>"` member value by `model_literal` (a JSON string).

    Returns `payload` unchanged (the same object) when it has no such member.
    """
    if b'"model"' not in payload:
        return payload
    return _MODEL_VALUE.sub(lambda m: m.group(1) + model_literal, payload, count=1)


class SSEFramer:
    """Splits a byte stream into whole SSE events (each returned with its terminator).

    `feed()` returns the events completed by the new bytes, possibly none. `flush()` returns what
    is left when the stream ends (a final event without a blank line, or b"").
    """

    __slots__ = ("_buffer", "_max_event_size")

    def __init__(self, max_event_size: int = 16 << 20) -> None:
        self._buffer = b""
        self._max_event_size = max_event_size

    def feed(self, data: bytes) -> list[bytes]:
        """Raises EventTooLarge when an unterminated event exceeds the limit."""
        buffer = self._buffer + data if self._buffer else data
        events: list[bytes] = []
        start = 0
        if b"\r" not in buffer:
            # The usual stream (llama-server's): one kind of terminator, found in one pass.
            while (index := buffer.find(b"\n\n", start)) >= 0:
                events.append(buffer[start : index + 2])
                start = index + 2
        else:
            while True:
                end = -1
                for terminator in _TERMINATORS:
                    index = buffer.find(terminator, start)
                    if index >= 0 and (end < 0 or index + len(terminator) < end):
                        end = index + len(terminator)
                if end < 0:
                    break
                events.append(buffer[start:end])
                start = end
        self._buffer = buffer[start:] if start else buffer
        if len(self._buffer) > self._max_event_size:
            raise EventTooLarge(
                f"server-sent event larger than {self._max_event_size} bytes without a blank line"
            )
        return events

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the end of an event."""
        return len(self._buffer)


# -- reading chat-completion streams ------------------------------------------------------------------


def event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its `data:` lines joined), or None when it has none."""
    parts: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def chunk_object(data: bytes | None) -> dict[str, Any] | None:
    """The JSON object an event's data carries; None for `[DONE]`, a keep-alive or a comment, or
    anything that is not a JSON object: there is nothing to translate in those."""
    if data is None or data.strip() == b"[DONE]":
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def first_choice(completion: Mapping[str, Any]) -> Mapping[str, Any]:
    """`choices[0]` of a completion or chunk, or {} when there is none."""
    choices = completion.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}
