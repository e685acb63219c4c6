"""Start the real `modelrunner serve` as a subprocess (embedded containerd), as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.cli.cli_runner import CLI

MODELRUNNER = Path(sys.executable).with_name("modelrunner")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """One `modelrunner serve` process with its own state dir, store, socket and port."""

    root: Path
    image_tar: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def socket(self) -> Path:
        return self.root / "modelrunner.sock"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    def cli(self) -> CLI:
        return CLI({"MODEL_RUNNER_HOST": self.url})

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "MODELRUNNER_LLAMACPP_IMAGE_TAR": str(self.image_tar)}
        env.pop("MODEL_RUNNER_HOST", None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(MODELRUNNER), "serve", "--state-dir", str(self.state_dir), "--models-path",
                 str(self.root / "models"), "--socket", str(self.socket), "--port", str(self.port),
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/engines/status", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not answer within {timeout} s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def ctr(self, *args: str) -> str:
        proc = subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "modelrunner", *args],
            capture_output=True, text=True, check=True, timeout=30,
        )
        return proc.stdout

    def ctr_rows(self, *args: str) -> list[str]:
        """`ctr ... ls -q` rows."""
        return [line for line in self.ctr(*args).splitlines() if line.strip()]
