"""`GET /logs[?follow=true&no-engines=true]`: the daemon's and the engines' log files, merged.

As in DMR, log lines start with a bracketed timestamp (`[2026-11-27T16:00:00.123Z] message`). The
service log and the engine logs are merged by that timestamp (a line without one stays with the
line before it); with `follow` the files are then watched and new complete lines are sent as they
appear, until the client leaves. A file that shrinks was rotated or truncated and is read again
from its start.

`merge_log_lines` and `parse_go_bool` are pure.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

__all__ = ["LogFiles", "follow_logs", "merge_log_lines", "parse_go_bool", "read_log_files"]

_POLL_INTERVAL = 0.25
_MAX_INITIAL_BYTES = 8 << 20  # per file: the tail a request without follow gets at most


def parse_go_bool(value: str) -> bool:
    """Go's `strconv.ParseBool`. Raises ValueError for anything else."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"invalid boolean {value!r}")


def _timestamp(line: bytes) -> bytes | None:
    if line.startswith(b"["):
        end = line.find(b"]", 1, 64)
        if end > 0:
            return line[1:end]
    return None


def _entries(lines: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """(timestamp, text) per entry; continuation lines join the entry before them."""
    entries: list[tuple[bytes, bytes]] = []
    for line in lines:
        stamp = _timestamp(line)
        if stamp is None and entries:
            previous_stamp, text = entries[-1]
            entries[-1] = (previous_stamp, text + line)
        else:
            entries.append((stamp or b"", line))
    return entries


def merge_log_lines(sources: Sequence[Iterable[bytes]]) -> list[bytes]:
    """Merge line sequences (each in time order, lines with their newline) by leading timestamp.

    RFC 3339 timestamps in UTC sort as text, so no parsing is needed; ties keep source order.
    """
    keyed = [
        [(stamp, index, position, text) for position, (stamp, text) in enumerate(_entries(lines))]
        for index, lines in enumerate(sources)
    ]
    return [text for _, _, _, text in heapq.merge(*keyed)]


@dataclass(frozen=True)
class LogFiles:
    service: Path
    engines: tuple[Path, ...]


def _read_tail(path: Path) -> tuple[list[bytes], int]:
    """Complete lines of the last `_MAX_INITIAL_BYTES` of `path`, and the offset read up to."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            start = max(0, size - _MAX_INITIAL_BYTES)
            handle.seek(start)
            data = handle.read(size - start)
    except FileNotFoundError:
        return [], 0
    begin = 0
    if start > 0:  # the first line is probably cut: drop it
        newline = data.find(b"\n")
        begin = len(data) if newline < 0 else newline + 1
    cut = max(begin, data.rfind(b"\n") + 1)  # a last line without newline is still being written
    return data[begin:cut].splitlines(keepends=True), start + cut


def read_log_files(files: LogFiles, *, engines: bool) -> tuple[bytes, dict[Path, int]]:
    """The merged current content and, per file, the offset where following continues. Blocking."""
    paths = [files.service, *(files.engines if engines else ())]
    sources: list[list[bytes]] = []
    offsets: dict[Path, int] = {}
    for path in paths:
        lines, offset = _read_tail(path)
        sources.append(lines)
        offsets[path] = offset
    return b"".join(merge_log_lines(sources)), offsets


def _read_new(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            if size < offset:
                offset = 0  # truncated or replaced: start over
            if size == offset:
                return b"", offset
            handle.seek(offset)
            data = handle.read(min(size - offset, 4 << 20))
    except FileNotFoundError:
        return b"", 0
    cut = data.rfind(b"\n") + 1
    return data[:cut], offset + cut


async def follow_logs(offsets: dict[Path, int]) -> AsyncGenerator[bytes, None]:
    """Yield new complete lines from the files in `offsets`, forever (poll every 250 ms)."""
    while True:
        await trio.sleep(_POLL_INTERVAL)
        for path in list(offsets):
            data, offsets[path] = await trio.to_thread.run_sync(_read_new, path, offsets[path])
            if data:
                yield data
