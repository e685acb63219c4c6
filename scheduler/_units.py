"""Parsing and rendering of keep-alive durations and memory sizes (pure; no I/O).

Keep-alive follows DMR and Ollama: a Go duration string (``"5m"``, ``"1h30m"``, ``"250ms"``), ``"0"``
(unload right after use), or any negative value (``"-1"``, ``"-1s"``: never unload when idle). A bare
number is seconds, as Ollama accepts it. In Python the value is float seconds, with every negative
value normalised to ``KEEP_ALIVE_FOREVER`` (-1.0).

Memory sizes accept bytes (``"1073741824"``), binary units (``KiB MiB GiB TiB``, also ``K M G T`` and
``Ki Mi Gi Ti``) and decimal ones (``kB MB GB TB``). A budget spec (``MODELRUNNER_MEMORY``) is either
one size (host RAM) or comma-separated ``device=size`` pairs, e.g. ``ram=24GiB,cuda:0=20GiB``.
"""

from __future__ import annotations

import math
import re

from modelrunner.scheduler._errors import InvalidConfiguration

__all__ = [
    "KEEP_ALIVE_FOREVER",
    "RAM",
    "format_keep_alive",
    "parse_keep_alive",
    "parse_memory_budget",
    "parse_size",
]

KEEP_ALIVE_FOREVER = -1.0
RAM = "ram"
"""Ledger device name of host RAM; GPUs use the ids engines/ puts in ``MemoryEstimate.vram``."""

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def parse_keep_alive(text: str | float | int) -> float:
    """Seconds to keep an idle runner loaded; ``KEEP_ALIVE_FOREVER`` for "never unload".

    Raises:
        InvalidConfiguration: not a duration.
    """
    if isinstance(text, bool):
        raise InvalidConfiguration(f"invalid keep_alive {text!r}: expected a duration such as '5m'")
    seconds = float(text) if isinstance(text, int | float) else _parse_duration(text.strip().strip("'\""))
    if math.isnan(seconds) or (math.isinf(seconds) and seconds > 0):
        raise InvalidConfiguration(f"invalid keep_alive {text!r}: expected a finite duration")
    return KEEP_ALIVE_FOREVER if seconds < 0 else seconds


def _parse_duration(text: str) -> float:
    if not text:
        raise InvalidConfiguration("invalid keep_alive '': expected a duration such as '5m', '0' or '-1'")
    if _NUMBER.fullmatch(text):
        return float(text)
    sign = 1.0
    body = text
    if body[0] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    total = 0.0
    position = 0
    for match in _GO_COMPONENT.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position != len(body) or not body:
        raise InvalidConfiguration(
            f"invalid keep_alive {text!r}: expected a duration such as '5m', '1h30m', '0' or '-1'"
        )
    return sign * total


def format_keep_alive(seconds: float) -> str:
    """Render as DMR does: a Go duration string (``"5m0s"``, ``"1.5s"``, ``"0s"``) or ``"-1"``."""
    if seconds < 0:
        return "-1"
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    if nanos < 1_000_000_000:
        # Go prints sub-second durations in the largest unit that keeps an integer part.
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return f"{_trim(nanos / size)}{unit}"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = rest / 1e9
    if hours:
        return f"{hours}h{minutes}m{_trim(secs)}s"
    if minutes:
        return f"{minutes}m{_trim(secs)}s"
    return f"{_trim(secs)}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "ki": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mi": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gi": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "ti": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}


def parse_size(text: str) -> int:
    """Bytes from ``"24GiB"``, ``"512M"``, ``"2GB"`` or ``"1073741824"``.

    Raises:
        InvalidConfiguration: not a size.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise InvalidConfiguration(f"invalid memory size {text!r}: expected bytes or a size such as '24GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_memory_budget(text: str) -> dict[str, int]:
    """A ``MODELRUNNER_MEMORY`` value as a per-device budget in bytes.

    ``"24GiB"`` budgets host RAM; ``"ram=24GiB,cuda:0=20GiB"`` budgets each named device. Devices not
    named are detected by the scheduler.

    Raises:
        InvalidConfiguration: malformed spec, repeated device or a negative size.
    """
    budget: dict[str, int] = {}
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise InvalidConfiguration("empty memory budget: expected e.g. '24GiB' or 'ram=24GiB,cuda:0=20GiB'")
    for part in parts:
        device, sep, size = part.rpartition("=")
        device = device.strip() if sep else RAM
        if not device:
            raise InvalidConfiguration(f"invalid memory budget entry {part!r}: empty device name")
        if device in budget:
            raise InvalidConfiguration(f"memory budget names device {device!r} twice")
        budget[device] = parse_size(size)
    return budget
