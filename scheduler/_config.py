"""Per-model runner configuration (DMR's ``_configure``), kept per (backend, model ID, mode) and
persisted across daemon restarts as one JSON file replaced atomically.

DMR keeps these settings in memory and loses them on restart (its users report context sizes that
silently reset); here every change is written to a temp file, fsynced and renamed over the old one,
so a crash leaves either the old or the new file, never a torn one. A file that cannot be read is
moved aside (``<name>.corrupt-<time>``) and the daemon starts with no configs instead of refusing to
start: bad input must never take the daemon down or be silently overwritten.

The request parsing is pure: ``ConfigureRequest.from_json`` takes the decoded JSON body of
``POST /engines/_configure`` (DMR's mixed key styles: ``context-size``, ``runtime-flags``,
``raw-runtime-flags``, ``keep_alive``) and validates types.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from modelrunner.engines import Mode, RunnerConfig
from modelrunner.scheduler._errors import InvalidConfiguration
from modelrunner.scheduler._units import format_keep_alive, parse_keep_alive

__all__ = [
    "ConfigStore",
    "ConfigureRequest",
    "ModelConfig",
    "RunnerKey",
]

log = logging.getLogger(__name__)

FILE_VERSION = 1
_EXTRA_KEYS = ("speculative", "vllm", "llamacpp")
_INT32_MAX = 2**31 - 1


class RunnerKey(NamedTuple):
    """Identity of a runner: one engine task per (backend, model ID, mode)."""

    backend: str
    model_id: str
    mode: Mode

    def __str__(self) -> str:
        return f"{self.backend}/{self.model_id}/{self.mode}"


@dataclass(frozen=True)
class ConfigureRequest:
    """One ``_configure`` call. ``None`` means the field was absent."""

    model: str
    backend: str | None = None
    mode: Mode | None = None
    context_size: int | None = None
    runtime_flags: tuple[str, ...] | None = None
    raw_runtime_flags: str | None = None
    keep_alive: float | None = None
    """Seconds; ``KEEP_ALIVE_FOREVER`` (-1) for never."""
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """``speculative``, ``vllm`` and ``llamacpp`` objects, kept verbatim for the backend."""

    @classmethod
    def from_json(cls, body: object, *, backend: str | None = None) -> ConfigureRequest:
        """Validate a decoded ``_configure`` JSON body; ``backend`` is the path segment, if any.

        Raises:
            InvalidConfiguration: wrong types, empty model, unknown mode, bad keep_alive.
        """
        if not isinstance(body, Mapping):
            raise InvalidConfiguration("invalid request: the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidConfiguration("invalid request: 'model' is required")
        mode: Mode | None = None
        raw_mode = body.get("mode")
        if raw_mode not in (None, ""):
            try:
                mode = Mode(raw_mode)
            except ValueError:
                known = ", ".join(m.value for m in Mode)
                raise InvalidConfiguration(f"invalid mode {raw_mode!r}; expected one of {known}") from None
        context_size = body.get("context-size", body.get("context_size"))
        if context_size is not None:
            if isinstance(context_size, bool) or not isinstance(context_size, int):
                raise InvalidConfiguration(f"invalid context-size {context_size!r}: expected an integer")
            if not -1 <= context_size <= _INT32_MAX:
                raise InvalidConfiguration(
                    f"invalid context-size {context_size}: expected -1 or a positive int32"
                )
            if context_size == 0 or context_size < -1:
                context_size = None  # DMR: values <= 0 other than -1 are ignored
        flags = body.get("runtime-flags", body.get("runtime_flags"))
        runtime_flags: tuple[str, ...] | None = None
        if flags is not None:
            if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
                raise InvalidConfiguration("invalid runtime-flags: expected an array of strings")
            runtime_flags = tuple(flags)
        raw = body.get("raw-runtime-flags", body.get("raw_runtime_flags"))
        if raw is not None and not isinstance(raw, str):
            raise InvalidConfiguration("invalid raw-runtime-flags: expected a string")
        if raw and runtime_flags is None:
            try:
                shlex.split(raw)
            except ValueError as exc:
                raise InvalidConfiguration(f"invalid raw-runtime-flags {raw!r}: {exc}") from None
        keep_alive: float | None = None
        raw_keep_alive = body.get("keep_alive", body.get("keep-alive"))
        if raw_keep_alive not in (None, ""):
            if not isinstance(raw_keep_alive, str | int | float) or isinstance(raw_keep_alive, bool):
                raise InvalidConfiguration(f"invalid keep_alive {raw_keep_alive!r}: expected a duration")
            keep_alive = parse_keep_alive(raw_keep_alive)
        extra = {key: body[key] for key in _EXTRA_KEYS if body.get(key) is not None}
        for key, value in extra.items():
            if not isinstance(value, Mapping):
                raise InvalidConfiguration(f"invalid {key}: expected an object")
        return cls(
            model=model.strip(),
            backend=backend or None,
            mode=mode,
            context_size=context_size,
            runtime_flags=runtime_flags,
            raw_runtime_flags=raw or None,
            keep_alive=keep_alive,
            extra=MappingProxyType(extra),
        )

    def effective_runtime_flags(self) -> tuple[str, ...]:
        """``runtime-flags`` wins over ``raw-runtime-flags`` (shell-split), as in DMR."""
        if self.runtime_flags is not None:
            return self.runtime_flags
        if self.raw_runtime_flags:
            return tuple(shlex.split(self.raw_runtime_flags))
        return ()

    def effective_mode(self) -> Mode:
        """The given mode, else embedding if the flags ask for embeddings, else completion (DMR)."""
        if self.mode is not None:
            return self.mode
        flags = self.effective_runtime_flags()
        if "--embeddings" in flags or "--embedding" in flags:
            return Mode.EMBEDDING
        return Mode.COMPLETION


@dataclass(frozen=True)
class ModelConfig:
    """The stored configuration of one (backend, model ID, mode)."""

    backend: str
    model_id: str
    model: str
    """The reference the user configured (DMR's ``Model``), for display."""
    mode: Mode
    context_size: int | None = None
    runtime_flags: tuple[str, ...] = ()
    keep_alive: float | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def key(self) -> RunnerKey:
        return RunnerKey(self.backend, self.model_id, self.mode)

    def runner_config(self) -> RunnerConfig:
        return RunnerConfig(context_size=self.context_size, runtime_flags=self.runtime_flags)

    def same_runner_settings(self, other: ModelConfig) -> bool:
        """Whether a runner started with ``self`` may keep serving under ``other``.

        Only keep_alive and the display name may change without a restart.
        """
        return (
            self.context_size == other.context_size
            and self.runtime_flags == other.runtime_flags
            and dict(self.extra) == dict(other.extra)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "model": self.model,
            "mode": self.mode.value,
            "context_size": self.context_size,
            "runtime_flags": list(self.runtime_flags),
            "keep_alive": None if self.keep_alive is None else format_keep_alive(self.keep_alive),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, raw: object) -> ModelConfig:
        """Raises InvalidConfiguration for a malformed record."""
        if not isinstance(raw, Mapping):
            raise InvalidConfiguration("config record is not an object")
        try:
            backend, model_id, model = raw["backend"], raw["model_id"], raw["model"]
            mode = Mode(raw["mode"])
        except (KeyError, ValueError) as exc:
            raise InvalidConfiguration(f"config record lacks a valid {exc}") from None
        if not all(isinstance(v, str) and v for v in (backend, model_id, model)):
            raise InvalidConfiguration("config record has an empty backend, model_id or model")
        context_size = raw.get("context_size")
        if context_size is not None and (isinstance(context_size, bool) or not isinstance(context_size, int)):
            raise InvalidConfiguration(f"config record has a bad context_size {context_size!r}")
        flags = raw.get("runtime_flags", [])
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise InvalidConfiguration("config record has bad runtime_flags")
        keep_alive_raw = raw.get("keep_alive")
        keep_alive = None if keep_alive_raw is None else parse_keep_alive(keep_alive_raw)
        extra = raw.get("extra", {})
        if not isinstance(extra, Mapping):
            raise InvalidConfiguration("config record has a bad extra")
        return cls(
            backend=backend,
            model_id=model_id,
            model=model,
            mode=mode,
            context_size=context_size,
            runtime_flags=tuple(flags),
            keep_alive=keep_alive,
            extra=MappingProxyType(dict(extra)),
        )


class ConfigStore:
    """In-memory map of ``ModelConfig`` by runner key, mirrored to a JSON file when given a path.

    Mutations are synchronous and return at once; ``snapshot()`` then ``write_snapshot()`` (blocking,
    run it in a worker thread) persist. Keeping the two apart lets the scheduler decide without
    awaiting and write afterwards.
    """

    def __init__(self, path: Path | None = None, configs: Iterable[ModelConfig] = ()) -> None:
        self.path = path
        self._configs: dict[RunnerKey, ModelConfig] = {c.key: c for c in configs}

    @classmethod
    def load(cls, path: Path | None) -> ConfigStore:
        """Read ``path`` (missing file: empty). A malformed file is moved aside with a warning."""
        if path is None or not path.exists():
            return cls(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, Mapping) or document.get("version") != FILE_VERSION:
                raise InvalidConfiguration(f"unsupported config file version in {path}")
            records = document.get("configs")
            if not isinstance(records, list):
                raise InvalidConfiguration("'configs' is not an array")
            configs = [ModelConfig.from_json(record) for record in records]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, InvalidConfiguration) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                path.replace(aside)
            except OSError:
                aside = path
            log.warning("ignoring unreadable runner config file %s (kept at %s): %s", path, aside, exc)
            return cls(path)
        return cls(path, configs)

    def get(self, key: RunnerKey) -> ModelConfig | None:
        return self._configs.get(key)

    def all(self) -> list[ModelConfig]:
        return sorted(self._configs.values(), key=lambda c: (c.model, c.backend, c.mode.value))

    def put(self, config: ModelConfig) -> None:
        self._configs[config.key] = config

    def delete(self, key: RunnerKey) -> bool:
        return self._configs.pop(key, None) is not None

    def delete_matching(self, *, backend: str | None = None, model_ids: Iterable[str] | None = None) -> int:
        ids = None if model_ids is None else set(model_ids)
        doomed = [
            key
            for key in self._configs
            if (backend is None or key.backend == backend) and (ids is None or key.model_id in ids)
        ]
        for key in doomed:
            del self._configs[key]
        return len(doomed)

    def snapshot(self) -> bytes:
        document = {"version": FILE_VERSION, "configs": [c.to_json() for c in self.all()]}
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    def write_snapshot(self, data: bytes) -> None:
        """Atomically replace the file with ``data`` (blocking). No-op without a path."""
        if self.path is None:
            return
        write_atomic(self.path, data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``, fsync the dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

