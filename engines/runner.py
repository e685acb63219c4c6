"""One engine running as a containerd task: the ``Runner`` every backend returns.

A ``ContainerRunner`` wraps shim/'s ``RunningTask`` with what the scheduler and the proxy need: the
host socket path, the memory reserved and measured, the engine's log (bounded, translated on
failure) and a stop that follows the engine facts:

* stop = SIGTERM, half the grace, a **second SIGTERM** (llama-server can lose a SIGTERM that lands
  right after ``/health`` turns 200; the second one makes it exit at once), the other half, then
  SIGKILL to every process and release (task, container, snapshot, lease) via shim/;
* the socket file is unlinked after exit (llama-server leaves it behind, and a stale file makes the
  next bind fail);
* the log file the containerd shim appends to is followed by a small background task that feeds
  the in-memory tail and truncates the file when it passes the environment's bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import final

import trio
from modelrunner.engines.base import ExitInfo, MemoryEstimate, Mode
from modelrunner.engines.cgroup import CgroupMemory, read_cgroup_memory, write_memory_limit
from modelrunner.engines.errors import EngineError
from modelrunner.engines.logs import LogTail, failure_message
from modelrunner.sandbox import memory_limit_for_reservation
from modelrunner.shim.errors import ContainerdError, NotFound
from modelrunner.shim.tasks import RunningTask

__all__ = ["ContainerRunner", "LogFollower"]

log = logging.getLogger("modelrunner.engines")

LOG_POLL_SECONDS = 1.0
RELEASE_BUDGET_SECONDS = 30.0  # SIGKILL, wait and the four deletions, shielded


@final
class LogFollower:
    """Reads what the engine appended to its log file since the last read (sync, small reads).

    Every line goes to the bounded ``tail`` and to ``on_line`` (llama.cpp's buffer report is read
    that way, whatever the tail has dropped since). When the file passes ``max_bytes`` it is
    truncated: the shim appends with O_APPEND, so later lines land at the new end.
    """

    def __init__(self, path: Path, *, max_bytes: int, on_line: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tail = LogTail()
        self.truncations = 0
        self._offset = 0
        self._partial = b""
        self._on_line = on_line

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # truncated by someone: start over
                    self._offset = 0
                f.seek(self._offset)
                data = f.read(max(0, min(size - self._offset, 4 << 20)))
        except FileNotFoundError:
            return
        self._offset += len(data)
        if data:
            self.tail.feed(data)
            if self._on_line is not None:
                *lines, self._partial = (self._partial + data).split(b"\n")
                for line in lines:
                    self._on_line(line.decode("utf-8", "replace"))
        if self._offset > self.max_bytes:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
                self.truncations += 1
            self._offset = 0

    def end_line_handling(self) -> None:
        """Stop passing lines to ``on_line`` (the start-up reports are read; the per-request lines
        that follow need not be split one by one)."""
        self._on_line = None
        self._partial = b""

    async def follow(self) -> None:
        """Poll every second until cancelled."""
        while True:
            self.poll()
            await trio.sleep(LOG_POLL_SECONDS)


@final
class ContainerRunner:
    """A runner task started (or adopted) by a backend. Created by backends, not directly."""

    def __init__(
        self,
        *,
        task: RunningTask,
        backend: str,
        model_id: str,
        model_name: str,
        mode: Mode,
        socket_path: Path,
        runner_dir: Path | None,
        cgroups_path: str,
        reservation: MemoryEstimate,
        follower: LogFollower | None,
    ) -> None:
        self.runner_id = task.container_id
        self.backend = backend
        self.model_id = model_id
        self.model_name = model_name
        self.mode = mode
        self.socket_path = socket_path
        self.reservation = reservation
        self.cgroups_path = cgroups_path
        self.runner_dir = runner_dir
        self.task = task
        self.follower = follower
        self.estimate: MemoryEstimate | None = None
        """What the backend predicted before the start."""
        self.engine_report: MemoryEstimate | None = None
        """The engine's own account once ready (llama.cpp's buffer sizes); the scheduler's correction."""
        self.adopted = False
        self.argv: tuple[str, ...] = ()
        """The engine's command line (empty for an adopted runner)."""
        self.launch: object | None = None
        """The backend's resolved launch settings (llama.cpp: ``LaunchSettings``)."""
        self.on_stopped: Callable[[ContainerRunner], None] | None = None
        """Called once the runner is stopped and released (the backend forgets it then)."""
        self._follow_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"<ContainerRunner {self.runner_id} {self.backend} {self.model_name} {self.mode}>"

    @property
    def pid(self) -> int:
        return self.task.pid

    @property
    def log_tail(self) -> LogTail:
        if self.follower is None:
            return LogTail()
        self.follower.poll()
        return self.follower.tail

    async def follow_log(self) -> None:
        """Run the log follower until the runner stops (started by the backend in its nursery)."""
        if self.follower is None:
            return
        with self._follow_scope:
            await self.follower.follow()

    async def wait_exit(self) -> ExitInfo:
        """Return when the task exits, for any reason (a stop included). A checkpoint."""
        try:
            status = await self.task.wait()
        except NotFound:
            return ExitInfo(None, False, f"{self.backend} task {self.runner_id} vanished")
        except ContainerdError as exc:
            return ExitInfo(None, False, f"lost track of {self.backend} task {self.runner_id}: {exc}")
        if self._stopping and not status.oom_killed:
            return ExitInfo(status.code, False, "")
        message = failure_message(self.backend, self.log_tail, oom_killed=status.oom_killed,
                                  exit_code=status.code)
        return ExitInfo(status.code, status.oom_killed, message)

    def memory(self) -> CgroupMemory:
        """The cgroup's and the process's memory numbers now (blocking, tiny reads)."""
        return read_cgroup_memory(self.cgroups_path, self.task.pid or None)

    async def measured_memory(self) -> int | None:
        """Bytes the runner uses now: the larger of its cgroup usage and its RSS; None if unknown."""
        await trio.lowlevel.checkpoint()
        return self.memory().in_use

    async def set_memory_limit(self, ram_bytes: int) -> None:
        """Move the runner's cgroup limit to what a reservation of ``ram_bytes`` gets at start
        (``sandbox.memory_limit_for_reservation``: the reservation plus a margin), so the
        scheduler can lower a reservation to the measured use without the engine growing back
        into bytes lent to someone else.

        Raises:
            EngineError: the cgroup is gone, or the kernel refused (below current use).
        """
        limit = memory_limit_for_reservation(ram_bytes)
        try:
            await trio.to_thread.run_sync(write_memory_limit, self.cgroups_path, limit)
        except OSError as exc:
            detail = f"cannot set the memory limit of {self.runner_id} to {limit} bytes: {exc}"
            raise EngineError(detail) from exc
        self.reservation = MemoryEstimate(ram=ram_bytes, vram=self.reservation.vram)

    def _exited(self) -> bool:
        return self.task.exit_status is not None

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, a second SIGTERM at half of ``grace``, SIGKILL at ``grace`` (at once for 0); release
        everything (task, container, snapshot, lease, socket file, runner dir).

        Idempotent and safe to call from several tasks (later calls wait for the first).
        Cancellation skips ahead to SIGKILL; the kill and the release are shielded.

        Raises:
            ContainerdError: a deletion failed (labelled leftovers are removed by a later cleanup).
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            for _ in range(2 if grace > 0 else 0):  # grace 0: straight to SIGKILL
                if self._exited():
                    break
                await self.task.kill(signal.SIGTERM)
                with trio.move_on_after(max(0.0, grace) / 2):
                    await self.task.wait()
        except ContainerdError as exc:
            log.warning("signalling %s failed, killing it: %s", self.runner_id, exc)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    with trio.move_on_after(RELEASE_BUDGET_SECONDS):
                        await self.task.stop(grace=0)
                finally:
                    self._follow_scope.cancel()
                    if self.follower is not None:
                        self.follower.poll()
                    self.socket_path.unlink(missing_ok=True)
                    if self.runner_dir is not None:
                        shutil.rmtree(self.runner_dir, ignore_errors=True)
                    self._stopped.set()
                    if self.on_stopped is not None:
                        self.on_stopped(self)
