"""What api/ needs from the rest of modelrunner, as Protocols.

The HTTP layer codes against these, so it is unit-tested with small fakes and runs for real with:

* `SchedulerPort`: `modelrunner.scheduler.Scheduler` (from `open_scheduler`) fits as is;
* `BackendsPort`: `modelrunner.engines.BackendRegistry` fits as is;
* `ModelManager`: `modelrunner.api.DistributionModels(store, registry_client)`, the adapter in
  `api/_distribution.py` over distribution/'s `ModelStore` and `RegistryClient` (their calls are
  blocking or need composing, so the adapter does that once, with worker threads).

Values crossing these ports are the lower layers' own (`Mode`, `ConfigureRequest`, `RunnerInfo`,
`ProgressEvent`...); the Protocols below name only the attributes api/ reads.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from modelrunner.distribution.progress import ProgressEvent
from modelrunner.engines import Mode
from modelrunner.scheduler import ConfigureRequest
from prometheus_client.registry import Collector

__all__ = [
    "BackendPort",
    "BackendsPort",
    "ConfigRow",
    "DiskUsageRow",
    "LeasePort",
    "ModelManager",
    "ProgressSink",
    "PullOutcome",
    "RunnerRow",
    "SchedulerPort",
]

ProgressSink = Callable[[ProgressEvent], Awaitable[None]]
"""Receives pull/push progress; awaited, so a slow client slows the transfer."""


class LeasePort(Protocol):
    """A request's hold on a ready runner (`scheduler.RunnerLease`)."""

    @property
    def socket_path(self) -> Path: ...
    @property
    def model_id(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def mode(self) -> Mode: ...

    def mark_broken(self, reason: str) -> None:
        """The proxy saw the engine fail mid-request; the scheduler stops using it."""
        ...


class RunnerRow(Protocol):
    """One `/engines/ps` row (`scheduler.RunnerInfo`)."""

    @property
    def backend_name(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def mode(self) -> Mode: ...
    @property
    def last_used(self) -> datetime | None: ...
    @property
    def in_use(self) -> bool: ...
    @property
    def loading(self) -> bool: ...
    @property
    def keep_alive(self) -> float: ...
    @property
    def keep_alive_text(self) -> str: ...
    @property
    def memory_reserved(self) -> int: ...
    @property
    def memory_measured(self) -> int | None: ...


class DiskUsageRow(Protocol):
    @property
    def models_disk_usage(self) -> int: ...
    @property
    def default_backend_disk_usage(self) -> int: ...


class ConfigRow(Protocol):
    """One stored `_configure` setting (`scheduler.ModelConfig`)."""

    @property
    def backend(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def mode(self) -> Mode: ...
    @property
    def context_size(self) -> int | None: ...
    @property
    def runtime_flags(self) -> tuple[str, ...]: ...
    @property
    def keep_alive(self) -> float | None: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...


class SchedulerPort(Protocol):
    """The scheduler as the API uses it (`modelrunner.scheduler.Scheduler`)."""

    def acquire(
        self, model: str, mode: Mode = ..., backend: str | None = None, *, keep_alive: float | None = None
    ) -> AbstractAsyncContextManager[LeasePort]:
        """Hold the runner for (backend, model, mode) for the duration of the `async with`.

        Raises ModelNotFound, UnknownBackend, ModelTooLarge, QueueFull, EngineStartError, ...
        (mapped to HTTP by `map_exception`).
        """
        ...

    def ps(self) -> Sequence[RunnerRow]: ...

    def df(self) -> DiskUsageRow: ...

    def metrics(self) -> Collector:
        """A prometheus-client collector (registry) of the scheduler's own metrics."""
        ...

    async def unload(
        self, *, all: bool = False, backend: str | None = None, models: Sequence[str] = ()
    ) -> int: ...

    async def configure(self, request: ConfigureRequest, *, preload: bool = False) -> object: ...

    def configs(self, model: str | None = None) -> Sequence[ConfigRow]: ...


class BackendPort(Protocol):
    @property
    def name(self) -> str: ...

    async def install(self, progress: Callable[[str], None] | None = None) -> None: ...

    async def uninstall(self) -> None: ...


class BackendsPort(Protocol):
    """The backend registry (`modelrunner.engines.BackendRegistry`)."""

    def names(self) -> tuple[str, ...]: ...

    def get(self, name: str | None = None) -> BackendPort:
        """Raises UnknownBackend."""
        ...

    def statuses(self) -> dict[str, str]:
        """Backend name -> DMR status string."""
        ...


class PullOutcome(Protocol):
    @property
    def model_id(self) -> str: ...
    @property
    def cached(self) -> bool: ...


class ModelManager(Protocol):
    """Model store operations in DMR's terms. Models are DMR Model objects (JSON-ready dicts:
    `{"id", "tags"?, "created", "config"}`).

    Every method raises distribution/'s typed errors (`ModelNotFound`, `InvalidReference`,
    `Conflict`, `RegistryUnauthorized`, ...), each with a `status_hint`.
    """

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def get_model(self, reference: str) -> dict[str, Any]:
        """Tries a full/short ID, a tag, then a partial name (DMR's lookup order)."""
        ...

    async def get_remote_model(self, reference: str, *, bearer_token: str | None = None) -> dict[str, Any]:
        """The registry's view (`?remote=true`): no `tags`."""
        ...

    async def pull(
        self, reference: str, *, progress: ProgressSink, bearer_token: str | None = None
    ) -> PullOutcome: ...

    async def push(
        self, reference: str, *, progress: ProgressSink, bearer_token: str | None = None
    ) -> None: ...

    async def delete(self, reference: str, *, force: bool = False) -> list[dict[str, str]]:
        """DMR's action list: `[{"Untagged": tag}, ..., {"Deleted": id}]`."""
        ...

    async def tag(self, source: str, target: str) -> str: ...

    async def repackage(self, source: str, target: str, *, context_size: int) -> str: ...

    def export(self, reference: str) -> AsyncGenerator[bytes, None]:
        """The DMR tar archive, in chunks; errors (not found) surface on the first iteration."""
        ...

    async def load(self, chunks: AsyncIterator[bytes]) -> str:
        """Load a DMR tar archive streamed in; returns the model ID."""
        ...

    async def purge(self) -> None: ...
