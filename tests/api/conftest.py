"""Fakes of the scheduler, backend registry and model store, and a server fixture over them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from modelrunner.api import ApiConfig, ApiServer, ApiServices, open_api_server
from modelrunner.distribution.errors import Conflict, ModelNotFound, RemoteNotFound
from modelrunner.distribution.progress import Mode as ProgressMode
from modelrunner.distribution.progress import ProgressEvent
from modelrunner.engines import Mode, UnknownBackend
from modelrunner.scheduler import ConfigureRequest, ModelConfig
from modelrunner.scheduler import ModelNotFound as SchedulerModelNotFound
from prometheus_client import CollectorRegistry, Counter

MODEL_ID = "sha256:" + "1" * 64
OTHER_ID = "sha256:" + "2" * 64


def model_object(
    model_id: str = MODEL_ID, tags: Sequence[str] = ("docker.io/ai/smollm2:latest",)
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": model_id}
    if tags:
        out["tags"] = list(tags)
    out["created"] = 1742816981
    out["config"] = {
        "format": "gguf",
        "quantization": "Q4_K_M",
        "parameters": "361.82M",
        "architecture": "llama",
        "size": "256.35MiB",
        "gguf": {"general.architecture": "llama", "llama.context_length": "8192"},
    }
    return out


@dataclass
class PullResult:
    model_id: str
    cached: bool = False


@dataclass
class FakeModels:
    """The ModelManager port with canned models; records calls."""

    models: dict[str, dict[str, Any]] = field(default_factory=lambda: {"ai/smollm2": model_object()})
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    pull_events: int = 3
    fail_pull_before: Exception | None = None
    fail_pull_after: Exception | None = None
    export_data: bytes = b"tar-bytes" * 1000
    loaded: bytes = b""

    def _find(self, reference: str) -> dict[str, Any]:
        for name, model in self.models.items():
            if reference in (name, model["id"], *(model.get("tags") or [])):
                return model
        raise ModelNotFound(reference)

    async def list_models(self) -> list[dict[str, Any]]:
        return list(self.models.values())

    async def get_model(self, reference: str) -> dict[str, Any]:
        self.calls.append(("get", reference))
        return self._find(reference)

    async def get_remote_model(self, reference: str, *, bearer_token: str | None = None) -> dict[str, Any]:
        self.calls.append(("remote", reference))
        if reference == "ai/missing":
            raise RemoteNotFound("manifest unknown", status=404)
        return {k: v for k, v in model_object().items() if k != "tags"}

    async def pull(self, reference: str, *, progress: Any, bearer_token: str | None = None) -> PullResult:
        self.calls.append(("pull", reference, bearer_token))
        if self.fail_pull_before is not None:
            raise self.fail_pull_before
        for i in range(self.pull_events):
            await progress(
                ProgressEvent.transfer(ProgressMode.PULL, 300, "sha256:" + "3" * 64, 300, (i + 1) * 100)
            )
        if self.fail_pull_after is not None:
            raise self.fail_pull_after
        await progress(ProgressEvent.success(ProgressMode.PULL, "Model pulled successfully <ok>"))
        return PullResult(MODEL_ID)

    async def push(self, reference: str, *, progress: Any, bearer_token: str | None = None) -> None:
        self.calls.append(("push", reference, bearer_token))
        self._find(reference)
        await progress(ProgressEvent.success(ProgressMode.PUSH, "Model pushed successfully"))

    async def delete(self, reference: str, *, force: bool = False) -> list[dict[str, str]]:
        self.calls.append(("delete", reference, force))
        model = self._find(reference)
        tags = model.get("tags") or []
        if reference == model["id"] and len(tags) > 1 and not force:
            raise Conflict(f"unable to delete {reference!r} (must be forced) due to multiple tag references")
        return [*({"Untagged": t} for t in tags), {"Deleted": model["id"]}]

    async def tag(self, source: str, target: str) -> str:
        self.calls.append(("tag", source, target))
        self._find(source)
        return "docker.io/" + target

    async def repackage(self, source: str, target: str, *, context_size: int) -> str:
        self.calls.append(("repackage", source, target, context_size))
        self._find(source)
        return OTHER_ID

    async def export(self, reference: str) -> AsyncIterator[bytes]:
        self.calls.append(("export", reference))
        self._find(reference)
        for i in range(0, len(self.export_data), 4096):
            yield self.export_data[i : i + 4096]

    async def load(self, chunks: AsyncIterator[bytes]) -> str:
        async for chunk in chunks:
            self.loaded += chunk
        self.calls.append(("load", len(self.loaded)))
        return OTHER_ID

    async def purge(self) -> None:
        self.calls.append(("purge",))


@dataclass
class FakeLease:
    socket_path: Path
    model_id: str
    model_name: str
    backend: str
    mode: Mode
    broken: list[str] = field(default_factory=list)

    def mark_broken(self, reason: str) -> None:
        self.broken.append(reason)


@dataclass(frozen=True)
class FakeRow:
    backend_name: str
    model_name: str
    model_id: str
    mode: Mode
    last_used: datetime | None
    in_use: bool
    loading: bool
    keep_alive: float
    memory_reserved: int
    memory_measured: int | None


@dataclass
class FakeUsage:
    models_disk_usage: int = 123
    default_backend_disk_usage: int = 456


@dataclass
class FakeScheduler:
    """Hands out leases on `socket_path` for the models it knows; records calls."""

    known: dict[str, str] = field(default_factory=lambda: {"ai/smollm2": MODEL_ID})
    socket_path: Path = Path("/nonexistent/runner.sock")
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    leases: list[FakeLease] = field(default_factory=list)
    acquire_gate: trio.Event | None = None
    acquire_error: Exception | None = None
    rows: list[FakeRow] = field(default_factory=list)
    configs_: list[ModelConfig] = field(default_factory=list)
    unloaded: int = 2
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    released: int = 0
    lease_backend: str | None = None
    """Backend name on leases (default: the requested one, else llama.cpp)."""

    def __post_init__(self) -> None:
        self.loads = Counter("modelrunner_test_loads", "Loads (test).", registry=self.registry)
        self.wait_cancelled = trio.Event()
        self.released_event = trio.Event()

    def acquire(
        self,
        model: str,
        mode: Mode = Mode.COMPLETION,
        backend: str | None = None,
        *,
        keep_alive: float | None = None,
    ) -> contextlib.AbstractAsyncContextManager[FakeLease]:
        return self._acquire(model, mode, backend)

    @contextlib.asynccontextmanager
    async def _acquire(self, model: str, mode: Mode, backend: str | None) -> AsyncIterator[FakeLease]:
        self.calls.append(("acquire", model, mode, backend))
        if backend not in (None, "llama.cpp", "vllm"):
            raise UnknownBackend(backend)
        if self.acquire_gate is not None:
            try:
                await self.acquire_gate.wait()
            except trio.Cancelled:
                self.wait_cancelled.set()
                raise
        if self.acquire_error is not None:
            raise self.acquire_error
        if model not in self.known:
            raise SchedulerModelNotFound(model)
        lease = FakeLease(
            self.socket_path, self.known[model], model, self.lease_backend or backend or "llama.cpp", mode
        )
        self.leases.append(lease)
        try:
            yield lease
        finally:
            self.released += 1
            self.released_event.set()

    def ps(self) -> list[FakeRow]:
        return self.rows

    def df(self) -> FakeUsage:
        return FakeUsage()

    def metrics(self) -> CollectorRegistry:
        return self.registry

    async def unload(
        self, *, all: bool = False, backend: str | None = None, models: Sequence[str] = ()
    ) -> int:
        self.calls.append(("unload", all, backend, tuple(models)))
        return self.unloaded

    async def configure(self, request: ConfigureRequest, *, preload: bool = False) -> object:
        self.calls.append(("configure", request, preload))
        if request.model not in self.known:
            raise SchedulerModelNotFound(request.model)
        return request

    def configs(self, model: str | None = None) -> list[ModelConfig]:
        self.calls.append(("configs", model))
        return self.configs_


@dataclass
class FakeBackend:
    name: str
    installs: int = 0
    uninstalls: int = 0
    fail: Exception | None = None

    async def install(self, progress: Callable[[str], None] | None = None) -> None:
        if self.fail is not None:
            raise self.fail
        self.installs += 1

    async def uninstall(self) -> None:
        self.uninstalls += 1


@dataclass
class FakeBackends:
    backends: dict[str, FakeBackend] = field(
        default_factory=lambda: {"llama.cpp": FakeBackend("llama.cpp"), "vllm": FakeBackend("vllm")}
    )

    def names(self) -> tuple[str, ...]:
        return tuple(self.backends)

    def get(self, name: str | None = None) -> FakeBackend:
        try:
            return self.backends[name or "llama.cpp"]
        except KeyError:
            raise UnknownBackend(name or "", self.names()) from None

    def statuses(self) -> dict[str, str]:
        return {
            "llama.cpp": "Running: llama.cpp b11312-cpu (sha256:abc)",
            "vllm": "Not Installed: needs a GPU",
        }


@dataclass
class Fakes:
    scheduler: FakeScheduler
    backends: FakeBackends
    models: FakeModels

    @property
    def services(self) -> ApiServices:
        return ApiServices(self.scheduler, self.backends, self.models)  # type: ignore[arg-type]


@pytest.fixture
def fakes() -> Fakes:
    return Fakes(FakeScheduler(), FakeBackends(), FakeModels())


@dataclass
class Served:
    server: ApiServer
    client: httpx.AsyncClient
    fakes: Fakes
    unix_path: Path


@contextlib.asynccontextmanager
async def serve_fakes(fakes: Fakes, tmp_path: Path, **config: Any) -> AsyncIterator[Served]:
    unix_path = tmp_path / "api.sock"
    api_config = ApiConfig(tcp=("127.0.0.1", 0), unix_path=unix_path, version="test-1.0", **config)
    async with (
        open_api_server(fakes.services, api_config) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=10) as client,
    ):
        yield Served(server, client, fakes, unix_path)


@pytest.fixture
async def served(fakes: Fakes, tmp_path: Path) -> AsyncIterator[Served]:
    async with serve_fakes(fakes, tmp_path) as result:
        yield result


def now() -> datetime:
    return datetime.now(UTC)
