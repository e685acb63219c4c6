"""Real llama-server runners for api/ tests and measurements, without containerd or the scheduler.

`RunnerPool` implements the scheduler port api/ uses (`acquire`, `ps`, `metrics`, ...) by starting
the real `llama-server` binary bare, one process per (model, mode), on a Unix socket in a temp dir.
Processes are started on first use and kept until `close()`, so one pool can serve a whole test
session. Its state is guarded by a thread lock, not trio primitives, so it can outlive a trio run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trio
from modelrunner.engines import Mode
from modelrunner.scheduler import ConfigureRequest, ModelNotFound
from prometheus_client import CollectorRegistry, Counter

from tests.api.conftest import FakeLease, FakeRow


def http_get_unix(socket_path: Path, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A blocking one-shot GET over a Unix socket (for readiness checks)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def start_llama_server(
    binary: Path,
    model: Path,
    socket_path: Path,
    *,
    alias: str,
    embeddings: bool = False,
    log_path: Path | None = None,
    extra: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Start llama-server on `socket_path` and return once `/health` answers 200.

    Raises:
        RuntimeError: it exited or did not become healthy in time (with its log tail).
    """
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a stale socket file makes llama-server fail to bind
    argv = [
        str(binary),
        "-m",
        str(model),
        "--host",
        str(socket_path),
        "--alias",
        alias,
        "--no-webui",
        "--metrics",
        "-t",
        "2",
        "-np",
        "4",
    ]
    # Embedding models keep their own (small) context; chat slots get 2048 tokens each.
    argv += ["--embeddings"] if embeddings else ["-c", "8192"]
    argv += list(extra)
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - owned by the process below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"llama-server exited with {proc.returncode}: {tail}")
        try:
            status, _ = http_get_unix(socket_path, "/health")
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.01)
    stop_process(proc)
    raise RuntimeError(f"llama-server for {model} did not become healthy in {timeout}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then a second SIGTERM and SIGKILL (llama-server can lose the first, engine.md §2.4)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class PoolModel:
    name: str
    path: Path
    model_id: str


@dataclass(frozen=True)
class Row(FakeRow):
    """A `ps` row that also names the runner's socket (for `/metrics` scrapes)."""

    socket_path: Path


@dataclass
class _Runner:
    model: PoolModel
    mode: Mode
    socket_path: Path
    process: subprocess.Popen[bytes]
    in_use: int = 0
    last_used: datetime | None = None


class RunnerPool:
    """A test double of the scheduler that runs real llama-server processes."""

    def __init__(self, binary: Path, models: Mapping[str, Path], *, state_dir: Path | None = None) -> None:
        self.binary = binary
        self.models = {
            name: PoolModel(name, path, "sha256:" + hashlib.sha256(name.encode()).hexdigest())
            for name, path in models.items()
        }
        self._own_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="mr-api-runners-"))
        self._runners: dict[tuple[str, Mode], _Runner] = {}
        self._lock = threading.Lock()
        self.broken: list[str] = []
        self.acquired: list[tuple[str, Mode, str | None]] = []
        self.unload_calls: list[tuple[bool, str | None, tuple[str, ...]]] = []
        self.configured: list[ConfigureRequest] = []
        self.registry = CollectorRegistry()
        self.loads = Counter("test_pool_loads", "Runners started by the test pool.", registry=self.registry)

    def _runner_blocking(self, model: PoolModel, mode: Mode) -> _Runner:
        key = (model.name, mode)
        with self._lock:
            runner = self._runners.get(key)
            # A dead runner is still handed out until a lease reports it broken, the way a
            # scheduler that has not noticed the exit yet would.
            if runner is not None:
                return runner
            index = len(self._runners)
            socket_path = self.state_dir / f"runner-{index}-{mode.value}.sock"
            process = start_llama_server(
                self.binary,
                model.path,
                socket_path,
                alias=model.name,
                embeddings=mode is Mode.EMBEDDING,
                log_path=self.state_dir / f"runner-{index}.log",
            )
            runner = _Runner(model, mode, socket_path, process)
            self._runners[key] = runner
            self.loads.inc()
            return runner

    def socket_for(self, model: str, mode: Mode = Mode.COMPLETION) -> Path:
        return self._runner_blocking(self.models[model], mode).socket_path

    def kill(self, model: str, mode: Mode = Mode.COMPLETION) -> None:
        """Kill a runner's process (to test a dead engine); the next acquire starts a new one."""
        runner = self._runners.get((model, mode))
        if runner is not None:
            runner.process.kill()
            runner.process.wait()

    # -- the scheduler port ---------------------------------------------------------------------

    def acquire(
        self,
        model: str,
        mode: Mode = Mode.COMPLETION,
        backend: str | None = None,
        *,
        keep_alive: float | None = None,
    ) -> contextlib.AbstractAsyncContextManager[FakeLease]:
        return self._acquire(model, Mode(mode), backend)

    @contextlib.asynccontextmanager
    async def _acquire(self, model: str, mode: Mode, backend: str | None) -> AsyncIterator[FakeLease]:
        self.acquired.append((model, mode, backend))
        entry = self.models.get(model)
        if entry is None:
            raise ModelNotFound(model)
        runner = await trio.to_thread.run_sync(self._runner_blocking, entry, mode)
        runner.in_use += 1
        lease = FakeLease(runner.socket_path, entry.model_id, model, backend or "llama.cpp", mode)
        try:
            yield lease
        finally:
            runner.in_use -= 1
            runner.last_used = datetime.now(UTC)
            if lease.broken:
                self.broken.extend(lease.broken)
                with self._lock:
                    if self._runners.get((model, mode)) is runner:
                        del self._runners[(model, mode)]
                stop_process(runner.process)

    def ps(self) -> list[Row]:
        return [
            Row(
                "llama.cpp",
                r.model.name,
                r.model.model_id,
                r.mode,
                r.last_used,
                r.in_use > 0,
                False,
                300.0,
                64 << 20,
                None,
                r.socket_path,
            )
            for r in self._runners.values()
            if r.process.poll() is None
        ]

    def df(self) -> object:
        return type(
            "Usage",
            (),
            {
                "models_disk_usage": sum(m.path.stat().st_size for m in self.models.values()),
                "default_backend_disk_usage": self.binary.stat().st_size,
            },
        )()

    def metrics(self) -> CollectorRegistry:
        return self.registry

    async def unload(
        self, *, all: bool = False, backend: str | None = None, models: Sequence[str] = ()
    ) -> int:
        self.unload_calls.append((all, backend, tuple(models)))
        return 0

    async def configure(self, request: ConfigureRequest, *, preload: bool = False) -> object:
        self.configured.append(request)
        return request

    def configs(self, model: str | None = None) -> list[object]:
        return []

    def close(self) -> None:
        for runner in self._runners.values():
            stop_process(runner.process)
        self._runners.clear()
        if self._own_dir:
            for path in self.state_dir.iterdir():
                path.unlink()
            self.state_dir.rmdir()
