"""Private services a scenario starts and stops: a work directory, Debian's docker-registry, the
llama.cpp engine build, the test models, and the modelrunner daemon (``modelrunner serve``).

Everything binds to 127.0.0.1 or a Unix socket under a short temp directory (Unix socket paths max
out at 107 bytes), and every process started here is stopped on exit: SIGTERM, a grace period, then
SIGKILL, the way trio's ``run_process`` does it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.httpclient import Endpoint, HttpConnection, HttpError
from tests.fixtures.registry import REGISTRY_BINARY, Registry
from tests.fixtures.registry import run_registry as start_test_registry

__all__ = [
    "REPO",
    "Daemon",
    "EngineBuild",
    "Registry",
    "ServiceError",
    "engine_build",
    "free_port",
    "open_daemon",
    "process_cpu_seconds",
    "remove_namespace_cgroups",
    "run_registry",
    "stop_process",
    "test_models",
    "work_dir",
]

REPO = Path(__file__).resolve().parents[1]
DAEMON_READY_SECONDS = 90.0
DAEMON_STOP_SECONDS = 60.0
DAEMON_NAMESPACE = "modelrunner-bench"


class ServiceError(RuntimeError):
    """A service the benchmark needs did not start; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A short private directory under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"mrb-{name}-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; returns once the process is reaped."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def remove_namespace_cgroups(namespace: str) -> None:
    """Remove the per-namespace parent cgroups (``/sys/fs/cgroup/<controller>/<namespace>``) that
    containerd leaves behind after its tasks are gone. A cgroup still in use refuses and stays."""
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return
    for controller in root.iterdir():
        path = controller / namespace
        if not path.is_dir():
            continue
        for child in [*sorted(path.rglob("*"), reverse=True), path]:  # deepest first
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()


def _log_tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


# --- engine build and models ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineBuild:
    image_tar: Path
    """OCI image-layout tarball for containerd."""
    binary: Path
    """The same llama-server, for running as a bare process."""
    image_ref: str


def engine_build() -> EngineBuild:
    """The llama.cpp engine from ``hack/build-engine-llamacpp`` (cached; about 6 min when cold).

    Raises:
        ServiceError: the build failed.
    """
    proc = subprocess.run(
        [str(REPO / "hack" / "build-engine-llamacpp")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ServiceError(f"hack/build-engine-llamacpp failed:\n{proc.stderr[-3000:]}")
    image_tar = Path(proc.stdout.strip().splitlines()[-1])
    binary = image_tar.parent / "bin" / "llama-server"
    if not image_tar.is_file() or not binary.is_file():
        raise ServiceError(f"hack/build-engine-llamacpp printed {image_tar}, but it or {binary} is missing")
    tag = image_tar.name.removeprefix("llama.cpp-").removesuffix(".oci.tar")  # b11312-cpu
    return EngineBuild(image_tar, binary, f"docker.io/modelrunner/llama.cpp:{tag}")


def test_models(directory: Path) -> dict[str, Path]:
    """Write the generated test models (``hack/make-test-models``) into ``directory``; name -> path.

    Raises:
        ServiceError: the generator failed.
    """
    proc = subprocess.run(
        [str(REPO / "hack" / "make-test-models"), str(directory)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if proc.returncode != 0:
        raise ServiceError(f"hack/make-test-models failed:\n{proc.stderr[-3000:]}")
    models = {path.stem: path for path in directory.glob("*.gguf")}
    if "chat" not in models:
        raise ServiceError(f"hack/make-test-models wrote no chat.gguf into {directory}")
    return models


# --- registry -------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_registry(directory: Path) -> Iterator[Registry]:
    """Debian's docker-registry (CNCF distribution v2), anonymous, on a free loopback port: started
    by the test suite's own fixture code, so benchmarks and tests run the same registry.

    Raises:
        ServiceError: it is not installed or did not start.
    """
    if not Path(REGISTRY_BINARY).exists():
        raise ServiceError(f"{REGISTRY_BINARY} is missing (apt-get install docker-registry)")
    with contextlib.ExitStack() as stack:
        try:
            registry = stack.enter_context(start_test_registry(directory, "none"))
        except RuntimeError as exc:
            raise ServiceError(f"docker-registry did not start: {exc}") from exc
        yield registry


# --- the daemon -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Daemon:
    """A running ``modelrunner serve``."""

    pid: int
    socket_path: Path
    port: int
    state_dir: Path
    models_path: Path
    log_path: Path

    @property
    def tcp(self) -> Endpoint:
        return Endpoint.tcp("127.0.0.1", self.port)

    @property
    def unix(self) -> Endpoint:
        return Endpoint.unix(str(self.socket_path))

    def cpu_seconds(self) -> float:
        """CPU time the daemon process (all its threads, not its children) has used so far.

        Unlike wall time, this barely moves when other tenants load the machine, so CPU per request
        is the steadiest measure of what the daemon itself costs.

        Raises:
            ServiceError: the process is gone.
        """
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError as exc:
            raise ServiceError(f"the daemon (pid {self.pid}) is gone") from exc
        return process_cpu_seconds(stat)

    def rss_bytes(self) -> int:
        """The daemon process's resident set size now (VmRSS), in bytes.

        Raises:
            ServiceError: the process is gone.
        """
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError as exc:
            raise ServiceError(f"the daemon (pid {self.pid}) is gone") from exc
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServiceError(f"/proc/{self.pid}/status has no VmRSS line")


def process_cpu_seconds(stat: str) -> float:
    """utime + stime from a ``/proc/PID/stat`` line, in seconds (pure).

    The command name (field 2) may hold spaces and parentheses, so fields are counted from the last
    ``)``: utime and stime are fields 14 and 15 of the line.

    Raises:
        ValueError: the text is not a stat line.
    """
    _, paren, rest = stat.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 13:
        raise ValueError("not a /proc/PID/stat line")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def _wait_daemon_ready(proc: trio.Process, endpoint: Endpoint, log: Path) -> None:
    connection = HttpConnection(endpoint)
    try:
        with trio.move_on_after(DAEMON_READY_SECONDS):
            while True:
                if proc.returncode is not None:
                    raise ServiceError(f"modelrunner serve exited with {proc.returncode}:\n{_log_tail(log)}")
                try:
                    response = await connection.request("GET", "/version")
                    if response.status == 200:
                        return
                except (OSError, HttpError):
                    await connection.aclose()
                await trio.sleep(0.05)
        raise ServiceError(
            f"modelrunner serve did not answer within {DAEMON_READY_SECONDS:.0f} s:\n{_log_tail(log)}"
        )
    finally:
        await connection.aclose()


@contextlib.asynccontextmanager
async def open_daemon(
    directory: Path,
    engine: EngineBuild,
    *,
    memory: int | None = None,
    extra_args: tuple[str, ...] = (),
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Daemon]:
    """``modelrunner serve`` with its own state dir (and so its own embedded containerd), models
    dir, Unix socket and loopback port, the engine image taken from ``engine``'s tarball.

    Models packaged into ``directory / "models"`` before entering are there when it starts.
    Leaving the block sends SIGTERM and waits for the daemon to stop its engines (SIGKILL after
    DAEMON_STOP_SECONDS).

    Raises:
        ServiceError: the daemon exited or did not answer ``GET /version`` in time.
    """
    state_dir = directory / "state"
    models_path = directory / "models"
    socket_path = directory / "modelrunner.sock"
    log = directory / "daemon.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    models_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "modelrunner",
        "serve",
        "--socket",
        str(socket_path),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--models-path",
        str(models_path),
        "--state-dir",
        str(state_dir),
        "--namespace",
        DAEMON_NAMESPACE,
        "--log-level",
        "warning",
    ]
    if memory is not None:
        command += ["--memory", str(memory)]
    command += list(extra_args)
    env = {
        key: value
        for key, value in os.environ.items()
        # The daemon's own settings come from the flags above, not from whoever runs the bench.
        if not key.startswith(("MODEL_RUNNER_", "MODELRUNNER_"))
        and key not in ("MODELS_PATH", "CONTAINERD_ADDRESS", "LOG_LEVEL")
    }
    env["MODELRUNNER_LLAMACPP_IMAGE_TAR"] = str(engine.image_tar)
    env.update(extra_env or {})
    log_file = await trio.to_thread.run_sync(open, log, "wb")
    with log_file:
        proc = await trio.lowlevel.open_process(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(directory)
        )
    try:
        await _wait_daemon_ready(proc, Endpoint.unix(str(socket_path)), log)
        yield Daemon(proc.pid, socket_path, port, state_dir, models_path, log)
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(DAEMON_STOP_SECONDS):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await trio.to_thread.run_sync(remove_namespace_cgroups, DAEMON_NAMESPACE)
