"""modelrunner.engines: inference backends (llama.cpp, vLLM), the backend registry, runners.

Import public names from here. See README.md for the API and what this package must not import.
"""

from modelrunner.engines.base import (
    Backend,
    ExitInfo,
    MemoryEstimate,
    Mode,
    ModelSpec,
    Runner,
    RunnerConfig,
)
from modelrunner.engines.environment import (
    EngineEnvironment,
    EngineImageSource,
    default_threads,
    llamacpp_image_source,
)
from modelrunner.engines.errors import (
    BackendBusy,
    BackendNotInstalled,
    EngineError,
    EngineStartError,
    InvalidRuntimeFlags,
    UnknownBackend,
)
from modelrunner.engines.flags import LLAMACPP_FLAGS, VLLM_FLAGS, FlagAllowlist
from modelrunner.engines.fleet import gpu_device_id
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.engines.registry import DEFAULT_BACKEND, BackendRegistry
from modelrunner.engines.runner import ContainerRunner
from modelrunner.engines.status import BackendState, BackendStatus
from modelrunner.engines.vllm import VllmBackend, open_vllm_backend

__all__ = [
    "DEFAULT_BACKEND",
    "LLAMACPP_FLAGS",
    "VLLM_FLAGS",
    "Backend",
    "BackendBusy",
    "BackendNotInstalled",
    "BackendRegistry",
    "BackendState",
    "BackendStatus",
    "ContainerRunner",
    "EngineEnvironment",
    "EngineError",
    "EngineImageSource",
    "EngineStartError",
    "ExitInfo",
    "FlagAllowlist",
    "InvalidRuntimeFlags",
    "LlamaCppBackend",
    "MemoryEstimate",
    "Mode",
    "ModelSpec",
    "Runner",
    "RunnerConfig",
    "UnknownBackend",
    "VllmBackend",
    "default_threads",
    "gpu_device_id",
    "llamacpp_image_source",
    "open_llamacpp_backend",
    "open_vllm_backend",
]
