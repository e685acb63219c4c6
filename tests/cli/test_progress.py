"""Pull/push progress: parsing DMR's NDJSON lines and rendering them."""

from __future__ import annotations

import html
import io
import json

import pytest
from modelrunner.cli._errors import DaemonError
from modelrunner.cli._progress import TransferState, parse_progress_line, render_transfer
from rich.console import Console

LAYER = "sha256:" + "1234567890ab" + "0" * 52


def _line(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields})


def test_parse_progress_line() -> None:
    event = parse_progress_line(
        _line(
            "progress",
            message="Downloaded: 1 MB",
            total=300,
            mode="pull",
            layer={"id": LAYER, "size": 200, "current": 50},
        )
    )
    assert event is not None
    assert (event.kind, event.total, event.layer_id, event.layer_size, event.layer_current, event.mode) == (
        "progress",
        300,
        LAYER,
        200,
        50,
        "pull",
    )
    assert parse_progress_line("   ") is None
    info = parse_progress_line("Installing llama.cpp backend...")
    assert info is not None and info.kind == "info" and info.message == "Installing llama.cpp backend..."


def test_parse_html_escaped_text_plain() -> None:
    escaped = html.escape(_line("success", message='Using cached model: "x"'))
    assert "&#x27;" in escaped or "&quot;" in escaped
    event = parse_progress_line(escaped, html_escaped=True)
    assert event is not None and event.kind == "success" and event.message == 'Using cached model: "x"'


def test_transfer_state_never_goes_backwards() -> None:
    state = TransferState()
    for current in (100, 40, 200):
        event = parse_progress_line(
            _line("progress", total=200, layer={"id": LAYER, "size": 200, "current": current})
        )
        assert event is not None
        state.apply(event)
    layer = state.layers[LAYER]
    assert layer.current == 200 and layer.done and state.transferred == 200 and state.total == 200


def _render(lines: list[str], terminal: bool) -> tuple[str, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100, color_system=None)
    message = render_transfer(lines, console, mode="pull")
    return message, buffer.getvalue()


def _pull_lines() -> list[str]:
    other = "sha256:" + "abcdef012345" + "0" * 52
    lines = []
    for current in (0, 1_000_000, 2_000_000):
        lines.append(
            _line("progress", total=2_500_000, layer={"id": LAYER, "size": 2_000_000, "current": current})
        )
    lines.append(_line("progress", total=2_500_000, layer={"id": other, "size": 500_000, "current": 500_000}))
    lines.append(_line("warning", message="registry is slow"))
    lines.append(_line("success", message="Model pulled successfully"))
    return lines


def test_render_lines_without_terminal() -> None:
    message, output = _render(_pull_lines(), terminal=False)
    assert message == "Model pulled successfully"
    assert "1234567890ab: Pull complete 2MB" in output
    assert "abcdef012345: Pull complete 500kB" in output
    assert "warning: registry is slow" in output
    assert "Pulled 2.5MB in" in output


def test_render_bars_on_terminal() -> None:
    message, output = _render(_pull_lines(), terminal=True)
    assert message == "Model pulled successfully"
    assert "1234567890ab" in output and "total" in output and "2.5/2.5 MB" in output


def test_error_line_raises_without_prefix() -> None:
    lines = [
        _line("progress", total=10, layer={"id": LAYER, "size": 10, "current": 5}),
        _line("error", message="Error: blob digest mismatch"),
    ]
    with pytest.raises(DaemonError, match=r"^blob digest mismatch$"):
        _render(lines, terminal=False)


def test_stream_ending_early_is_an_error() -> None:
    with pytest.raises(DaemonError, match="without reporting success"):
        _render([_line("progress", total=10, layer={"id": LAYER, "size": 10, "current": 5})], terminal=False)
