"""modelrunner's own containerd: a private daemon under a state directory, supervised.

``async with open_embedded_containerd(state_dir) as daemon:`` writes a config, starts ``containerd``,
waits until its socket answers, restarts it whenever it dies, and stops it (SIGTERM, then SIGKILL) on
exit. Everything lives under ``state_dir``: the metadata and content root, the runtime state
(bundles), the socket, the runc state root and the log, so it never touches a system containerd's
``/var/lib/containerd`` or ``/run/containerd/runc``. Tasks and their shims survive a daemon restart
or stop; the next daemon on the same state dir re-attaches to them.

The config lists ``required_plugins``: if overlayfs or the runc v2 runtime cannot load, containerd
exits at startup and the error (with the tail of its log) reaches the caller instead of a half-working
daemon. A daemon left behind by a modelrunner that was killed is found through the pid file and
stopped before a new one starts, because two daemons cannot share the metadata database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, final

import trio
from modelrunner.shim.errors import InvalidArgument, Unavailable

__all__ = [
    "EmbeddedContainerd",
    "EmbeddedPaths",
    "EmbeddedStatistics",
    "open_embedded_containerd",
    "render_config",
]

log = logging.getLogger("modelrunner.shim.embedded")

# AF_UNIX paths are limited to 108 bytes including the terminating NUL; containerd also listens on
# "<socket>.ttrpc" for shims.
_SUN_PATH_MAX = 107
_TTRPC_SUFFIX = ".ttrpc"
STOP_TIMEOUT_SECONDS = 10.0
RESTART_BACKOFF = (0.1, 5.0)  # first and longest pause before restarting a dead daemon
STABLE_AFTER_SECONDS = 30.0  # a daemon that ran this long resets the backoff
LOG_ROTATE_BYTES = 16 * 1024 * 1024
_SOCKET_POLL_SECONDS = 0.01

REQUIRED_PLUGINS = (
    "io.containerd.grpc.v1.containers",
    "io.containerd.grpc.v1.content",
    "io.containerd.grpc.v1.diff",
    "io.containerd.grpc.v1.events",
    "io.containerd.grpc.v1.images",
    "io.containerd.grpc.v1.introspection",
    "io.containerd.grpc.v1.leases",
    "io.containerd.grpc.v1.namespaces",
    "io.containerd.grpc.v1.snapshots",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.grpc.v1.version",
    "io.containerd.differ.v1.walking",
    "io.containerd.runtime.v2.task",
    "io.containerd.snapshotter.v1.overlayfs",
)

# Plugins modelrunner never uses. CRI would open a streaming port and read /etc/cni; the other
# snapshotters only log errors on hosts without their filesystems. io.containerd.runtime.v1.linux must
# stay enabled: in containerd 1.6 the tasks service fails to load without it.
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


@dataclass(frozen=True, slots=True)
class EmbeddedPaths:
    """Where an embedded containerd keeps each of its things, all under ``state_dir``."""

    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "root"

    @property
    def state(self) -> Path:
        return self.state_dir / "state"

    @property
    def socket(self) -> Path:
        return self.state_dir / "containerd.sock"

    @property
    def config(self) -> Path:
        return self.state_dir / "config.toml"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "containerd.pid"

    @property
    def log(self) -> Path:
        return self.state_dir / "containerd.log"

    @property
    def runc_root(self) -> Path:
        return self.state_dir / "runc"

    @property
    def runc_v1_root(self) -> Path:
        return self.state_dir / "runc-v1"

    def check(self) -> None:
        """Raises InvalidArgument when the socket path is too long for AF_UNIX."""
        if not self.state_dir.is_absolute():
            raise InvalidArgument(
                "preparing embedded containerd", f"state dir {self.state_dir} must be absolute"
            )
        length = len(os.fsencode(self.socket)) + len(_TTRPC_SUFFIX)
        if length > _SUN_PATH_MAX:
            raise InvalidArgument(
                "preparing embedded containerd",
                f"socket path {self.socket}{_TTRPC_SUFFIX} is {length} bytes, over the {_SUN_PATH_MAX}-byte "
                "limit of unix sockets; choose a shorter state directory",
            )


def _toml_string(value: str | os.PathLike[str]) -> str:
    # A JSON string with only printable ASCII escapes is a valid TOML basic string.
    return json.dumps(os.fspath(value), ensure_ascii=True)


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


def render_config(paths: EmbeddedPaths, *, log_level: str = "info") -> str:
    """The containerd config (version 2) for an embedded daemon (pure)."""
    return "\n".join(
        [
            "# Written by modelrunner for its embedded containerd; rewritten at every start.",
            "version = 2",
            f"root = {_toml_string(paths.root)}",
            f"state = {_toml_string(paths.state)}",
            f"required_plugins = {_toml_list(REQUIRED_PLUGINS)}",
            f"disabled_plugins = {_toml_list(DISABLED_PLUGINS)}",
            "",
            "[grpc]",
            f"  address = {_toml_string(paths.socket)}",
            "",
            "[ttrpc]",
            f"  address = {_toml_string(str(paths.socket) + _TTRPC_SUFFIX)}",
            "",
            "[debug]",
            '  address = ""',
            f"  level = {_toml_string(log_level)}",
            "",
            "[metrics]",
            '  address = ""',
            "",
            "[plugins]",
            '  [plugins."io.containerd.internal.v1.opt"]',
            f"    path = {_toml_string(paths.root / 'opt')}",
            '  [plugins."io.containerd.runtime.v1.linux"]',
            f"    runtime_root = {_toml_string(paths.runc_v1_root)}",
            "",
        ]
    )


@dataclass(frozen=True, slots=True)
class EmbeddedStatistics:
    pid: int | None
    running: bool
    restarts: int
    last_exit_code: int | None
    last_error: str


@final
class EmbeddedContainerd:
    """A supervised private containerd. Create with :func:`open_embedded_containerd`.

    Attributes:
        paths: where its files are.
        address: its socket path (pass to :func:`~modelrunner.shim.client.open_containerd`).
        runc_root: runc's state root for its tasks (pass as ``runc_root`` to ``open_containerd``).
    """

    def __init__(self, paths: EmbeddedPaths, binary: str, log_level: str) -> None:
        self.paths = paths
        self.address = str(paths.socket)
        self.runc_root = str(paths.runc_root)
        self._binary = binary
        self._log_level = log_level
        self._process: trio.Process | None = None
        self._stopping = False
        self._restarts = 0
        self._last_exit_code: int | None = None
        self._last_error = ""
        self._running = trio.Event()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    def statistics(self) -> EmbeddedStatistics:
        return EmbeddedStatistics(
            self.pid, self._running.is_set(), self._restarts, self._last_exit_code, self._last_error
        )

    async def wait_running(self) -> None:
        """Return once a daemon is up and answering (immediately if it is now). A checkpoint."""
        await self._running.wait()

    # -- supervision ----------------------------------------------------------------------------

    async def _supervise(self, process: trio.Process) -> None:
        """Restart the daemon whenever it dies, until _stop(); ``process`` is the one running now."""
        backoff = RESTART_BACKOFF[0]
        while True:
            started = trio.current_time()
            code = await process.wait()
            self._running = trio.Event()
            if self._stopping:
                return
            self._last_exit_code = code
            self._restarts += 1
            if trio.current_time() - started > STABLE_AFTER_SECONDS:
                backoff = RESTART_BACKOFF[0]
            log.error(
                "embedded containerd (pid %d) exited with %s; restarting in %.1fs", process.pid, code, backoff
            )
            while True:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF[1])
                try:
                    process = await self._spawn()
                    break
                except Unavailable as exc:
                    self._last_error = str(exc)
                    log.error("restarting embedded containerd failed: %s", exc)
            self._running.set()

    async def _spawn(self) -> trio.Process:
        paths = self.paths
        log_file = await trio.to_thread.run_sync(_open_log, paths.log)
        with log_file:
            try:
                process = await trio.lowlevel.open_process(
                    [self._binary, "--config", str(paths.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C meant for modelrunner must not kill it behind our back.
                    start_new_session=True,
                )
            except OSError as exc:
                raise Unavailable(
                    "starting embedded containerd", f"cannot run {self._binary!r}: {exc}"
                ) from exc
        self._process = process
        paths.pidfile.write_text(f"{process.pid}\n")
        try:
            await self._wait_ready(process)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _terminate(process)
            raise
        log.info("embedded containerd running (pid %d) at %s", process.pid, paths.socket)
        return process

    async def _wait_ready(self, process: trio.Process) -> None:
        """Return once the daemon accepts connections; raise if it exits first.

        containerd binds its gRPC socket only after every plugin has loaded, so an accepted
        connection means it is ready. Waits under the caller's deadline.
        """
        while True:
            code = process.poll()
            if code is not None:
                raise Unavailable(
                    "starting embedded containerd",
                    f"containerd exited with code {code} before it was ready; the end of {self.paths.log}:\n"
                    + _tail(self.paths.log),
                )
            if await _accepts_connections(self.paths.socket):
                return
            await trio.sleep(_SOCKET_POLL_SECONDS)

    async def _stop(self) -> None:
        self._stopping = True
        if self._process is not None:
            await _terminate(self._process)
        with contextlib.suppress(FileNotFoundError):
            self.paths.pidfile.unlink()


async def _accepts_connections(path: Path) -> bool:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


async def _terminate(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS; returns once the process is reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_SECONDS):
            await process.wait()
            return
        log.warning("embedded containerd (pid %d) ignored SIGTERM; killing it", process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


def _open_log(path: Path) -> BinaryIO:
    """The daemon's log for appending; one generation is kept once it grows past LOG_ROTATE_BYTES."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    return open(path, "ab")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _leftover_pid(paths: EmbeddedPaths) -> int | None:
    """The pid of a containerd still running with this state dir's config, from the pid file."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if os.fsencode(paths.config) not in cmdline:
        return None  # the pid was reused by something else
    return pid


async def _stop_leftover(paths: EmbeddedPaths) -> None:
    """Stop a daemon an earlier (killed) modelrunner left running on this state dir."""
    pid = _leftover_pid(paths)
    if pid is None:
        return
    log.warning(
        "stopping containerd (pid %d) left running on %s by an earlier modelrunner", pid, paths.state_dir
    )
    for sig, patience in ((signal.SIGTERM, STOP_TIMEOUT_SECONDS), (signal.SIGKILL, STOP_TIMEOUT_SECONDS)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        with trio.move_on_after(patience):
            # Not our child, so it cannot be waited for; poll until it is gone or a zombie.
            while _process_state(pid) not in (None, "Z"):  # noqa: ASYNC110
                await trio.sleep(0.02)
            return
    raise Unavailable(
        "starting embedded containerd", f"containerd pid {pid} left on {paths.state_dir} will not die"
    )


def _prepare_dirs(state_dir: str | os.PathLike[str]) -> EmbeddedPaths:
    paths = EmbeddedPaths(Path(os.path.abspath(state_dir)))
    paths.check()
    for directory in (paths.state_dir, paths.root, paths.state, paths.runc_root, paths.runc_v1_root):
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    return paths


@contextlib.asynccontextmanager
async def open_embedded_containerd(
    state_dir: str | os.PathLike[str],
    *,
    binary: str = "containerd",
    log_level: str = "info",
) -> AsyncIterator[EmbeddedContainerd]:
    """Start and supervise a private containerd under ``state_dir`` (created if missing).

    Returns once the daemon answers on ``daemon.address``. Leaving the block stops it (shielded,
    bounded by STOP_TIMEOUT_SECONDS per signal); tasks it was running keep running.

    Raises:
        InvalidArgument: ``state_dir`` is relative or too long for a unix socket path.
        Unavailable: containerd cannot be run or exits during startup (the message has its log tail).
    """
    paths = _prepare_dirs(state_dir)
    await _stop_leftover(paths)
    paths.config.write_text(render_config(paths, log_level=log_level))
    daemon = EmbeddedContainerd(paths, binary, log_level)
    # The first start happens here, outside the nursery, so its failure reaches the caller as is.
    process = await daemon._spawn()
    daemon._running.set()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon._supervise, process)
            try:
                yield daemon
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await daemon._stop()
