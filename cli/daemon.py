"""The daemon: wires containerd, the engines, the store, the scheduler and the API server together.

Every component is entered as an async context manager in dependency order and left in reverse, so
a failure while starting unwinds whatever already started, and shutdown stops the API before the
scheduler (which stops its runners) before containerd.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from modelrunner import __version__
from modelrunner.api import (
    ApiConfig,
    ApiServer,
    ApiServices,
    DistributionModels,
    open_api_server,
    parse_origins,
)
from modelrunner.distribution.registry import RegistryClient, RegistryConfig
from modelrunner.distribution.store import ModelStore
from modelrunner.engines import (
    BackendRegistry,
    EngineEnvironment,
    ModelSpec,
    llamacpp_image_source,
    open_llamacpp_backend,
    open_vllm_backend,
)
from modelrunner.engines.sched import request_short_slice
from modelrunner.sandbox import GpuInventory, discover_cdi, discover_gpus
from modelrunner.scheduler import Scheduler, SchedulerSettings, open_scheduler
from modelrunner.shim import open_containerd, open_embedded_containerd

log = logging.getLogger("modelrunner.daemon")

SERVICE_LOG_NAME = "modelrunner.log"


@dataclass(frozen=True)
class DaemonSettings:
    """The daemon's configuration, from `modelrunner serve`'s flags and their environment variables."""

    state_dir: Path
    models_path: Path
    socket: Path | None = Path("/run/modelrunner/modelrunner.sock")
    tcp: tuple[str, int] | None = ("127.0.0.1", 12434)
    containerd_address: str | None = None
    """An existing containerd's socket; None starts an embedded one under ``state_dir``."""
    namespace: str = "modelrunner"
    memory: int | None = None
    """Bytes of host memory engines may use in total; None measures the host."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class StoreResolver:
    """The scheduler's `ModelResolver` over the model store: a reference becomes a runnable bundle.

    Every inference request resolves its model, so answers are cached until the store's
    `index.json` changes (every tag, delete, pull or purge replaces it by an atomic rename):
    one `stat` per request instead of reading the index, manifest and config and checking the
    bundle's links.
    """

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._index = store.root / "index.json"
        self._index_version: tuple[int, int, int] | None = None
        self._cache: dict[str, ModelSpec] = {}

    def _current_index_version(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._index)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def resolve(self, ref: str) -> ModelSpec:
        version = self._current_index_version()
        if version != self._index_version or version is None:
            self._cache.clear()
            self._index_version = version
        cached = self._cache.get(ref)
        if cached is not None:
            return cached
        spec = self._resolve_uncached(ref)
        self._cache[ref] = spec
        return spec

    def _resolve_uncached(self, ref: str) -> ModelSpec:
        model = self.store.get(ref)
        bundle = self.store.bundle(model.id)
        config = dict(model.config.config)
        # "model.gguf", or shards "model-00001-of-0000N.gguf"... whose first sorts first.
        ggufs = sorted(name for name in self.store.bundle_layout(model) if name.endswith(".gguf"))
        return ModelSpec(
            id=model.id,
            # The engine's alias; the proxy rewrites responses to whatever name the client used.
            name=model.tags[0] if model.tags else model.id,
            bundle_dir=bundle,
            format=str(config.get("format") or "gguf"),
            config=config,
            gguf_path=bundle / ggufs[0] if ggufs else None,
        )

    def disk_usage(self) -> int:
        """Bytes of verified blobs in the store (`/engines/df`'s models row); bundles are hard links."""
        blobs = self.store.root / "blobs"
        return sum(entry.stat().st_size for entry in blobs.rglob("*") if entry.is_file())


@dataclass
class RunningDaemon:
    """What a started daemon exposes to its caller (tests, the CLI's `serve`)."""

    settings: DaemonSettings
    containerd_address: str
    embedded_containerd: bool
    api: ApiServer
    scheduler: Scheduler
    store: ModelStore
    gpus: GpuInventory


def check_state_dir(state_dir: Path) -> None:
    """Raises ValueError when engine socket paths under ``state_dir`` would be too long."""
    # runners/<id like llamacpp-0123456789ab>/engine/engine.sock must fit a Unix socket path (108 bytes).
    longest = state_dir / "runners" / ("x" * 24) / "engine" / "engine.sock"
    if len(os.fsencode(longest)) > 107:
        raise ValueError(f"state dir {state_dir} is too long for engine socket paths; choose a shorter one")


@asynccontextmanager
async def open_daemon(settings: DaemonSettings) -> AsyncIterator[RunningDaemon]:
    """Start every part of the daemon; leaving the block shuts it down in reverse order."""
    state_dir = settings.state_dir.resolve()
    check_state_dir(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    async with AsyncExitStack() as stack:
        if settings.containerd_address:
            address, runc_root, embedded = settings.containerd_address, None, False
        else:
            daemon = await stack.enter_async_context(open_embedded_containerd(state_dir / "containerd"))
            address, runc_root, embedded = daemon.address, daemon.runc_root, True
        client = await stack.enter_async_context(
            open_containerd(address, settings.namespace, runc_root=runc_root)
        )
        version = await client.version()
        log.info(
            "containerd %s at %s (%s), namespace %s",
            version.version,
            address,
            "embedded" if embedded else "external",
            settings.namespace,
        )

        gpus = await discover_gpus()
        log.info("GPUs: %s", gpus.summary())
        cdi = await trio.to_thread.run_sync(discover_cdi)
        image = llamacpp_image_source(settings.environ)
        if image is None:
            log.warning(
                "no llama.cpp engine image: build one with hack/build-engine-llamacpp or set "
                "MODELRUNNER_LLAMACPP_IMAGE / MODELRUNNER_LLAMACPP_IMAGE_TAR"
            )
        environment = EngineEnvironment(
            containerd=client, state_dir=state_dir, llamacpp_image=image, gpus=gpus, cdi=cdi
        )
        llamacpp = await stack.enter_async_context(open_llamacpp_backend(environment))
        vllm = await stack.enter_async_context(open_vllm_backend(environment))
        backends = BackendRegistry([llamacpp, vllm])

        store = ModelStore(settings.models_path)
        registry = await stack.enter_async_context(
            RegistryClient.open(RegistryConfig.from_environ(settings.environ))
        )
        scheduler = await stack.enter_async_context(
            open_scheduler(
                backends,
                StoreResolver(store),
                SchedulerSettings(
                    memory_budget={"ram": settings.memory} if settings.memory else None,
                    config_path=state_dir / "configure.json",
                ),
                gpus=gpus,
            )
        )
        api = await stack.enter_async_context(
            open_api_server(
                ApiServices(
                    scheduler=scheduler, backends=backends, models=DistributionModels(store, registry)
                ),
                ApiConfig(
                    tcp=settings.tcp,
                    unix_path=settings.socket,
                    cors_origins=parse_origins(settings.environ.get("DMR_ORIGINS", "")),
                    version=__version__,
                    version_details={
                        "containerd": {
                            "address": address,
                            "namespace": settings.namespace,
                            "embedded": embedded,
                            "version": version.version,
                        }
                    },
                    log_dir=state_dir,
                    service_log_name=SERVICE_LOG_NAME,
                    engine_log_glob="runners/*/engine.log",
                ),
            )
        )
        yield RunningDaemon(settings, address, embedded, api, scheduler, store, gpus)
        log.info("shutting down")


async def run_daemon(settings: DaemonSettings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_daemon(settings) as daemon:
            # After containerd started, so that nothing it runs could inherit the slice anyway.
            refused = request_short_slice()
            if refused is not None:
                log.info("kept the default scheduler slice for the API loop (%s)", refused)
            where = [daemon.api.base_url] if daemon.api.tcp_address else []
            if daemon.api.unix_path:
                where.append(f"unix://{daemon.api.unix_path}")
            log.info(
                "modelrunner %s ready: %s (containerd %s)",
                __version__,
                ", ".join(where),
                daemon.containerd_address,
            )
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                break
