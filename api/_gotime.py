"""Go's RFC 3339 rendering of a `time.Time`, which DMR's JSON answers (and Ollama's) carry. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["go_time"]


def go_time(moment: datetime) -> str:
    """UTC, `Z`, the fraction with its trailing zeros trimmed (`2026-01-10T12:00:00.5Z`), as Go
    marshals a `time.Time`; a naive `moment` is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"
