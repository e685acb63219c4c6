"""Engine log tails and the translation of the common failures into one clear sentence.

An engine that dies while loading leaves the reason in its last log lines; DMR keeps the last KiB
of stderr and runs it through a small translator (``backends/llamacpp/errors.go``). We do the same:
``LogTail`` keeps a bounded tail of the log as lines, ``translate_failure`` finds the known causes
(first match wins, most specific first) and ``failure_message`` renders DMR's shape::

    llama.cpp failed: not enough memory to load the model

    Verbose output:
    <last KiB of the log>
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ERROR_TAIL_BYTES", "LogTail", "Translation", "failure_message", "translate_failure"]

# What an error message carries of the log (DMR keeps 1 KiB; its "Verbose output" up to 4 KiB).
ERROR_TAIL_BYTES = 1024


class LogTail:
    """The last ``max_bytes`` of a log, kept as whole lines (a partial line is completed by the
    next feed). Bounded: feeding an endless log costs O(max_bytes) memory."""

    def __init__(self, max_bytes: int = 16 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0
        self._partial = ""

    def feed(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = self._partial + text
        if len(text) > self.max_bytes:
            # A busy engine logs a few KiB per request; only the last lines can stay, so the rest
            # is skipped instead of being pushed only to be evicted again.
            text = self._skip_evicted(text)
        *complete, self._partial = text.split("\n")
        if len(self._partial) > self.max_bytes:
            self._partial = self._partial[-self.max_bytes :]
        for line in complete:
            self._push(line.rstrip("\r"))

    def _skip_evicted(self, text: str) -> str:
        """`text` without the complete lines that feeding it would evict (and, when it has such
        lines, with the kept lines cleared, as they would be evicted too)."""
        end = text.rfind("\n")
        size = 0
        while end >= 0:
            start = text.rfind("\n", 0, end) + 1
            size += min(len(text[start:end].rstrip("\r")), self.max_bytes) + 1
            if size > self.max_bytes:
                self._lines.clear()
                self._size = 0
                return text[end + 1 :]
            end = start - 1
        return text

    def _push(self, line: str) -> None:
        if len(line) > self.max_bytes:
            line = line[-self.max_bytes :]
        self._lines.append(line)
        self._size += len(line) + 1
        while self._size > self.max_bytes and self._lines:
            self._size -= len(self._lines.popleft()) + 1

    def lines(self) -> list[str]:
        out = list(self._lines)
        if self._partial:
            out.append(self._partial)
        return out

    def text(self, max_bytes: int | None = None) -> str:
        """The tail as text, cut at a line start so it is at most ``max_bytes`` long."""
        lines = self.lines()
        if max_bytes is None:
            return "\n".join(lines)
        kept: list[str] = []
        size = 0
        for line in reversed(lines):
            if size + len(line) + 1 > max_bytes:
                if not kept:
                    kept.append(line[-max_bytes:])
                break
            kept.append(line)
            size += len(line) + 1
        return "\n".join(reversed(kept))


@dataclass(frozen=True, slots=True)
class Translation:
    reason: str
    """One sentence, lower case like DMR's: "not enough memory to load the model"."""
    out_of_memory: bool = False


# (pattern, reason); the reason may use the pattern's named group "detail".
_RULES: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (re.compile(r"cudaMalloc failed: out of memory|CUDA error: out of memory|CUDA_ERROR_OUT_OF_MEMORY"),
     "not enough GPU memory to load the model (CUDA)", True),
    (re.compile(r"ggml_metal.*(failed to allocate|out of memory)", re.I),
     "not enough GPU memory to load the model (Metal)", True),
    (re.compile(r"vk::OutOfDeviceMemoryError|ErrorOutOfDeviceMemory"),
     "not enough GPU memory to load the model (Vulkan)", True),
    (re.compile(r"unable to allocate (?P<detail>\S+) buffer|failed to allocate buffer for (?P<what>kv cache)"
                r"|failed to allocate compute (pp |tg )?buffers|std::bad_alloc|Cannot allocate memory"),
     "not enough memory to load the model", True),
    (re.compile(r"error loading model: (?P<detail>.+)"), "failed to load model: {detail}", False),
    (re.compile(r"failed to load model"), "failed to load model", False),
    (re.compile(r"failed to create.?context"), "failed to create the model context", False),
    (re.compile(r"error: invalid argument: (?P<detail>.+)"), "invalid engine argument: {detail}", False),
    (re.compile(r"error while handling argument \"?(?P<detail>[^\"]+)\"?"),
     "invalid engine argument: {detail}", False),
    (re.compile(r"couldn't bind HTTP server socket"),
     "the engine could not listen on its socket (a stale socket file?)", False),
    (re.compile(r"Illegal instruction|SIGILL"), "the engine binary does not support this CPU", False),
)


def translate_failure(lines: Iterable[str], *, oom_killed: bool = False) -> Translation | None:
    """The known cause of an engine failure in its log lines, or None.

    ``oom_killed`` (the cgroup OOM killer ended the task) wins over anything in the log.
    """
    if oom_killed:
        return Translation("not enough memory to load the model (killed by the out-of-memory killer)", True)
    lines = list(lines)
    for pattern, reason, oom in _RULES:
        for line in lines:
            match = pattern.search(line)
            if match is None:
                continue
            detail = (match.groupdict().get("detail") or "").strip().rstrip(".")
            return Translation(reason.format(detail=detail) if "{detail}" in reason else reason, oom)
    return None


def failure_message(
    engine: str, tail: LogTail, *, oom_killed: bool = False, exit_code: int | None = None,
    max_bytes: int = ERROR_TAIL_BYTES,
) -> str:
    """DMR's error shape: ``<engine> failed: <reason>`` plus the verbose tail of the log."""
    translation = translate_failure(tail.lines(), oom_killed=oom_killed)
    if translation is not None:
        head = f"{engine} failed: {translation.reason}"
    elif exit_code is not None:
        head = f"{engine} terminated unexpectedly (exit code {exit_code})"
    else:
        head = f"{engine} terminated unexpectedly"
    verbose = tail.text(max_bytes)
    return f"{head}\n\nVerbose output:\n{verbose}" if verbose else head
