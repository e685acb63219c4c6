"""llama-server's command line, built the way DMR builds it, adapted to the sandbox's paths.

Pure: ``resolve_launch`` turns (mode, per-model config, packaged config, runtime flags, model facts)
into a frozen ``LaunchSettings`` (what the engine will actually run with: the memory estimate reads
it too), and ``build_argv`` turns that into argv. Order, as in DMR (``llamacpp_config.go``):

1. base ``-ngl 999 --metrics`` (plus ours: ``--no-webui``, ``--alias``, ``--parallel``, ``-t``)
2. ``--model /models/model.gguf --host /run/engine/engine.sock``
3. mode: completion ``--chat-template-file`` if the bundle has a template; embedding
   ``--embeddings``; reranking ``--embeddings --reranking``
4. ``--ctx-size``
5. the user's runtime flags, verbatim (later flags win in llama.cpp's parser, so they override 1-4)
6. ``--mmproj /models/model.mmproj`` if the bundle has one, else ``--jinja``

Context size. DMR's ``context-size`` is the context one request gets. llama-server's ``--ctx-size``
is the KV pool for *all* slots, and with an explicit ``--parallel N`` (KV not unified) each slot
gets ``ctx/N``. So we pass ``--ctx-size context * parallel``; a user who adds ``--kv-unified``
shares one pool of ``context`` cells between the slots instead. Unlike DMR we never leave the
context to llama.cpp (its default, the model's training context, can be 128k, and ``--fit`` then
shrinks it behind the scheduler's back): without a configured or packaged size we use the training
context capped at ``DEFAULT_CONTEXT_SIZE``; ``-1`` (DMR's "unlimited") means the full training
context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from modelrunner.engines.base import Mode
from modelrunner.engines.errors import InvalidRuntimeFlags
from modelrunner.engines.flags import LLAMACPP_FLAGS, ParsedFlag

__all__ = [
    "CONTAINER_BINARY",
    "CONTAINER_MODELS_DIR",
    "CONTAINER_SOCKET",
    "DEFAULT_CONTEXT_SIZE",
    "DEFAULT_PARALLEL",
    "BundleLayout",
    "LaunchSettings",
    "build_argv",
    "resolve_launch",
]

CONTAINER_BINARY = "/usr/local/bin/llama-server"
CONTAINER_MODELS_DIR = PurePosixPath("/models")
CONTAINER_SOCKET_DIR = PurePosixPath("/run/engine")
CONTAINER_SOCKET = CONTAINER_SOCKET_DIR / "engine.sock"

DEFAULT_CONTEXT_SIZE = 4096
DEFAULT_PARALLEL = 1
DEFAULT_UBATCH = 512
DEFAULT_BATCH = 2048
# llama.cpp rounds the KV pool (and each slot's share) up to a multiple of this.
KV_PAD = 256
MAX_CONTEXT_SIZE = 1 << 24
MAX_PARALLEL = 256


@dataclass(frozen=True)
class BundleLayout:
    """Which files the model bundle has, as paths relative to the bundle dir (``/models``)."""

    model: str = "model.gguf"
    chat_template: str | None = None
    mmproj: str | None = None

    def __post_init__(self) -> None:
        for name in (self.model, self.chat_template, self.mmproj):
            if name is None:
                continue
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"bundle file {name!r} must be a relative path inside the bundle")


@dataclass(frozen=True)
class LaunchSettings:
    """What llama-server will run with, after the user's runtime flags are applied."""

    mode: Mode
    alias: str
    context_size: int  # per slot (what one request can use)
    parallel: int
    kv_unified: bool
    n_ctx: int  # --ctx-size passed to llama-server (the KV pool for all slots)
    threads: int | None
    n_gpu_layers: int
    cache_type_k: str
    cache_type_v: str
    ubatch: int
    batch: int
    flash_attn: str  # on | off | auto
    runtime_flags: tuple[str, ...]

    @property
    def kv_cells(self) -> int:
        """KV cells llama.cpp allocates (its padding included)."""
        if self.kv_unified:
            return _pad(self.n_ctx)
        per_slot = _pad(max(1, _pad(self.n_ctx) // self.parallel))
        return per_slot * self.parallel

    @property
    def slot_context(self) -> int:
        """Context one slot (one request) can use."""
        if self.kv_unified:
            return _pad(self.n_ctx)
        return self.kv_cells // self.parallel


def _pad(value: int) -> int:
    return -(-value // KV_PAD) * KV_PAD


def resolve_launch(
    *,
    mode: Mode,
    alias: str,
    context_size: int | None,
    packaged_context_size: int | None,
    trained_context: int | None,
    parallel: int | None,
    runtime_flags: Sequence[str],
    threads: int | None,
    gpu_available: bool,
    default_parallel: int = DEFAULT_PARALLEL,
) -> LaunchSettings:
    """Resolve the engine's effective settings.

    ``context_size`` is the per-model ``_configure`` value, ``packaged_context_size`` the model
    config's ``context_size``, ``trained_context`` the GGUF ``<arch>.context_length``.

    Raises:
        InvalidRuntimeFlags: the runtime flags break the allowlist or give an unusable number.
    """
    parsed = LLAMACPP_FLAGS.parse(runtime_flags)
    flags = _last_values(parsed)

    slots = _positive(parallel, "parallel") or default_parallel
    if "--parallel" in flags:
        slots = _flag_int(flags, "--parallel", minimum=1)
    if slots > MAX_PARALLEL:
        raise InvalidRuntimeFlags(f"parallel must be at most {MAX_PARALLEL}, got {slots}")

    context = _choose_context(context_size, packaged_context_size, trained_context)
    kv_unified = _switch(parsed, "--kv-unified", "--no-kv-unified", default=False)
    n_ctx = context if kv_unified else context * slots
    if "--ctx-size" in flags:
        # A runtime --ctx-size is llama.cpp's own meaning: the pool for all slots (0 = trained).
        n_ctx = _flag_int(flags, "--ctx-size", minimum=0) or (trained_context or DEFAULT_CONTEXT_SIZE)
        context = n_ctx if kv_unified else max(1, n_ctx // slots)

    ngl_default = 999 if gpu_available else 0
    n_gpu_layers = ngl_default
    if "--n-gpu-layers" in flags:
        n_gpu_layers = _flag_int(flags, "--n-gpu-layers", minimum=-1)
    if not gpu_available:
        n_gpu_layers = 0  # what the CPU build does with -ngl 999
    thread_count = _flag_int(flags, "--threads", minimum=-1) if "--threads" in flags else threads
    flash = flags.get("--flash-attn", "auto") or "auto"

    return LaunchSettings(
        mode=mode,
        alias=alias,
        context_size=context,
        parallel=slots,
        kv_unified=kv_unified,
        n_ctx=n_ctx,
        threads=thread_count if thread_count and thread_count > 0 else None,
        n_gpu_layers=n_gpu_layers,
        cache_type_k=(flags.get("--cache-type-k") or "f16").lower(),
        cache_type_v=(flags.get("--cache-type-v") or "f16").lower(),
        ubatch=_flag_int(flags, "--ubatch-size", minimum=1) if "--ubatch-size" in flags else DEFAULT_UBATCH,
        batch=_flag_int(flags, "--batch-size", minimum=1) if "--batch-size" in flags else DEFAULT_BATCH,
        flash_attn=flash.lower(),
        runtime_flags=tuple(runtime_flags),
    )


def build_argv(settings: LaunchSettings, bundle: BundleLayout) -> list[str]:
    """llama-server's argv (``argv[0]`` is the binary inside the engine image)."""
    argv = [CONTAINER_BINARY, "-ngl", "999", "--metrics", "--no-webui"]
    argv += ["--alias", settings.alias, "--parallel", str(settings.parallel)]
    if settings.threads is not None:
        argv += ["--threads", str(settings.threads)]
    argv += ["--model", str(CONTAINER_MODELS_DIR / bundle.model), "--host", str(CONTAINER_SOCKET)]
    if settings.mode is Mode.COMPLETION:
        if bundle.chat_template is not None:
            argv += ["--chat-template-file", str(CONTAINER_MODELS_DIR / bundle.chat_template)]
    elif settings.mode is Mode.EMBEDDING:
        argv += ["--embeddings"]
    elif settings.mode is Mode.RERANKING:
        argv += ["--embeddings", "--reranking"]
    argv += ["--ctx-size", str(settings.n_ctx)]
    argv += settings.runtime_flags
    if bundle.mmproj is not None:
        argv += ["--mmproj", str(CONTAINER_MODELS_DIR / bundle.mmproj)]
    else:
        argv += ["--jinja"]
    return argv


def packaged_context_size(config: Mapping[str, Any]) -> int | None:
    """The model config's ``context_size`` (DMR config JSON), if it is a usable number."""
    value = config.get("context_size")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value > 0 or value == -1 else None


def _choose_context(configured: int | None, packaged: int | None, trained: int | None) -> int:
    for value in (configured, packaged):
        if value is None:
            continue
        if value == -1:
            return trained or DEFAULT_CONTEXT_SIZE
        if value > 0:
            if value > MAX_CONTEXT_SIZE:
                raise InvalidRuntimeFlags(f"context size {value} is larger than {MAX_CONTEXT_SIZE}")
            return value
    if trained:
        return min(trained, DEFAULT_CONTEXT_SIZE)
    return DEFAULT_CONTEXT_SIZE


def _last_values(parsed: Sequence[ParsedFlag]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for flag in parsed:
        values[flag.canonical] = flag.value
    return values


def _switch(parsed: Sequence[ParsedFlag], on: str, off: str, *, default: bool) -> bool:
    state = default
    for flag in parsed:
        if flag.canonical == on:
            state = True
        elif flag.canonical == off:
            state = False
    return state


def _positive(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRuntimeFlags(f"{what} must be a positive integer, got {value!r}")
    return value


def _flag_int(flags: Mapping[str, str | None], name: str, *, minimum: int) -> int:
    raw = flags.get(name)
    try:
        value = int(raw or "")
    except ValueError:
        raise InvalidRuntimeFlags(f"runtime flag {name} needs an integer, got {raw!r}") from None
    if value < minimum:
        raise InvalidRuntimeFlags(f"runtime flag {name} must be at least {minimum}, got {value}")
    return value
