"""Pull/push progress events in DMR's NDJSON shape, and the throttle that paces them.

One event is one line ``{"type","message","total","layer":{"id","size","current"},"mode"}``
(dmr.md 1.7): ``type`` is ``progress``, ``success``, ``warning`` or ``error``; ``total`` the bytes of
all layers; ``layer.id`` the layer digest (left out when empty); ``mode`` ``pull`` or ``push``.
Per-layer updates go out when 100 ms have passed, 1 MiB more has moved, or the layer is done.
Everything here is pure; the clock is passed in.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "EventType",
    "LayerProgress",
    "Mode",
    "ProgressCallback",
    "ProgressEvent",
    "ProgressThrottle",
]

UPDATE_INTERVAL: Final = 0.1  # seconds
MIN_BYTES_FOR_UPDATE: Final = 1024 * 1024


class EventType(enum.StrEnum):
    PROGRESS = "progress"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"


class Mode(enum.StrEnum):
    PULL = "pull"
    PUSH = "push"


@dataclass(frozen=True, slots=True)
class LayerProgress:
    id: str = ""
    size: int = 0
    current: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id:
            out["id"] = self.id
        out["size"] = self.size
        out["current"] = self.current
        return out


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One progress line. Build with the class methods; render with :meth:`to_json_line`."""

    type: EventType
    message: str
    mode: Mode
    total: int = 0
    layer: LayerProgress = field(default_factory=LayerProgress)

    @classmethod
    def transfer(cls, mode: Mode, total: int, layer_id: str, size: int, current: int) -> ProgressEvent:
        verb = "Downloaded" if mode is Mode.PULL else "Uploaded"
        return cls(EventType.PROGRESS, f"{verb}: {current / 1024 / 1024:.2f} MB", mode, total,
                   LayerProgress(layer_id, size, current))

    @classmethod
    def info(cls, mode: Mode, message: str) -> ProgressEvent:
        return cls(EventType.PROGRESS, message, mode)

    @classmethod
    def success(cls, mode: Mode, message: str) -> ProgressEvent:
        return cls(EventType.SUCCESS, message, mode)

    @classmethod
    def warning(cls, mode: Mode, message: str) -> ProgressEvent:
        return cls(EventType.WARNING, message, mode)

    @classmethod
    def error(cls, mode: Mode, message: str) -> ProgressEvent:
        """DMR prefixes error lines with ``Error: ``."""
        return cls(EventType.ERROR, f"Error: {message}", mode)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": str(self.type),
            "message": self.message,
            "total": self.total,
            "layer": self.layer.to_json(),
            "mode": str(self.mode),
        }

    def to_json_line(self) -> bytes:
        """The NDJSON line, newline included (Go's encoder escapes ``<``, ``>``, ``&`` too)."""
        text = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return text.encode() + b"\n"

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ProgressEvent:
        """Parse a line a daemon sent (for the CLI)."""
        layer = value.get("layer") or {}
        return cls(
            EventType(value.get("type", "progress")),
            str(value.get("message", "")),
            Mode(value.get("mode", "pull")),
            int(value.get("total", 0)),
            LayerProgress(str(layer.get("id", "")), int(layer.get("size", 0)), int(layer.get("current", 0))),
        )


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressThrottle:
    """Decides which per-layer updates to emit (DMR's reporter rule), per layer.

    Call :meth:`update` with the layer's running byte count; it returns the event to emit, or None.
    """

    def __init__(self, mode: Mode, total: int, clock: Callable[[], float]) -> None:
        self._mode = mode
        self._total = total
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def update(self, layer_id: str, size: int, current: int) -> ProgressEvent | None:
        now = self._clock()
        last_time, last_bytes = self._last.get(layer_id, (float("-inf"), 0))
        due = now - last_time >= UPDATE_INTERVAL or current - last_bytes >= MIN_BYTES_FOR_UPDATE
        if due or current == size:
            self._last[layer_id] = (now, current)
            return ProgressEvent.transfer(self._mode, self._total, layer_id, size, current)
        return None
