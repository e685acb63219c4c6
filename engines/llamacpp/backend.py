"""The llama.cpp backend: llama-server in the sandbox, one containerd task per runner.

``async with open_llamacpp_backend(environment) as backend:`` reads the engine image's state from
containerd once and owns a nursery for its runners' log followers. Leaving the block stops the
runners it still has (``stop_runners_on_exit=False`` leaves them running for ``adopt_runners``
after a restart; a daemon that crashes leaves them too).

``start_runner``: install the image on first use; read the GGUF facts; resolve the launch settings
and argv (``argv.py``); then the fleet (``fleet.py``) starts the sandboxed task and waits for
``/health`` 200; finally llama-server's buffer report, read from its log, becomes the runner's
``engine_report`` (the scheduler's correction of the estimate).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import final

import trio
from modelrunner.engines.base import MemoryEstimate, Mode, ModelSpec, Runner, RunnerConfig
from modelrunner.engines.environment import EngineEnvironment, default_threads
from modelrunner.engines.errors import BackendBusy, EngineStartError, InvalidRuntimeFlags
from modelrunner.engines.flags import LLAMACPP_FLAGS
from modelrunner.engines.fleet import LaunchRequest, RunnerFleet, backend_lifetime, gpu_device_id
from modelrunner.engines.gguf_facts import GgufFacts, GgufReadError, read_gguf_facts
from modelrunner.engines.image import EngineImage
from modelrunner.engines.llamacpp.argv import (
    BundleLayout,
    LaunchSettings,
    build_argv,
    packaged_context_size,
    resolve_launch,
)
from modelrunner.engines.llamacpp.memory import (
    MemoryBreakdown,
    corrected_estimate,
    estimate_llamacpp,
    parse_buffer_report,
)
from modelrunner.engines.runner import ContainerRunner
from modelrunner.engines.status import BackendStatus
from modelrunner.shim.images import Image

__all__ = ["LlamaCppBackend", "open_llamacpp_backend"]

NAME = "llama.cpp"
# llama-server prints its buffer report (and its own memory breakdown) at verbosity 4; 3 is the
# default. The few extra lines per request are bounded by the log follower.
LOG_VERBOSITY = ("-lv", "4")
# The prompt cache keeps idle slots' KV in host RAM (8 GiB by default in b11312), growing behind
# the scheduler's back. Off unless the user sets --cache-ram; then the estimate counts it.
PROMPT_CACHE_OFF = ("--cache-ram", "0")
MISSING_SOURCE = (
    "no engine image configured "
    "(set MODELRUNNER_LLAMACPP_IMAGE, or build one with hack/build-engine-llamacpp)"
)


@final
class LlamaCppBackend:
    """llama.cpp's ``Backend``. Create it with :func:`open_llamacpp_backend`."""

    name = NAME
    formats = frozenset({"gguf"})
    host_supported = True

    def __init__(self, environment: EngineEnvironment, nursery: trio.Nursery) -> None:
        self.environment = environment
        self.engine_image = EngineImage(
            environment.containerd, NAME, environment.llamacpp_image, missing_source=MISSING_SOURCE
        )
        self.fleet = RunnerFleet(environment, nursery, NAME, "llamacpp-")

    # -- status and installation ------------------------------------------------------------------

    def status(self) -> str:
        """``Running: llama.cpp b11312-cpu (sha256:...)``, ``Installing: ...``, ``Not Installed``,
        ``Error: ...`` (DMR's grammar)."""
        return str(self.engine_image.status)

    def status_value(self) -> BackendStatus:
        return self.engine_image.status

    @property
    def image(self) -> Image | None:
        return self.engine_image.image

    def runners(self) -> list[ContainerRunner]:
        """The runners started or adopted here and not yet stopped."""
        return self.fleet.runners()

    async def refresh(self) -> None:
        await self.engine_image.refresh()

    async def install(self, progress: Callable[[str], None] | None = None) -> None:
        """Import (tarball) or pull the engine image into containerd; idempotent. ``progress``
        gets DMR's lines: ``Installing llama.cpp backend...``, ``llama.cpp backend installed
        successfully`` (or ``backend installation failed: ...``).

        Raises:
            BackendNotInstalled: no image source, or the import/pull failed.
        """
        await self.engine_image.ensure(progress)

    async def uninstall(self) -> None:
        """Remove the engine image (the scheduler unloads idle runners first).

        Raises:
            BackendBusy: runners of this backend are still running.
        """
        if len(self.fleet):
            raise BackendBusy(
                f"{NAME} still has {len(self.fleet)} runner(s); unload them before uninstalling"
            )
        await self.engine_image.remove()

    # -- configuration and estimate ---------------------------------------------------------------

    def validate_runtime_flags(self, flags: Sequence[str]) -> None:
        """Raises InvalidRuntimeFlags (see ``flags.py`` for the rules)."""
        LLAMACPP_FLAGS.validate(flags)

    def _granted_gpus(self) -> tuple[str, ...]:
        # The cpu build cannot use a GPU, so it is not granted one (nor charged VRAM).
        image = self.engine_image.image
        variant = image.config.labels.get("io.modelrunner.llamacpp.variant", "cpu") if image else "cpu"
        if variant == "cpu":
            return ()
        return tuple(gpu_device_id(gpu) for gpu in self.environment.gpus.devices)

    def launch_settings(
        self, model: ModelSpec, mode: Mode, config: RunnerConfig, facts: GgufFacts
    ) -> LaunchSettings:
        return resolve_launch(
            mode=mode,
            alias=model.name,
            context_size=config.context_size,
            packaged_context_size=packaged_context_size(model.config),
            trained_context=facts.n_ctx_train,
            parallel=config.parallel,
            runtime_flags=config.runtime_flags,
            threads=self.environment.threads or default_threads(),
            gpu_available=bool(self._granted_gpus()),
            default_parallel=self.environment.default_parallel,
        )

    def memory_breakdown(self, model: ModelSpec, mode: Mode, config: RunnerConfig) -> MemoryBreakdown:
        """The estimate by component (blocking: reads the GGUF header, cached per file)."""
        facts = _read_facts(model)
        settings = self.launch_settings(model, mode, config, facts)
        breakdown = estimate_llamacpp(facts, settings, self._granted_gpus())
        cache_mib = _prompt_cache_mib(config.runtime_flags)
        if cache_mib:
            breakdown = replace(breakdown, overhead=breakdown.overhead + cache_mib * (1 << 20))
        return breakdown

    def estimate_memory(self, model: ModelSpec, mode: Mode, config: RunnerConfig) -> MemoryEstimate:
        """Bytes per device the runner will need (blocking: reads the GGUF header once per file).

        Raises:
            EngineStartError: the model is not a readable GGUF file.
            InvalidRuntimeFlags: the configuration is not usable.
        """
        return self.memory_breakdown(model, mode, config).to_estimate()

    # -- runners ----------------------------------------------------------------------------------

    async def start_runner(
        self, model: ModelSpec, mode: Mode, config: RunnerConfig, reservation: MemoryEstimate
    ) -> ContainerRunner:
        """Start llama-server for ``model`` in ``mode``; return once ``/health`` answers 200.

        Raises:
            BackendNotInstalled: the engine image cannot be installed.
            InvalidRuntimeFlags: the configuration is not usable.
            EngineStartError: the model is unreadable, or the engine exited, answered badly or
                missed the load deadline (the message carries the translated log tail).
        Cancellation tears the task down (shielded) and re-raises.
        """
        if model.format.lower() not in self.formats:
            raise EngineStartError(f"{NAME} cannot serve {model.format!r} models (only GGUF)")
        image = await self.engine_image.ensure()
        facts = await trio.to_thread.run_sync(_read_facts, model)
        settings = self.launch_settings(model, mode, config, facts)
        bundle = await trio.to_thread.run_sync(_bundle_layout, model)
        argv = build_argv(settings, bundle)
        ours = list(LOG_VERBOSITY)
        if _prompt_cache_mib(config.runtime_flags) is None:
            ours += PROMPT_CACHE_OFF
        argv[1:1] = ours  # first, so the user's runtime flags can still override them
        gpu_ids = self._granted_gpus()
        breakdown = estimate_llamacpp(facts, settings, gpu_ids)
        report_lines: list[str] = []

        def on_line(line: str) -> None:
            if "buffer size" in line and len(report_lines) < 256:
                report_lines.append(line)

        runner = await self.fleet.launch(
            LaunchRequest(
                model=model,
                mode=mode,
                argv=tuple(argv),
                image=image,
                reservation=reservation,
                gpus=self.environment.gpus.devices if gpu_ids else (),
                on_log_line=on_line,
            )
        )
        runner.launch = settings
        runner.estimate = breakdown.to_estimate()
        # llama.cpp names CUDA devices CUDA0, CUDA1... in the order the container sees them.
        names = {f"CUDA{i}": gpu for i, gpu in enumerate(gpu_ids)}
        runner.engine_report = corrected_estimate(breakdown, parse_buffer_report(report_lines), names)
        return runner

    async def adopt_runners(self) -> list[Runner]:
        """After a daemon restart: adopt this backend's healthy runners, remove its others."""
        return list(await self.fleet.adopt())

    async def stop_all(self, grace: float | None = None) -> None:
        await self.fleet.stop_all(grace)


@contextlib.asynccontextmanager
async def open_llamacpp_backend(
    environment: EngineEnvironment, *, stop_runners_on_exit: bool = True
) -> AsyncIterator[LlamaCppBackend]:
    """The llama.cpp backend, its image state read from containerd on entry.

    Leaving the block stops its runners (unless ``stop_runners_on_exit`` is False) and cancels
    their log followers.
    """
    async with backend_lifetime(
        lambda nursery: LlamaCppBackend(environment, nursery),
        environment,
        stop_runners_on_exit=stop_runners_on_exit,
    ) as backend:
        await backend.refresh()
        yield backend


# -- helpers (blocking; run in a thread where it matters) -------------------------------------------


def _read_facts(model: ModelSpec) -> GgufFacts:
    path = model.gguf_path or (model.bundle_dir / "model.gguf")
    try:
        return read_gguf_facts(path)
    except GgufReadError as exc:
        raise EngineStartError(f"{NAME} cannot read the model {model.name}: {exc}") from exc


def _bundle_layout(model: ModelSpec) -> BundleLayout:
    bundle = model.bundle_dir
    gguf = model.gguf_path or bundle / "model.gguf"
    try:
        relative = gguf.resolve().relative_to(bundle.resolve()).as_posix()
    except ValueError:
        raise EngineStartError(
            f"the model file {gguf} is not inside the bundle {bundle}; the sandbox only mounts the bundle"
        ) from None
    if not (bundle / relative).is_file():
        raise EngineStartError(f"the bundle {bundle} has no {relative}")
    template = "template.jinja" if (bundle / "template.jinja").is_file() else None
    mmproj = "model.mmproj" if (bundle / "model.mmproj").is_file() else None
    return BundleLayout(model=relative, chat_template=template, mmproj=mmproj)


def _prompt_cache_mib(flags: Sequence[str]) -> int | None:
    value: int | None = None
    for flag in LLAMACPP_FLAGS.parse(flags):
        if flag.canonical == "--cache-ram":
            try:
                value = max(0, int(flag.value or "0"))
            except ValueError:
                raise InvalidRuntimeFlags(f"--cache-ram needs a number of MiB, got {flag.value!r}") from None
    return value
