"""Pure formatting: the daemon's JSON in, table rows and human strings out.

Nothing here does I/O, so every rule (how names are shortened, how "3 days ago" and "1.23GB" are
written, what ``ps`` shows in UNTIL) is tested with plain values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "ModelRow",
    "RunnerRow",
    "display_name",
    "format_bytes_decimal",
    "format_duration_ago",
    "format_until",
    "model_rows",
    "parse_byte_size",
    "parse_go_duration",
    "runner_rows",
    "short_id",
    "split_repo_tag",
]


def display_name(tag: str) -> str:
    """Shorten a stored, fully qualified tag the way DMR's CLI shows it:
    ``docker.io/ai/smollm2:latest`` -> ``smollm2``; ``huggingface.co/org/m:Q4_K_M`` is kept.

    The same rule as ``modelrunner.distribution.reference.display_name``, restated because
    importing distribution/ loads trio and the registry client, which would add about half a
    second to every command (a test keeps the two in step).
    """
    name = tag
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.startswith("ai/"):
        name = name[len("ai/") :]
    if name.endswith(":latest"):
        name = name[: -len(":latest")]
    return name


def short_id(model_id: str) -> str:
    """The 12-hex short form of ``sha256:<hex>`` (what ``ls`` and ``-q`` print)."""
    _, _, hex_part = model_id.rpartition(":")
    return hex_part[:12]


def split_repo_tag(target: str) -> tuple[str, str]:
    """Split ``repo[:tag]`` at the last ``:`` that follows the last ``/``; no tag means ``latest``.

    Raises:
        ValueError: the target is empty, has a digest, or an empty repository or tag part.
    """
    target = target.strip()
    if not target:
        raise ValueError("the target reference is empty")
    if "@" in target:
        raise ValueError(f"{target!r}: a tag target cannot contain a digest (@sha256:…)")
    slash = target.rfind("/")
    colon = target.rfind(":")
    if colon > slash:
        repo, tag = target[:colon], target[colon + 1 :]
        if not tag:
            raise ValueError(f"{target!r} has an empty tag after ':'")
    else:
        repo, tag = target, "latest"
    if not repo or repo.endswith("/"):
        raise ValueError(f"{target!r} has no repository name")
    return repo, tag


# --- sizes and durations ----------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_byte_size(text: str) -> int:
    """Bytes from ``"8GiB"``, ``"512MiB"``, ``"1.5G"`` (decimal) or a plain integer.

    Raises:
        ValueError: not a size, an unknown unit, or zero.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; use bytes or a unit such as 512MiB, 8GiB, 16GB")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"{text!r}: unknown unit {unit!r}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    value = int(float(number) * factor) if "." in number else int(number) * factor
    if value <= 0:
        raise ValueError(f"{text!r}: the size must be more than zero")
    return value


def format_bytes_decimal(size: int | float) -> str:
    """Docker's decimal style: ``1.23GB``, ``456MB``, ``0B`` (DMR's ``df``)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    value = float(size)
    index = 0
    while value >= 1000 and index < len(units) - 1:
        value /= 1000
        index += 1
    if index == 0:
        return f"{int(value)}B"
    return f"{value:.3g}{units[index]}" if value < 100 else f"{value:.0f}{units[index]}"


def format_duration_ago(then: datetime, now: datetime) -> str:
    """``"3 days ago"``, docker's human-duration wording."""
    seconds = (now - then).total_seconds()
    if seconds < 0:
        return "In the future"
    return f"{_human_duration(seconds)} ago"


def _human_duration(seconds: float) -> str:
    # Same buckets as Docker's go-units HumanDuration, which DMR's CLI uses for CREATED.
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if round(minutes) == 1:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = round(minutes / 60)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> timedelta | None:
    """A Go duration string (``"5m0s"``, ``"1h30m"``, ``"0"``) as a timedelta.

    Returns None for a negative value (``"-1"``: DMR's "never expire"). Raises ValueError otherwise
    when the text is not a duration.
    """
    text = text.strip()
    if text.startswith("-"):
        return None
    if text in ("0", ""):
        return timedelta(0)
    pos = 0
    total = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration like 5m, 1h30m or 90s")
    return timedelta(seconds=total)


# --- ls ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: str
    parameters: str
    quantization: str
    architecture: str
    model_id: str
    created: str
    context: str
    size: str

    def cells(self) -> tuple[str, ...]:
        return (
            self.name,
            self.parameters,
            self.quantization,
            self.architecture,
            self.model_id,
            self.created,
            self.context,
            self.size,
        )


MODEL_COLUMNS = (
    "MODEL NAME",
    "PARAMETERS",
    "QUANTIZATION",
    "ARCHITECTURE",
    "MODEL ID",
    "CREATED",
    "CONTEXT",
    "SIZE",
)


def model_rows(models: Iterable[Any], now: datetime, name_filter: str = "") -> list[ModelRow]:
    """One row per tag (``<none>`` for an untagged model), as DMR's ``ls`` prints them.

    ``name_filter`` keeps rows whose displayed or stored name contains it (case-insensitive).
    """
    rows: list[ModelRow] = []
    needle = name_filter.lower()
    for model in models:
        if not isinstance(model, Mapping):
            continue
        config = model.get("config")
        config = config if isinstance(config, Mapping) else {}
        created_unix = model.get("created")
        created = (
            format_duration_ago(datetime.fromtimestamp(created_unix, UTC), now)
            if isinstance(created_unix, int | float) and created_unix > 0
            else ""
        )
        tags = model.get("tags")
        names = [str(t) for t in tags] if isinstance(tags, list) and tags else []
        shown = [(display_name(t), t) for t in names] or [("<none>", "")]
        for name, full in shown:
            if needle and needle not in name.lower() and needle not in full.lower():
                continue
            rows.append(
                ModelRow(
                    name=name,
                    parameters=_text(config.get("parameters")),
                    quantization=_text(config.get("quantization")),
                    architecture=_text(config.get("architecture")),
                    model_id=short_id(_text(model.get("id"))),
                    created=created,
                    context=_context_size(config),
                    size=_text(config.get("size")),
                )
            )
    return rows


def _context_size(config: Mapping[str, Any]) -> str:
    context = config.get("context_size")
    if isinstance(context, int) and context > 0:
        return str(context)
    gguf = config.get("gguf")
    if isinstance(gguf, Mapping):
        arch = gguf.get("general.architecture")
        value = gguf.get(f"{arch}.context_length") if arch else None
        if value is None:
            value = next((v for k, v in gguf.items() if str(k).endswith(".context_length")), None)
        if value is not None:
            return _text(value)
    return ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    # Older artifacts write "361.82 M"; DMR's CLI shows them without the space.
    return (
        str(value).replace(" ", "")
        if isinstance(value, str) and re.fullmatch(r"[\d.]+ \w+", value)
        else str(value)
    )


# --- ps ---------------------------------------------------------------------------------------

RUNNER_COLUMNS = ("MODEL NAME", "BACKEND", "MODE", "UNTIL")
DEFAULT_KEEP_ALIVE = timedelta(minutes=5)  # DMR's idle timeout when a model sets none


@dataclass(frozen=True, slots=True)
class RunnerRow:
    model: str
    backend: str
    mode: str
    until: str

    def cells(self) -> tuple[str, ...]:
        return (self.model, self.backend, self.mode, self.until)


def format_until(runner: Mapping[str, Any], now: datetime) -> str:
    """When an idle runner will be unloaded: ``Loading...``, ``In use``, ``Forever``, ``Expiring``,
    or ``N minutes from now``."""
    if runner.get("loading"):
        return "Loading..."
    if runner.get("in_use"):
        return "In use"
    keep_alive_text = runner.get("keep_alive")
    try:
        keep_alive = (
            parse_go_duration(str(keep_alive_text)) if keep_alive_text is not None else DEFAULT_KEEP_ALIVE
        )
    except ValueError:
        keep_alive = DEFAULT_KEEP_ALIVE
    if keep_alive is None:
        return "Forever"
    last_used = _parse_time(runner.get("last_used"))
    if last_used is None:
        return ""
    remaining = (last_used + keep_alive - now).total_seconds()
    if remaining <= 0:
        return "Expiring"
    return f"{_human_duration(remaining)} from now"


def runner_rows(runners: Iterable[Any], now: datetime) -> list[RunnerRow]:
    rows = []
    for runner in runners:
        if not isinstance(runner, Mapping):
            continue
        rows.append(
            RunnerRow(
                model=display_name(_text(runner.get("model_name"))),
                backend=_text(runner.get("backend_name")),
                mode=_text(runner.get("mode")),
                until=format_until(runner, now),
            )
        )
    return rows


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go writes nanoseconds; Python takes at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
