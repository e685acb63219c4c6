"""What a backend needs from the daemon: containerd, a state dir, the engine image, GPUs, limits.

One frozen value built by the daemon (cli/) from its configuration and passed down explicitly.
``llamacpp_image_source`` turns the daemon's environment variables into the llama.cpp image source
(pure: the caller passes the mapping; nothing here reads ``os.environ``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelrunner.sandbox import CDIRegistry, GpuInventory
from modelrunner.shim.client import Containerd

__all__ = [
    "DEFAULT_ENGINE_CACHE",
    "DEFAULT_LLAMACPP_REF",
    "EngineEnvironment",
    "EngineImageSource",
    "default_threads",
    "llamacpp_image_source",
]

DEFAULT_LLAMACPP_REF = "docker.io/modelrunner/llama.cpp:b11312-cpu"
DEFAULT_ENGINE_CACHE = Path("/var/cache/modelrunner")
_TARBALL_NAME = re.compile(r"^llama\.cpp-(?P<tag>b\d+-[a-z0-9]+)\.oci\.tar$")


@dataclass(frozen=True)
class EngineImageSource:
    """Where an engine image comes from: an OCI layout tarball, or a registry reference to pull."""

    ref: str
    """The image name in containerd (and in the registry when pulled)."""
    tarball: Path | None = None
    plain_http: bool | None = None
    """For pulls: None = plain HTTP only for loopback registries."""

    def describe(self) -> str:
        return f"{self.ref} from {self.tarball}" if self.tarball else f"{self.ref} (pulled)"


def llamacpp_image_source(
    environ: Mapping[str, str], cache_root: Path = DEFAULT_ENGINE_CACHE
) -> EngineImageSource | None:
    """The llama.cpp engine image to use.

    In order: ``MODELRUNNER_LLAMACPP_IMAGE`` (a registry reference, pulled by containerd),
    ``MODELRUNNER_LLAMACPP_IMAGE_TAR`` (a tarball from ``hack/build-engine-llamacpp``), else the
    newest cached build under ``<cache_root>/engines/llama.cpp/``. None when there is none.
    Blocking (lists a directory), fast.
    """
    ref = environ.get("MODELRUNNER_LLAMACPP_IMAGE", "").strip()
    if ref:
        return EngineImageSource(ref=ref)
    tar = environ.get("MODELRUNNER_LLAMACPP_IMAGE_TAR", "").strip()
    if tar:
        return _from_tarball(Path(tar))
    candidates = sorted(
        (cache_root / "engines" / "llama.cpp").glob("*/llama.cpp-b*-*.oci.tar"),
        key=lambda p: p.stat().st_mtime,
    )
    return _from_tarball(candidates[-1]) if candidates else None


def _from_tarball(path: Path) -> EngineImageSource:
    match = _TARBALL_NAME.match(path.name)
    ref = f"docker.io/modelrunner/llama.cpp:{match['tag']}" if match else DEFAULT_LLAMACPP_REF
    return EngineImageSource(ref=ref, tarball=path)


def default_threads() -> int:
    """CPUs this process may run on (its affinity mask; the machine's count where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class EngineEnvironment:
    """Everything the backends share.

    Attributes:
        containerd: the connected client (its namespace holds the runners).
        state_dir: a directory of the daemon's; each runner gets ``runners/<id>/`` below it with
            its socket directory and log. Must be short enough for Unix socket paths (108 bytes).
        llamacpp_image: the llama.cpp engine image; None makes the backend "Not Installed".
        vllm_image: the vLLM engine image reference (pulled).
        gpus: the GPU inventory (sandbox/); CPU only when empty.
        cdi: CDI specs to grant GPUs with.
        threads: engine threads (``-t``); None = this process's CPU allowance.
        load_timeout: seconds from task start to ``/health`` 200 before giving up.
        stop_grace: seconds between the first SIGTERM and SIGKILL (a second SIGTERM at half time).
        default_parallel: llama-server slots when the model's config does not say.
        max_log_bytes: an engine log is cut back to empty when it grows past this (the last
            lines stay in memory for error messages).
    """

    containerd: Containerd
    state_dir: Path
    llamacpp_image: EngineImageSource | None
    vllm_image: EngineImageSource | None = None
    gpus: GpuInventory = field(default_factory=lambda: GpuInventory((), "none"))
    cdi: CDIRegistry | None = None
    threads: int | None = None
    load_timeout: float = 300.0
    stop_grace: float = 5.0
    default_parallel: int = 1
    max_log_bytes: int = 8 << 20
