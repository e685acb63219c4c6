"""The last inference requests per model, for DMR's `GET /engines/requests` (`docker model requests`).

What DMR keeps (`pkg/metrics/openai_recorder.go`): the last 10 request/response pairs per model ID,
the request body with base64 media cut to 100 characters, the response body (a streamed one
reassembled into the object a non-streamed request would have got), or for a status >= 400 the
error as JSON; live followers get each finished record as it completes.

The proxy's hot path pays for almost none of it: a record keeps *references* to the request body
and to the pieces the engine sends (bytes are immutable, nothing is copied), and every
transformation (stream reassembly, the `model` rewrite, JSON rendering) happens when someone reads
the records. An answer is kept up to `max_answer_bytes`; past that the record says so instead of
holding an unbounded body. Media truncation is the one exception done at record time, and only when
the body contains media at all (a byte search), so that a recorded image does not pin megabytes for
as long as the record lives.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from modelrunner.api._sse import encode_model_name, rewrite_model

__all__ = [
    "Record",
    "RequestRecorder",
    "reassemble_anthropic_stream",
    "reassemble_openai_stream",
    "record_object",
    "truncate_media",
]

MAX_RECORDS_PER_MODEL = 10
MAX_MEDIA_CHARS = 100
_SUBSCRIBER_BUFFER = 100
_STREAMING_ERROR_STATUS = 400  # DMR's default code for an `error:` line in a stream


@dataclass(slots=True, eq=False)
class Record:
    """One proxied request and, once finished, its answer. Created by `RequestRecorder.begin`."""

    id: str
    model_id: str
    model: str
    """The name the client asked for (the recorded answers name it too)."""
    method: str
    url: str
    request: bytes
    timestamp: int
    limit: int
    """The most answer bytes kept."""
    user_agent: str = ""
    origin: str = ""
    status_code: int = 0
    parts: list[bytes] = field(default_factory=list)
    """The engine's answer as it arrived: a body, or an event stream."""
    size: int = 0
    cut: bool = False
    """The answer outgrew `limit`; it was dropped."""
    finished: bool = False

    def add(self, data: bytes) -> None:
        """Keep a piece of the answer (by reference; called for each piece the engine sends)."""
        if self.cut:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts = []
            self.cut = True
            return
        self.parts.append(data)


@dataclass
class _ModelRecords:
    records: deque[Record] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS_PER_MODEL))


class RequestRecorder:
    """Per model ID, the last `per_model` records; followers get finished ones as they finish."""

    def __init__(self, *, per_model: int = MAX_RECORDS_PER_MODEL, max_answer_bytes: int = 4 << 20) -> None:
        self.per_model = per_model
        self.max_answer_bytes = max_answer_bytes
        self._models: dict[str, _ModelRecords] = {}
        self._followers: set[trio.MemorySendChannel[Record]] = set()
        self._last_ns = 0

    def begin(
        self,
        *,
        model_id: str,
        model: str,
        method: str,
        url: str,
        body: bytes,
        user_agent: str = "",
        origin: str = "",
    ) -> Record:
        now = time.time_ns()
        # IDs are `<model ID>_<unix ns>` as in DMR; two requests in one clock tick stay distinct.
        self._last_ns = now = max(now, self._last_ns + 1)
        record = Record(
            id=f"{model_id}_{now}",
            model_id=model_id,
            model=model,
            method=method,
            url=url,
            request=truncate_media(body) if _may_carry_media(body) else body,
            timestamp=now // 1_000_000_000,
            limit=self.max_answer_bytes,
            user_agent=user_agent,
            origin=origin,
        )
        models = self._models.get(model_id)
        if models is None:
            models = self._models[model_id] = _ModelRecords(deque(maxlen=self.per_model))
        models.records.append(record)
        return record

    def finish(self, record: Record, status: int, body: bytes | None = None) -> None:
        """The answer is complete (or the request ended without one: `status` 0); `body` is an
        answer of the daemon's own (an error) that replaces what the engine sent."""
        if record.finished:
            return
        record.status_code = status
        if body is not None:
            record.parts, record.size, record.cut = [], 0, False
            record.add(body)
        record.finished = True
        for follower in list(self._followers):
            try:
                follower.send_nowait(record)
            except trio.WouldBlock:
                pass  # a follower that does not keep up misses records, as in DMR
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._followers.discard(follower)

    def records(self, model_id: str | None = None) -> list[tuple[str, list[Record]]]:
        """(model ID, records oldest first) for one model or all that have any."""
        if model_id is not None:
            models = self._models.get(model_id)
            return [(model_id, list(models.records))] if models is not None and models.records else []
        return [(key, list(models.records)) for key, models in self._models.items() if models.records]

    def forget(self, model_id: str) -> None:
        self._models.pop(model_id, None)

    @contextmanager
    def follow(self) -> Iterator[trio.MemoryReceiveChannel[Record]]:
        """A channel of records as they finish, for as long as the block runs."""
        send, receive = trio.open_memory_channel[Record](_SUBSCRIBER_BUFFER)
        self._followers.add(send)
        try:
            yield receive
        finally:
            self._followers.discard(send)
            send.close()
            receive.close()

    @property
    def followers(self) -> int:
        return len(self._followers)


# -- rendering (pure) ---------------------------------------------------------------------------


def record_object(record: Record) -> dict[str, Any]:
    """DMR's `RequestResponsePair` JSON object for `record`."""
    obj: dict[str, Any] = {
        "id": record.id,
        "model": record.model,
        "method": record.method,
        "url": record.url,
        "request": record.request.decode("utf-8", "replace"),
    }
    # Unfinished: 0, as DMR shows a request in flight; finished without an answer: 408, as DMR.
    status = (record.status_code or 408) if record.finished else 0
    response, error = _answer(record, status)
    if response:
        obj["response"] = response
    if error:
        obj["error"] = error
    obj["timestamp"] = record.timestamp
    obj["status_code"] = status
    if record.user_agent:
        obj["user_agent"] = record.user_agent
    if record.origin:
        obj["origin"] = record.origin
    return obj


def _answer(record: Record, status: int) -> tuple[str, str]:
    """(response, error) as DMR records them: an answer with server-sent events in it is
    reassembled into the object a non-streamed request gets; one of status >= 400 is the error."""
    if not record.finished:
        return "", ""
    if record.cut:
        text = f"answer larger than the recorder keeps ({record.size} bytes)"
        return ("", _error_json(text)) if status >= 400 else (text, "")
    raw = b"".join(record.parts)
    literal = encode_model_name(record.model)
    if b"data: " in raw:
        anthropic = record.url.endswith(("/messages", "/messages/count_tokens"))
        reassemble = reassemble_anthropic_stream if anthropic else reassemble_openai_stream
        response, streaming_error = reassemble(raw.decode("utf-8", "replace"))
        if streaming_error is not None:
            return "", json.dumps(streaming_error, separators=(",", ":"))
        response = rewrite_model(response.encode(), literal).decode("utf-8", "replace")
    else:
        response = rewrite_model(raw, literal).decode("utf-8", "replace")
    if status >= 400:
        return "", _error_json(response)
    return response, ""


def _error_json(text: str) -> str:
    """`text` if it is JSON already, else `{"error": text}` (DMR's normalizeErrorToJSON)."""
    if not text:
        return '{"error": "unknown error"}'
    try:
        json.loads(text)
    except ValueError:
        return '{"error": ' + json.dumps(text) + "}"
    return text


def _may_carry_media(body: bytes) -> bool:
    return len(body) > MAX_MEDIA_CHARS and (b"image_url" in body or b"input_audio" in body)


def truncate_media(body: bytes) -> bytes:
    """The request with base64 media (`image_url.url`, `input_audio.data`) cut to 100 characters.

    Anything that is not a JSON object with `messages` comes back unchanged.
    """
    try:
        request = json.loads(body)
    except ValueError:
        return body
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list):
        return body
    changed = False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for item in content:
            if not isinstance(item, dict):
                continue
            for part, key in (("image_url", "url"), ("input_audio", "data")):
                holder = item.get(part)
                if isinstance(holder, dict) and isinstance(holder.get(key), str):
                    cut = _truncate_base64(holder[key])
                    if cut != holder[key]:
                        holder[key] = cut
                        changed = True
    return json.dumps(request, separators=(",", ":")).encode() if changed else body


def _truncate_base64(data: str) -> str:
    if len(data) <= MAX_MEDIA_CHARS:
        return data
    if data.startswith("data:"):
        prefix, comma, payload = data.partition(",")
        if comma and len(payload) > MAX_MEDIA_CHARS:
            return (
                f"{prefix},{payload[:MAX_MEDIA_CHARS]}...[truncated {len(payload) - MAX_MEDIA_CHARS} chars]"
            )
        return data
    return f"{data[:MAX_MEDIA_CHARS]}...[truncated {len(data) - MAX_MEDIA_CHARS} chars]"


def _streaming_error(
    data: str, *, code: object = None, message: object = None, kind: object = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"status_code": _STREAMING_ERROR_STATUS, "message": "streaming error"}
    if isinstance(code, (int, float)) and not isinstance(code, bool) and math.isfinite(code):
        error["status_code"] = int(code)
    if isinstance(message, str):
        error["message"] = message
    if isinstance(kind, str) and kind:
        error["type"] = kind
    error["details"] = data
    return error


def _json_object(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def reassemble_openai_stream(body: str) -> tuple[str, dict[str, Any] | None]:
    """An OpenAI chat/completions event stream as the one object a non-streamed call returns.

    Returns (response, streaming error). An `error:` line makes the error (DMR's StreamingError
    shape: status_code, message, type, details) and leaves the body as it was; a stream without
    any JSON chunk is returned unchanged.
    """
    content: list[str] = []
    reasoning: list[str] = []
    last_chunk: dict[str, Any] | None = None
    last_choice: dict[str, Any] | None = None
    for line in body.split("\n"):
        line = line.rstrip("\r")
        if line.startswith("error: "):
            data = line[len("error: ") :]
            try:
                error = json.loads(data)
            except ValueError:
                return body, {
                    "status_code": _STREAMING_ERROR_STATUS,
                    "message": "unparseable streaming error",
                    "details": data,
                }
            if not isinstance(error, dict):
                error = {}
            return body, _streaming_error(
                data, code=error.get("code"), message=error.get("message"), kind=error.get("type")
            )
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            break
        chunk = _json_object(data)
        if chunk is None:
            continue
        last_chunk = chunk
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            last_choice = choices[0]
            delta = last_choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    content.append(delta["content"])
                if isinstance(delta.get("reasoning_content"), str):
                    reasoning.append(delta["reasoning_content"])
    if last_chunk is None:
        return body, None
    choice = dict(last_choice or {})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    choice["message"] = message
    choice.pop("delta", None)
    choice.setdefault("finish_reason", "stop")
    final = {**last_chunk, "choices": [choice], "object": "chat.completion"}
    return json.dumps(final, separators=(",", ":")), None


def reassemble_anthropic_stream(body: str) -> tuple[str, dict[str, Any] | None]:
    """An Anthropic messages event stream as the one message a non-streamed call returns."""
    text: list[str] = []
    message: dict[str, Any] | None = None
    event = ""
    for line in body.split("\n"):
        line = line.rstrip("\r")
        if line.startswith("event: "):
            event = line[len("event: ") :]
            continue
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        chunk = _json_object(data)
        if chunk is None:
            continue
        kind = chunk.get("type")
        if event == "error" or kind == "error":
            found = chunk.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            return body, _streaming_error(data, message=error.get("message"), kind=error.get("type"))
        if kind == "message_start" and isinstance(chunk.get("message"), dict):
            message = dict(chunk["message"])
        elif kind == "content_block_delta":
            delta = chunk.get("delta")
            if (
                isinstance(delta, dict)
                and delta.get("type") == "text_delta"
                and isinstance(delta.get("text"), str)
            ):
                text.append(delta["text"])
        elif kind == "message_delta" and message is not None:
            if isinstance(chunk.get("usage"), dict):
                message["usage"] = chunk["usage"]
            delta = chunk.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                message["stop_reason"] = delta["stop_reason"]
    if message is None:
        return body, None
    message["content"] = [{"type": "text", "text": "".join(text)}]
    message.setdefault("stop_reason", "end_turn")
    return json.dumps(message, separators=(",", ":")), None
