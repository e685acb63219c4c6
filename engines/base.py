"""Contract types between engines/ and the scheduler (see the lead's contracts).

Everything here is a value or a Protocol: no I/O. A *backend* turns (model bundle, mode, per-model
config) into a sandboxed engine task and says what it will cost; a *runner* is one such running task.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Backend",
    "ExitInfo",
    "MemoryEstimate",
    "Mode",
    "ModelSpec",
    "Runner",
    "RunnerConfig",
]


class Mode(enum.StrEnum):
    """What a runner serves; one model may have one runner per mode."""

    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RERANKING = "reranking"


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about one stored model."""

    id: str
    """DMR model ID, ``sha256:<64 hex>``."""
    name: str
    """Public name clients use; passed to the engine as ``--alias``."""
    bundle_dir: Path
    """Host dir mounted read-only at ``/models`` (``model.gguf``, ``template.jinja``, ...)."""
    format: str
    """``gguf`` | ``safetensors`` | ..."""
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The DMR model config (``context_size``, gguf metadata, ...)."""
    gguf_path: Path | None = None
    """Host path of ``model.gguf`` (or its first shard), read for the memory estimate."""


@dataclass(frozen=True)
class RunnerConfig:
    """Per (backend, model, mode) settings from ``_configure``."""

    context_size: int | None = None
    runtime_flags: tuple[str, ...] = ()
    parallel: int | None = None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a runner needs, per device."""

    ram: int
    """Bytes of host RAM."""
    vram: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """GPU id -> bytes (empty on CPU)."""

    def total(self) -> int:
        return self.ram + sum(self.vram.values())


@dataclass(frozen=True)
class ExitInfo:
    """How an engine task ended."""

    code: int | None
    """Exit status, or None when unknown (task vanished)."""
    oom_killed: bool
    message: str
    """Translated tail of the engine log ("" when it had nothing to say)."""


@runtime_checkable
class Runner(Protocol):
    """One running engine task."""

    runner_id: str
    backend: str
    model_id: str
    mode: Mode
    socket_path: Path
    """Host path of the engine's Unix socket (HTTP)."""
    reservation: MemoryEstimate
    """What was reserved for it; the cgroup memory limit derives from it."""

    async def wait_exit(self) -> ExitInfo:
        """Return when the task exits, for any reason."""
        ...

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, after ``grace`` a second SIGTERM, then SIGKILL; removes every resource."""
        ...

    async def measured_memory(self) -> int | None:
        """Bytes in use now (from the runner's cgroup), None if unknown."""
        ...


@runtime_checkable
class Backend(Protocol):
    """An inference engine kind (llama.cpp, vLLM, ...)."""

    name: str
    """Path segment under ``/engines/{name}``."""
    formats: frozenset[str]

    def status(self) -> str:
        """DMR grammar: ``Running: ...``, ``Not Installed: ...``, ``Installing``, ``Error: ...``."""
        ...

    async def install(self, progress: Callable[[str], None] | None = None) -> None: ...

    async def uninstall(self) -> None: ...

    def validate_runtime_flags(self, flags: Sequence[str]) -> None:
        """Raise InvalidRuntimeFlags unless every flag is allowed."""
        ...

    def estimate_memory(self, model: ModelSpec, mode: Mode, config: RunnerConfig) -> MemoryEstimate: ...

    async def start_runner(
        self, model: ModelSpec, mode: Mode, config: RunnerConfig, reservation: MemoryEstimate
    ) -> Runner:
        """Start a runner; return once it answers ``/health`` with 200.

        Raises EngineStartError (with the translated log tail) if the task exits first or the load
        timeout passes; cancellation while loading tears the task down.
        """
        ...

    async def adopt_runners(self) -> list[Runner]:
        """After a daemon restart: live, healthy runners found by labels; the rest cleaned up."""
        ...
