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
"""

from __future__ import annotations

import json
import re

__all__ = ["EventTooLarge", "SSEFramer", "encode_model_name", "rewrite_model"]

_MODEL_VALUE = re.compile(rb'([{,]\s*"model"\s*:\s*)"(?:[^"\\]|\\.)*"')
_TERMINATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")


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
        self._buffer = buffer[start:]
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
