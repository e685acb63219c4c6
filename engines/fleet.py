"""Starting, tracking, adopting and stopping one backend's runners (shared by every backend).

``RunnerFleet.launch`` is the engine-independent part of a start: the runner's directory (socket
dir owned by the engine's uid, log file, no stale socket), the sandbox spec (sandbox/) with the
memory limit derived from the reservation and the granted GPUs' CDI edits, the task (shim/), and
readiness: ``GET /health`` every 100 ms while watching for the task's exit, under one load deadline.
Any failure or cancellation stops the task (shielded) and removes the directory before the error
propagates, as :class:`~modelrunner.engines.errors.EngineStartError` with the translated log tail.

The fleet lives in the backend's nursery, which runs each runner's log follower.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, final

import trio
from modelrunner.engines.base import MemoryEstimate, Mode, ModelSpec
from modelrunner.engines.environment import EngineEnvironment
from modelrunner.engines.errors import EngineStartError
from modelrunner.engines.health import EngineGaveUp, EngineUnhealthy, probe_health, wait_ready
from modelrunner.engines.logs import failure_message
from modelrunner.engines.runner import ContainerRunner, LogFollower
from modelrunner.engines.sched import run_as_batch
from modelrunner.sandbox import (
    GpuDevice,
    SandboxRequest,
    build_spec,
    memory_limit_for_reservation,
    prepare_engine_dir,
)
from modelrunner.shim.errors import ContainerdError
from modelrunner.shim.images import Image
from modelrunner.shim.labels import RunnerLabels
from modelrunner.shim.tasks import TaskRequest, TaskStatus, adopt, list_runners, start_task

__all__ = ["MAX_SOCKET_PATH", "LaunchRequest", "RunnerFleet", "gpu_device_id"]

log = logging.getLogger("modelrunner.engines")

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the NUL
DEFAULT_ENGINE_UID = 65532
ERROR_TAIL = 1024


def gpu_device_id(gpu: GpuDevice) -> str:
    """The id a GPU has in ``MemoryEstimate.vram`` (the scheduler's ledger device name)."""
    return f"cuda:{gpu.index}"


@dataclass(frozen=True)
class LaunchRequest:
    """One runner to start: the model, its mode, the engine's argv and image, the reservation."""

    model: ModelSpec
    mode: Mode
    argv: tuple[str, ...]
    image: Image
    reservation: MemoryEstimate
    gpus: tuple[GpuDevice, ...] = ()
    extra_env: tuple[str, ...] = ()
    on_log_line: Callable[[str], None] | None = None
    """Called with each engine log line until the runner is ready (start-up reports)."""


@final
class RunnerFleet:
    """The runners of one backend. Created by the backend inside its own nursery."""

    def __init__(
        self, environment: EngineEnvironment, nursery: trio.Nursery, backend: str, id_prefix: str
    ) -> None:
        self.environment = environment
        self.backend = backend
        self.id_prefix = id_prefix
        self._nursery = nursery
        self._runners: dict[str, ContainerRunner] = {}

    def runners(self) -> list[ContainerRunner]:
        return list(self._runners.values())

    def __len__(self) -> int:
        return len(self._runners)

    async def launch(self, request: LaunchRequest) -> ContainerRunner:
        """Start the runner and return it once ``/health`` answers 200 (see the module doc).

        Raises:
            EngineStartError: exit, bad answer or load deadline; carries the translated log tail.
            ContainerdError: containerd refused to create the task.
        """
        env = self.environment
        runner_id = self.id_prefix + secrets.token_hex(6)
        runner_dir = env.state_dir / "runners" / runner_id
        engine_dir = runner_dir / "engine"
        socket_path = engine_dir / "engine.sock"
        log_path = runner_dir / "engine.log"
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise EngineStartError(
                f"the runner socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter state directory"
            )
        uid, gid = image_user(request.image)
        cgroups_path = f"/{env.containerd.namespace}/{runner_id}"
        follower = LogFollower(log_path, max_bytes=env.max_log_bytes, on_line=request.on_log_line)
        try:
            sandbox_request = await self._sandbox_request(request, engine_dir, cgroups_path, uid, gid)
            await trio.to_thread.run_sync(prepare_runner_dir, sandbox_request, socket_path, log_path)
            spec = build_spec(sandbox_request)
            labels = RunnerLabels(
                engine=self.backend,
                model_id=request.model.id,
                mode=str(request.mode),
                socket_path=str(socket_path),
                memory_reservation=request.reservation.total(),
                name=request.model.name,
                config_digest=config_digest(request.argv, request.image.digest),
            )
            task_request = TaskRequest(
                container_id=runner_id, image=request.image, spec=spec, labels=labels, log_path=log_path
            )
            task = await start_task(env.containerd, task_request)  # releases what it made if it fails
        except BaseException:
            shutil.rmtree(runner_dir, ignore_errors=True)
            raise
        runner = ContainerRunner(
            task=task,
            backend=self.backend,
            model_id=request.model.id,
            model_name=request.model.name,
            mode=request.mode,
            socket_path=socket_path,
            runner_dir=runner_dir,
            cgroups_path=cgroups_path,
            reservation=request.reservation,
            follower=follower,
        )
        runner.argv = request.argv
        try:
            await self._wait_ready(runner)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await runner.stop(grace=0)
                except ContainerdError as exc:
                    log.warning("cleaning up runner %s after a failed start: %s", runner_id, exc)
            raise
        follower.poll()
        follower.end_line_handling()
        refused = run_as_batch(runner.pid)
        if refused is not None:
            log.info("runner %s keeps the normal CPU policy (%s)", runner_id, refused)
        self.track(runner)
        return runner

    async def _sandbox_request(
        self, request: LaunchRequest, engine_dir: Path, cgroups_path: str, uid: int, gid: int
    ) -> SandboxRequest:
        env = self.environment
        devices: tuple[Any, ...] = ()
        if request.gpus:
            if env.cdi is None:
                raise EngineStartError(
                    f"{self.backend} needs GPUs but no CDI specs were found (run: nvidia-ctk cdi generate)"
                )
            names = [gpu.cdi_name for gpu in request.gpus]
            devices = await trio.to_thread.run_sync(env.cdi.resolve, names)
        return SandboxRequest(
            args=request.argv,
            bundle_dir=str(request.model.bundle_dir.resolve()),
            engine_dir=str(engine_dir),
            memory_limit_bytes=memory_limit_for_reservation(max(request.reservation.ram, 1)),
            cgroups_path=cgroups_path,
            uid=uid,
            gid=gid,
            env=tuple(request.image.config.env),
            extra_env=request.extra_env,
            devices=devices,
            annotations=(("io.modelrunner.model", request.model.name),),
        )

    async def _wait_ready(self, runner: ContainerRunner) -> None:
        """Poll /health until 200 while watching for the exit; one load deadline for both."""
        exited: list[bool] = []

        async def watch_exit(cancel: trio.CancelScope) -> None:
            try:
                await runner.task.wait()
            except ContainerdError as exc:
                log.warning("lost the task of runner %s while it loaded: %s", runner.runner_id, exc)
            exited.append(True)
            cancel.cancel()

        timeout = self.environment.load_timeout
        try:
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_exit, nursery.cancel_scope)
                    try:
                        await wait_ready(
                            runner.socket_path,
                            gave_up=lambda: "exited" if runner.task.exit_status is not None else None,
                        )
                    except EngineGaveUp:
                        exited.append(True)
                    nursery.cancel_scope.cancel()
        except trio.TooSlowError:
            text = runner.log_tail.text(ERROR_TAIL)
            raise EngineStartError(
                f"{self.backend} took too long to initialize (no /health 200 within {timeout:g} s)"
                + (f"\n\nVerbose output:\n{text}" if text else ""),
                log_tail=text,
            ) from None
        except EngineUnhealthy as exc:
            raise EngineStartError(
                f"{self.backend} answered /health with HTTP {exc.status} while loading",
                log_tail=runner.log_tail.text(ERROR_TAIL),
            ) from exc
        if exited:
            status = runner.task.exit_status
            tail = runner.log_tail
            raise EngineStartError(
                failure_message(
                    self.backend,
                    tail,
                    oom_killed=bool(status and status.oom_killed),
                    exit_code=status.code if status else None,
                ),
                log_tail=tail.text(ERROR_TAIL),
                exit_code=status.code if status else None,
                oom_killed=bool(status and status.oom_killed),
            )

    def track(self, runner: ContainerRunner) -> None:
        self._runners[runner.runner_id] = runner
        runner.on_stopped = self._forget
        self._nursery.start_soon(runner.follow_log)

    def _forget(self, runner: ContainerRunner) -> None:
        self._runners.pop(runner.runner_id, None)

    async def adopt(self) -> list[ContainerRunner]:
        """Adopt this backend's runners that answer /health with 200; stop and release the rest of
        them (other backends' runners are left alone)."""
        client = self.environment.containerd
        adopted: list[ContainerRunner] = []
        for record in await list_runners(client):
            labels = record.labels
            if labels is None or labels.engine != self.backend or record.container_id in self._runners:
                continue
            socket_path = Path(labels.socket_path) if labels.socket_path else None
            healthy = (
                record.status is TaskStatus.RUNNING
                and socket_path is not None
                and await probe_health(socket_path) == 200
            )
            try:
                mode = Mode(labels.mode)
            except ValueError:
                healthy, mode = False, Mode.COMPLETION
            runner_dir = self.environment.state_dir / "runners" / record.container_id
            runner = ContainerRunner(
                task=adopt(client, record),
                backend=self.backend,
                model_id=labels.model_id,
                model_name=labels.name,
                mode=mode,
                socket_path=socket_path or runner_dir / "engine" / "engine.sock",
                runner_dir=runner_dir if runner_dir.is_dir() else None,
                cgroups_path=f"/{client.namespace}/{record.container_id}",
                reservation=MemoryEstimate(ram=labels.memory_reservation),
                follower=LogFollower(runner_dir / "engine.log", max_bytes=self.environment.max_log_bytes),
            )
            runner.adopted = True
            if not healthy:
                log.info("removing runner %s (%s): not healthy", record.container_id, record.status.value)
                try:
                    await runner.stop(grace=1.0)
                except ContainerdError as exc:
                    log.warning("could not remove runner %s: %s", record.container_id, exc)
                continue
            self.track(runner)
            adopted.append(runner)
        return adopted

    async def stop_all(self, grace: float | None = None) -> None:
        """Stop every runner (concurrently)."""
        grace = self.environment.stop_grace if grace is None else grace
        async with trio.open_nursery() as nursery:
            for runner in list(self._runners.values()):
                nursery.start_soon(runner.stop, grace)


def prepare_runner_dir(request: SandboxRequest, socket_path: Path, log_path: Path) -> None:
    """Blocking. Make the runner's directory, its log file, and (via sandbox/) the engine dir owned
    by the engine's user; the daemon (root) reaches the socket regardless.

    A stale socket file at ``socket_path`` (left by an engine that died) is removed first:
    llama-server cannot bind over it, and sandbox/ only takes over an empty engine dir.
    """
    log_path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    if socket_path.is_socket():
        socket_path.unlink()
    prepare_engine_dir(request)
    log_path.touch(mode=0o600)


def image_user(image: Image) -> tuple[int, int]:
    """The engine image's numeric ``uid:gid`` (65532 when it names none)."""
    user = image.config.user or f"{DEFAULT_ENGINE_UID}:{DEFAULT_ENGINE_UID}"
    uid_text, _, gid_text = user.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise EngineStartError(
            f"the engine image {image.ref} names its user {user!r}; it must be numeric (uid:gid)"
        ) from None
    return uid, gid


def config_digest(argv: Sequence[str], image_digest: str) -> str:
    payload = json.dumps({"argv": list(argv), "image": image_digest}, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()


class _StoppableBackend(Protocol):
    async def stop_all(self, grace: float | None = None) -> None: ...


_B = TypeVar("_B", bound=_StoppableBackend)


@contextlib.asynccontextmanager
async def backend_lifetime(
    make: Callable[[trio.Nursery], _B], environment: EngineEnvironment, *, stop_runners_on_exit: bool
) -> AsyncIterator[_B]:
    """A backend made with the nursery that runs its runners' log followers.

    Leaving the block stops its runners (unless ``stop_runners_on_exit`` is False, as when the
    daemon leaves them for the next one to adopt) and cancels the followers.
    """
    async with trio.open_nursery() as nursery:
        backend = make(nursery)
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True):
                if stop_runners_on_exit:
                    with trio.move_on_after(environment.stop_grace + 60):
                        await backend.stop_all()
            nursery.cancel_scope.cancel()
