"""A fake backend whose runners are trio tasks with controllable load time, memory and death.

Used by the scheduler's unit tests and by ``measure_thrash.py``. It implements engines/'s ``Backend``
and ``Runner`` protocols exactly, and records what a real engine host would show (how many engines
are alive at once, how many were started per key), so tests assert behaviour, not internals.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from modelrunner.engines import (
    EngineStartError,
    ExitInfo,
    InvalidRuntimeFlags,
    MemoryEstimate,
    Mode,
    ModelSpec,
    RunnerConfig,
)
from modelrunner.engines.registry import BackendRegistry
from modelrunner.sandbox.gpus import GpuInventory
from modelrunner.scheduler import ModelNotFound, Scheduler, SchedulerSettings, open_scheduler

MiB = 1 << 20
GiB = 1 << 30

_ids = itertools.count(1)


def model_id(n: int) -> str:
    return "sha256:" + f"{n:064x}"


class FakeRunner:
    def __init__(
        self, backend: FakeBackend, model: ModelSpec, mode: Mode, reservation: MemoryEstimate,
        measured: int | None,
    ) -> None:
        self.runner_id = f"fake-{next(_ids)}"
        self.backend = backend.name
        self.model_id = model.id
        self.mode = mode
        self.socket_path = Path(f"/nonexistent/{self.runner_id}.sock")
        self.reservation = reservation
        self.measured = measured
        self.model_name = model.name
        self._backend = backend
        self._exited = trio.Event()
        self._exit_info: ExitInfo | None = None
        self.stop_calls: list[float] = []

    @property
    def alive(self) -> bool:
        return not self._exited.is_set()

    def crash(self, code: int | None = 139, *, oom: bool = False, message: str = "segfault") -> None:
        """The engine dies on its own (crash, OOM kill, kill -9 from outside)."""
        self._exit(ExitInfo(code=code, oom_killed=oom, message=message))

    def _exit(self, info: ExitInfo) -> None:
        if self._exited.is_set():
            return
        self._exit_info = info
        self._exited.set()
        self._backend._on_exit(self)

    async def wait_exit(self) -> ExitInfo:
        await self._exited.wait()
        assert self._exit_info is not None
        return self._exit_info

    async def stop(self, grace: float = 5.0) -> None:
        self.stop_calls.append(grace)
        if self.alive:
            await trio.sleep(self._backend.stop_seconds)
            self._exit(ExitInfo(code=0, oom_killed=False, message=""))
        else:
            await trio.lowlevel.checkpoint()

    async def measured_memory(self) -> int | None:
        await trio.lowlevel.checkpoint()
        return self.measured if self.alive else None


class LimitableFakeRunner(FakeRunner):
    """A runner whose cgroup limit can be lowered (``MemoryLimitedRunner``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.limits: list[int] = []

    async def set_memory_limit(self, ram_bytes: int) -> None:
        await trio.lowlevel.checkpoint()
        self.limits.append(ram_bytes)


@dataclass
class FakeBackend:
    name: str = "fake"
    formats: frozenset[str] = frozenset({"gguf"})
    estimates: dict[str, MemoryEstimate] = field(default_factory=dict)
    """model id -> estimate; missing ids cost ``default_estimate``."""
    default_estimate: MemoryEstimate = field(default_factory=lambda: MemoryEstimate(ram=1 * GiB))
    load_seconds: float | Callable[[str], float] = 1.0
    stop_seconds: float = 0.1
    measured: Callable[[MemoryEstimate], int | None] = lambda estimate: None
    fail_loads: dict[str, int] = field(default_factory=dict)
    """model id -> number of upcoming loads that fail."""
    runner_class: type[FakeRunner] = FakeRunner
    adoptable: list[FakeRunner] = field(default_factory=list)
    # Observations:
    started: list[FakeRunner] = field(default_factory=list)
    starts_by_key: dict[tuple[str, Mode], int] = field(default_factory=dict)
    live: set[FakeRunner] = field(default_factory=set)
    loading: int = 0
    peak_engines: int = 0
    """Most engines alive (loading or running) at one moment."""
    peak_ram: int = 0
    """Most RAM the live engines' estimates add up to at one moment."""
    configs: list[RunnerConfig] = field(default_factory=list)

    def status(self) -> str:
        return "Running: fake 1.0"

    async def install(self, progress: Callable[[str], None] | None = None) -> None:
        await trio.lowlevel.checkpoint()

    async def uninstall(self) -> None:
        await trio.lowlevel.checkpoint()

    def validate_runtime_flags(self, flags: Sequence[str]) -> None:
        for flag in flags:
            if flag.startswith("--forbidden") or "/" in flag:
                raise InvalidRuntimeFlags(f"runtime flag {flag!r} is not allowed for backend {self.name!r}")

    def estimate_memory(self, model: ModelSpec, mode: Mode, config: RunnerConfig) -> MemoryEstimate:
        estimate = self.estimates.get(model.id, self.default_estimate)
        if config.context_size:
            # Context costs memory: lets tests see that _configure settings reach the estimate.
            estimate = MemoryEstimate(ram=estimate.ram + config.context_size * 1024, vram=estimate.vram)
        return estimate

    async def start_runner(
        self, model: ModelSpec, mode: Mode, config: RunnerConfig, reservation: MemoryEstimate
    ) -> FakeRunner:
        runner = self.runner_class(self, model, mode, reservation, self.measured(reservation))
        self.started.append(runner)
        self.configs.append(config)
        key = (model.id, mode)
        self.starts_by_key[key] = self.starts_by_key.get(key, 0) + 1
        self._track(runner)
        load = self.load_seconds(model.id) if callable(self.load_seconds) else self.load_seconds
        try:
            await trio.sleep(load)
        except BaseException:
            runner._exit(ExitInfo(code=None, oom_killed=False, message="cancelled while loading"))
            raise
        if self.fail_loads.get(model.id, 0) > 0:
            self.fail_loads[model.id] -= 1
            runner._exit(ExitInfo(code=1, oom_killed=False, message="failed to load model"))
            raise EngineStartError(
                "llama.cpp failed: failed to load model", log_tail="bad magic", exit_code=1
            )
        return runner

    async def adopt_runners(self) -> list[FakeRunner]:
        await trio.lowlevel.checkpoint()
        for runner in self.adoptable:
            self._track(runner)
        return list(self.adoptable)

    def _track(self, runner: FakeRunner) -> None:
        self.live.add(runner)
        self.peak_engines = max(self.peak_engines, len(self.live))
        self.peak_ram = max(self.peak_ram, sum(r.reservation.ram for r in self.live))

    def _on_exit(self, runner: FakeRunner) -> None:
        self.live.discard(runner)

    def make_adoptable(
        self, model: ModelSpec, mode: Mode = Mode.COMPLETION, reservation: MemoryEstimate | None = None
    ) -> FakeRunner:
        runner = self.runner_class(self, model, mode, reservation or self.default_estimate, None)
        self.adoptable.append(runner)
        return runner


class FakeResolver:
    """Model references -> specs, like the daemon's adapter over distribution's store."""

    def __init__(self, models: Mapping[str, ModelSpec] = ()) -> None:  # type: ignore[assignment]
        self.models: dict[str, ModelSpec] = dict(models)
        self.disk_bytes = 0

    def add(self, name: str, n: int, fmt: str = "gguf") -> ModelSpec:
        spec = ModelSpec(id=model_id(n), name=name, bundle_dir=Path(f"/models/{n}"), format=fmt)
        self.models[name] = spec
        return spec

    def resolve(self, ref: str) -> ModelSpec:
        if ref in self.models:
            return self.models[ref]
        for spec in self.models.values():
            if spec.id == ref:
                return spec
        raise ModelNotFound(ref)

    def disk_usage(self) -> int:
        return self.disk_bytes


NO_GPUS = GpuInventory(devices=(), source="none", notes=("test",))


@asynccontextmanager
async def running_scheduler(
    backend: FakeBackend | list[FakeBackend], resolver: FakeResolver, **settings: Any
) -> AsyncIterator[Scheduler]:
    """A scheduler over fake backends; RAM budget 4 GiB unless ``memory_budget`` says otherwise."""
    backends = backend if isinstance(backend, list) else [backend]
    registry = BackendRegistry(backends, default=backends[0].name)
    settings.setdefault("memory_budget", {"ram": 4 * GiB})
    async with open_scheduler(
        registry, resolver, SchedulerSettings(**settings), gpus=NO_GPUS, host_memory=lambda: 0
    ) as scheduler:
        yield scheduler
