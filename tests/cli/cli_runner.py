"""Run the real ``modelrunner`` command as a subprocess, plainly or on a pseudo-terminal.

End-to-end tests against the real daemon reuse these: build a ``CLI`` with the daemon's
``MODEL_RUNNER_HOST`` (``CLI({"MODEL_RUNNER_HOST": "unix:///run/…/modelrunner.sock"})``).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_BIN = Path(sys.executable).with_name("modelrunner")
COMMAND: list[str] = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "modelrunner"]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")
# Settings of the machine running the tests that must not leak into what the CLI sees.
_SCRUBBED = (
    "MODEL_RUNNER_HOST",
    "MODEL_RUNNER_SOCK",
    "HF_TOKEN",
    "NO_COLOR",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "COLUMNS",
    "LINES",
)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class CLI:
    """The ``modelrunner`` command with a fixed environment (usually the daemon's address)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        self.env = {**base, **env}

    def __call__(
        self, *args: str, input: str = "", env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> Result:
        proc = subprocess.run(
            [*COMMAND, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def spawn_pty(self, *args: str, env: Mapping[str, str] | None = None, columns: int = 120) -> PtySession:
        return PtySession([*COMMAND, *args], {**self.env, **(env or {}), "COLUMNS": str(columns)})


class PtySession:
    """The command on a pseudo-terminal: what a user at a terminal would type and see."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child
            try:
                os.execvpe(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.output = ""  # everything read so far, ANSI sequences removed
        self.raw = b""
        self._seen = 0
        self.returncode: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            raise EOFError
        self.raw += data
        self.output = strip_ansi(self.raw.decode("utf-8", errors="replace"))
        return True

    def expect(self, text: str, timeout: float = 15) -> str:
        """Wait until ``text`` appears after what earlier ``expect`` calls consumed; returns the
        output up to and including it."""
        deadline = time.monotonic() + timeout
        while True:
            index = self.output.find(text, self._seen)
            if index >= 0:
                end = index + len(text)
                chunk = self.output[self._seen : end]
                self._seen = end
                return chunk
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {text!r}; output so far:\n{self.output}")
            try:
                self._read(min(remaining, 0.2))
            except EOFError:
                raise AssertionError(
                    f"the command exited before printing {text!r}; output:\n{self.output}"
                ) from None

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def sendline(self, line: str = "") -> None:
        self.send(line + "\r")

    def interrupt(self) -> None:
        self.send("\x03")  # Ctrl-C, delivered as SIGINT by the terminal's line discipline

    def eof(self) -> None:
        self.send("\x04")  # Ctrl-D

    def wait(self, timeout: float = 15) -> int:
        """Read until the child exits; returns its exit status."""
        deadline = time.monotonic() + timeout
        closed = False
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(EOFError):
                    while not closed and self._read(0):
                        pass
                return self.returncode
            if time.monotonic() > deadline:
                raise AssertionError(f"the command did not exit; output:\n{self.output}")
            if closed:
                time.sleep(0.05)
                continue
            try:
                self._read(0.1)
            except EOFError:
                closed = True

    def close(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
