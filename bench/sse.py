"""Reading OpenAI-style server-sent event bodies after the fact (pure).

The HTTP client stamps when each event arrived (``Response.event_times``); these helpers pair those
stamps with the events' content, to find e.g. the first event that carries a token.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["first_token_index", "parse_sse_events", "token_event_indices"]


def parse_sse_events(body: bytes) -> list[dict[str, Any] | str]:
    """The ``data:`` payloads of an SSE body, in order, one entry per event: parsed JSON, or the raw
    text (``[DONE]``) when it is not JSON. Events without a ``data:`` line give ``""``."""
    events: list[dict[str, Any] | str] = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        text = b"\n".join(data).decode("utf-8", errors="replace")
        try:
            value = json.loads(text)
        except ValueError:
            events.append(text)
            continue
        events.append(value if isinstance(value, dict) else text)
    return events


def _token_text(event: dict[str, Any] | str) -> str:
    if not isinstance(event, dict):
        return ""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return str(delta["content"])
    text = choice.get("text")  # /v1/completions chunks
    return text if isinstance(text, str) else ""


def token_event_indices(events: list[dict[str, Any] | str]) -> list[int]:
    """Indices of the events that carry generated text (chat ``delta.content`` or completion ``text``)."""
    return [index for index, event in enumerate(events) if _token_text(event)]


def first_token_index(events: list[dict[str, Any] | str]) -> int | None:
    """Index of the first event that carries generated text, None if none does."""
    indices = token_event_indices(events)
    return indices[0] if indices else None
