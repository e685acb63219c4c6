"""Pull/push progress: DMR's NDJSON stream in, per-layer bars (or plain lines) out.

Each line of the stream is ``{"type","message","total","layer":{"id","size","current"},"mode"}``
(reference dmr.md 1.7). ``parse_progress_line`` and ``TransferState`` are pure; ``render_transfer``
drives them from a response and draws with rich on a terminal, or prints one line per finished
layer otherwise, so logs stay readable.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from modelrunner.cli._errors import DaemonError
from modelrunner.cli._format import format_bytes_decimal
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = [
    "LayerProgress",
    "ProgressEvent",
    "TransferState",
    "parse_progress_line",
    "render_transfer",
]

EventKind = Literal["progress", "success", "warning", "error", "info"]
_KINDS: Final = ("progress", "success", "warning", "error")


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    kind: EventKind
    message: str = ""
    total: int = 0
    layer_id: str = ""
    layer_size: int = 0
    layer_current: int = 0
    mode: str = ""


def parse_progress_line(line: str, *, html_escaped: bool = False) -> ProgressEvent | None:
    """One stream line as an event; None for a blank line.

    A daemon that did not honour ``Accept: application/json`` sends ``text/plain`` with each line
    HTML-escaped (DMR does); ``html_escaped`` undoes that. A line that is not a JSON object (DMR's
    ``Installing llama.cpp backend...``) becomes an ``info`` event carrying the text.
    """
    text = html.unescape(line) if html_escaped else line
    text = text.strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return ProgressEvent("info", message=text)
    if not isinstance(value, dict):
        return ProgressEvent("info", message=text)
    kind = value.get("type")
    raw_layer = value.get("layer")
    layer: dict[str, Any] = raw_layer if isinstance(raw_layer, dict) else {}
    return ProgressEvent(
        kind=kind if kind in _KINDS else "info",
        message=str(value.get("message") or ""),
        total=_int(value.get("total")),
        layer_id=str(layer.get("id") or ""),
        layer_size=_int(layer.get("size")),
        layer_current=_int(layer.get("current")),
        mode=str(value.get("mode") or ""),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class LayerProgress:
    layer_id: str
    size: int
    current: int = 0
    done: bool = False

    @property
    def short_id(self) -> str:
        return self.layer_id.rpartition(":")[2][:12]


@dataclass(slots=True)
class TransferState:
    """What is known about a pull or push so far, folded from events in order."""

    total: int = 0
    layers: dict[str, LayerProgress] = field(default_factory=dict)

    @property
    def transferred(self) -> int:
        return sum(min(layer.current, layer.size or layer.current) for layer in self.layers.values())

    def apply(self, event: ProgressEvent) -> LayerProgress | None:
        """Fold a progress event in; returns the layer it moved (None for other events).

        A layer's byte count never goes backwards on screen: the daemon may restart a layer (a
        failed resume), and a bar that jumps back reads as a bug.
        """
        if event.total:
            self.total = max(self.total, event.total)
        if event.kind != "progress" or not event.layer_id:
            return None
        layer = self.layers.get(event.layer_id)
        if layer is None:
            layer = LayerProgress(event.layer_id, event.layer_size)
            self.layers[event.layer_id] = layer
        if event.layer_size:
            layer.size = event.layer_size
        layer.current = max(layer.current, event.layer_current)
        if layer.size and layer.current >= layer.size:
            layer.done = True
        return layer


def render_transfer(
    lines: Iterable[str],
    console: Console,
    *,
    mode: Literal["pull", "push"],
    html_escaped: bool = False,
) -> str:
    """Consume a progress stream, drawing it on ``console``; returns the success message.

    Raises:
        DaemonError: the stream carried an error line, or ended without a success line.
    """
    renderer: _Renderer = (
        _RichRenderer(console, mode) if console.is_terminal else _LineRenderer(console, mode)
    )
    state = TransferState()
    with renderer:
        for line in lines:
            event = parse_progress_line(line, html_escaped=html_escaped)
            if event is None:
                continue
            if event.kind == "error":
                message = event.message.removeprefix("Error: ").strip() or f"the {mode} failed"
                raise DaemonError(message, detail=event.message)
            layer = state.apply(event)
            if layer is not None:
                renderer.layer(state, layer)
            elif event.kind == "success":
                renderer.finish(state)
                return event.message or ("Model pulled successfully" if mode == "pull" else "Model pushed")
            elif event.kind == "warning":
                renderer.note(f"warning: {event.message}")
            elif event.message and event.kind != "progress":
                renderer.note(event.message)
    raise DaemonError(f"the daemon ended the {mode} stream without reporting success or an error")


class _Renderer:
    def __init__(self, console: Console, mode: str) -> None:
        self.console = console
        self.verb = "Pull" if mode == "pull" else "Push"

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def layer(self, state: TransferState, layer: LayerProgress) -> None:
        raise NotImplementedError

    def finish(self, state: TransferState) -> None:
        pass

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


class _LineRenderer(_Renderer):
    """For logs and pipes: a line when a layer completes, nothing per chunk."""

    def __init__(self, console: Console, mode: str) -> None:
        super().__init__(console, mode)
        self._reported: set[str] = set()
        self._started = time.monotonic()

    def layer(self, state: TransferState, layer: LayerProgress) -> None:
        if layer.done and layer.layer_id not in self._reported:
            self._reported.add(layer.layer_id)
            self.note(f"{layer.short_id}: {self.verb} complete {format_bytes_decimal(layer.size)}")

    def finish(self, state: TransferState) -> None:
        # Layers whose last update never reached their size (a daemon that skips the final tick).
        for layer in state.layers.values():
            if layer.layer_id not in self._reported:
                self._reported.add(layer.layer_id)
                self.note(f"{layer.short_id}: {self.verb} complete {format_bytes_decimal(layer.size)}")
        if state.total:
            elapsed = max(time.monotonic() - self._started, 1e-3)
            self.note(
                f"{self.verb}ed {format_bytes_decimal(state.total)} in {elapsed:.1f}s "
                f"({format_bytes_decimal(state.transferred / elapsed)}/s)"
            )


class _RichRenderer(_Renderer):
    """On a terminal: one bar per layer plus a total bar, each with size, speed and ETA."""

    def __init__(self, console: Console, mode: str) -> None:
        super().__init__(console, mode)
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        # The total bar comes first so it stays in one place while layer bars are added below it.
        self._total_task = self._progress.add_task("total", total=None)
        self._done_mark = "✓" if console.encoding.lower().startswith("utf") else "done"

    def __enter__(self) -> _Renderer:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def note(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def layer(self, state: TransferState, layer: LayerProgress) -> None:
        task = self._tasks.get(layer.layer_id)
        if task is None:
            task = self._progress.add_task(layer.short_id, total=layer.size or None)
            self._tasks[layer.layer_id] = task
        self._progress.update(task, total=layer.size or None, completed=layer.current)
        if layer.done:
            self._progress.update(task, description=f"{layer.short_id} {self._done_mark}")
        self._update_total(state)

    def finish(self, state: TransferState) -> None:
        for layer_id, task in self._tasks.items():
            layer = state.layers[layer_id]
            self._progress.update(
                task, completed=layer.size or layer.current, description=f"{layer.short_id} {self._done_mark}"
            )
        self._update_total(state, final=True)

    def _update_total(self, state: TransferState, *, final: bool = False) -> None:
        total = state.total or sum(layer.size for layer in state.layers.values()) or None
        completed = (total or state.transferred) if final else state.transferred
        self._progress.update(self._total_task, total=total, completed=completed)
