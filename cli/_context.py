"""Everything a command reads or writes besides its arguments, in one injected value.

Like HTTPie's ``Environment``: commands never touch ``sys.stdout`` or ``os.environ`` themselves, so
tests and embedders can run them with other streams and settings.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from modelrunner.cli._client import DaemonClient
from modelrunner.cli._endpoint import Endpoint, resolve_endpoint
from rich.console import Console
from rich.table import Table

__all__ = ["Context"]

# Without a terminal there is no width to fit: never wrap or cut lines that scripts parse.
_PIPE_WIDTH = 1 << 16


def _console(stream: TextIO, environ: Mapping[str, str]) -> Console:
    is_tty = _isatty(stream)
    return Console(
        file=stream,
        highlight=False,
        width=None if is_tty else _PIPE_WIDTH,
        # Honour NO_COLOR even where rich would not look (it reads os.environ, not ours).
        no_color=bool(environ.get("NO_COLOR")) or None,
        force_terminal=None,
        soft_wrap=not is_tty,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Context:
    """Streams, settings and the (lazily opened) daemon client of one CLI invocation."""

    environ: Mapping[str, str]
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    debug: bool = False
    _client: DaemonClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.out = _console(self.stdout, self.environ)
        self.err = _console(self.stderr, self.environ)

    @property
    def stdout_is_tty(self) -> bool:
        return _isatty(self.stdout)

    @property
    def stdin_is_tty(self) -> bool:
        return _isatty(self.stdin)

    def endpoint(self) -> Endpoint:
        """The daemon's address (raises UsageError for a malformed MODEL_RUNNER_HOST)."""
        return resolve_endpoint(self.environ)

    def client(self) -> DaemonClient:
        if self._client is None:
            self._client = DaemonClient(self.endpoint())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- output helpers ------------------------------------------------------------------------

    def print(self, text: str = "") -> None:
        """A plain line on stdout (no rich markup is interpreted)."""
        self.out.print(text, markup=False, highlight=False)

    def print_json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def warn(self, text: str) -> None:
        self.err.print(f"modelrunner: warning: {text}", markup=False, highlight=False)

    def print_table(self, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
        """Columns like ``docker`` prints them: a header row, no borders, left-aligned.

        Cells are never cut, on a terminal either: a shortened model name or ID cannot be copied
        into the next command. A table wider than the terminal wraps, as docker's does; trailing
        padding is stripped so ``awk``/``cut`` see clean lines.
        """
        table = Table(
            box=None,
            pad_edge=False,
            show_edge=False,
            padding=(0, 3, 0, 0),
            header_style="bold" if self.out.is_terminal else None,
        )
        for column in columns:
            table.add_column(column, no_wrap=True, overflow="ignore")
        for row in rows:
            table.add_row(*row)
        # Rendered on a console of unlimited width: the terminal's own console would squeeze cells.
        buffer = io.StringIO()
        Console(
            file=buffer,
            width=_PIPE_WIDTH,
            force_terminal=self.out.is_terminal,
            color_system=self.out.color_system,  # type: ignore[arg-type]
            no_color=self.out.no_color,
            highlight=False,
        ).print(table)
        text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
        self.stdout.write(text + "\n")
        self.stdout.flush()
