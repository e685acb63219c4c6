"""vLLM, the second backend: safetensors models on NVIDIA GPUs, same interface as llama.cpp.

Pure parts (tested everywhere): ``build_vllm_argv`` after DMR's (section 3.4 of the reference),
adapted to the sandbox (the bundle at ``/models``, the socket at ``/run/engine/engine.sock``), the
runtime-flag allowlist, the status and the memory estimate (vLLM pre-allocates
``--gpu-memory-utilization`` of each granted GPU for weights plus KV cache).

It runs only where a GPU is granted through CDI: on a host without one its status is
``Not Installed: requires an NVIDIA GPU`` and ``start_runner``/``install`` raise
``BackendNotInstalled``; format selection then keeps the requested backend (see ``registry``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, final

import trio
from modelrunner.engines.base import MemoryEstimate, Mode, ModelSpec, Runner, RunnerConfig
from modelrunner.engines.environment import EngineEnvironment
from modelrunner.engines.errors import (
    BackendBusy,
    BackendNotInstalled,
    EngineStartError,
    InvalidRuntimeFlags,
)
from modelrunner.engines.flags import VLLM_FLAGS
from modelrunner.engines.fleet import LaunchRequest, RunnerFleet, backend_lifetime, gpu_device_id
from modelrunner.engines.image import EngineImage
from modelrunner.engines.runner import ContainerRunner
from modelrunner.engines.status import BackendStatus

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "VLLM_BINARY",
    "VllmBackend",
    "VllmLaunch",
    "build_vllm_argv",
    "estimate_vllm",
    "open_vllm_backend",
    "resolve_vllm_launch",
]

VLLM_BINARY = "vllm"
CONTAINER_MODELS_DIR = PurePosixPath("/models")
CONTAINER_SOCKET = PurePosixPath("/run/engine/engine.sock")
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Python, torch, CUDA context and the tokenizer on the host side of a vLLM server.
VLLM_HOST_OVERHEAD = 3 << 30


@dataclass(frozen=True)
class VllmLaunch:
    mode: Mode
    served_name: str
    model_id: str
    max_model_len: int | None
    gpu_memory_utilization: float
    chat_template: str | None  # relative to the bundle
    hf_overrides: Mapping[str, Any] | None
    runtime_flags: tuple[str, ...]


def resolve_vllm_launch(
    model: ModelSpec,
    mode: Mode,
    config: RunnerConfig,
    *,
    chat_template: str | None = None,
    gpu_memory_utilization: float | None = None,
    hf_overrides: Mapping[str, Any] | None = None,
) -> VllmLaunch:
    """Raises InvalidRuntimeFlags for flags off the allowlist or a bad utilization."""
    VLLM_FLAGS.validate(config.runtime_flags)
    utilization = DEFAULT_GPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization
    if not 0 < utilization <= 1:
        raise InvalidRuntimeFlags(f"gpu-memory-utilization must be in (0, 1], got {utilization}")
    context = config.context_size
    if context is None:
        packaged = model.config.get("context_size")
        context = packaged if isinstance(packaged, int) and not isinstance(packaged, bool) else None
    return VllmLaunch(
        mode=mode,
        served_name=model.name,
        model_id=model.id,
        max_model_len=context if context and context > 0 else None,
        gpu_memory_utilization=utilization,
        chat_template=chat_template,
        hf_overrides=MappingProxyType(dict(hf_overrides)) if hf_overrides else None,
        runtime_flags=tuple(config.runtime_flags),
    )


def build_vllm_argv(launch: VllmLaunch) -> list[str]:
    """``vllm serve /models --uds /run/engine/engine.sock ... --served-model-name <name> <id>``.

    The public name comes first in ``--served-model-name``: vLLM reports the first name as
    ``model`` in its responses, which is what clients asked for.
    """
    argv = [VLLM_BINARY, "serve", str(CONTAINER_MODELS_DIR), "--uds", str(CONTAINER_SOCKET)]
    if launch.mode is Mode.COMPLETION and launch.chat_template is not None:
        argv += ["--chat-template", str(CONTAINER_MODELS_DIR / launch.chat_template)]
    if launch.mode in (Mode.EMBEDDING, Mode.RERANKING):
        argv += ["--runner", "pooling"]
    if launch.max_model_len is not None:
        argv += ["--max-model-len", str(launch.max_model_len)]
    argv += launch.runtime_flags
    argv += ["--gpu-memory-utilization", f"{launch.gpu_memory_utilization:g}"]
    if launch.hf_overrides:
        overrides = json.dumps(dict(launch.hf_overrides), sort_keys=True, separators=(",", ":"))
        argv += ["--hf-overrides", overrides]
    argv += ["--served-model-name", launch.served_name, launch.model_id]
    return argv


def estimate_vllm(launch: VllmLaunch, gpu_totals: Mapping[str, int], weights_bytes: int) -> MemoryEstimate:
    """vLLM takes ``utilization x total`` of every granted GPU up front (weights + KV pool), and
    loads the weights through host memory."""
    vram = {gpu: int(total * launch.gpu_memory_utilization) for gpu, total in gpu_totals.items()}
    return MemoryEstimate(ram=VLLM_HOST_OVERHEAD + weights_bytes, vram=MappingProxyType(vram))


MISSING_GPU = "requires an NVIDIA GPU"
MISSING_SOURCE = "no vLLM engine image configured (set MODELRUNNER_VLLM_IMAGE)"


@final
class VllmBackend:
    """vLLM's ``Backend``: a GPU engine for safetensors models. Create it with
    :func:`open_vllm_backend`. Without a GPU it reports ``Not Installed: requires an NVIDIA GPU``
    and refuses to install or start (it is never pretended to run)."""

    name = "vllm"
    formats = frozenset({"safetensors"})

    def __init__(self, environment: EngineEnvironment, nursery: trio.Nursery) -> None:
        self.environment = environment
        self.engine_image = EngineImage(
            environment.containerd, self.name, environment.vllm_image, missing_source=MISSING_SOURCE
        )
        self.fleet = RunnerFleet(environment, nursery, self.name, "vllm-")

    @property
    def host_supported(self) -> bool:
        return not self.environment.gpus.cpu_only

    def status(self) -> str:
        if not self.host_supported:
            return str(BackendStatus.not_installed(MISSING_GPU))
        return str(self.engine_image.status)

    def runners(self) -> list[ContainerRunner]:
        return self.fleet.runners()

    def _require_gpu(self) -> None:
        if not self.host_supported:
            raise BackendNotInstalled(self.name, MISSING_GPU)

    async def install(self, progress: Callable[[str], None] | None = None) -> None:
        """Pull the vLLM image. Raises BackendNotInstalled without a GPU or an image source."""
        self._require_gpu()
        await self.engine_image.ensure(progress)

    async def uninstall(self) -> None:
        if len(self.fleet):
            raise BackendBusy(f"vllm still has {len(self.fleet)} runner(s); unload them before uninstalling")
        await self.engine_image.remove()

    def validate_runtime_flags(self, flags: Sequence[str]) -> None:
        VLLM_FLAGS.validate(flags)

    def estimate_memory(self, model: ModelSpec, mode: Mode, config: RunnerConfig) -> MemoryEstimate:
        launch = resolve_vllm_launch(model, mode, config)
        totals = {gpu_device_id(gpu): gpu.total_bytes for gpu in self.environment.gpus.devices}
        weights = sum(p.stat().st_size for p in model.bundle_dir.glob("*.safetensors"))
        return estimate_vllm(launch, totals, weights)

    async def start_runner(
        self, model: ModelSpec, mode: Mode, config: RunnerConfig, reservation: MemoryEstimate
    ) -> ContainerRunner:
        """Start ``vllm serve`` with every GPU granted through CDI; return once /health is 200.

        Raises:
            BackendNotInstalled: no GPU, or the image cannot be pulled.
            EngineStartError: the engine exited or missed the load deadline.
        """
        self._require_gpu()
        if model.format.lower() not in self.formats:
            raise EngineStartError(f"vllm cannot serve {model.format!r} models (only safetensors)")
        image = await self.engine_image.ensure()
        template = "template.jinja" if (model.bundle_dir / "template.jinja").is_file() else None
        launch = resolve_vllm_launch(model, mode, config, chat_template=template)
        return await self.fleet.launch(
            LaunchRequest(
                model=model,
                mode=mode,
                argv=tuple(build_vllm_argv(launch)),
                image=image,
                reservation=reservation,
                gpus=self.environment.gpus.devices,
                # vLLM's caches (torch compile, HF) go to the writable tmpfs; no network access.
                extra_env=("HF_HUB_OFFLINE=1", "VLLM_NO_USAGE_STATS=1", "XDG_CACHE_HOME=/tmp"),
            )
        )

    async def adopt_runners(self) -> list[Runner]:
        return list(await self.fleet.adopt())

    async def stop_all(self, grace: float | None = None) -> None:
        await self.fleet.stop_all(grace)


@contextlib.asynccontextmanager
async def open_vllm_backend(
    environment: EngineEnvironment, *, stop_runners_on_exit: bool = True
) -> AsyncIterator[VllmBackend]:
    async with backend_lifetime(
        lambda nursery: VllmBackend(environment, nursery),
        environment,
        stop_runners_on_exit=stop_runners_on_exit,
    ) as backend:
        if backend.host_supported:
            await backend.engine_image.refresh()
        yield backend
