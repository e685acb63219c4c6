"""Start the real llama-server binary bare on the host (no containerd), for tests/engine_bare.

``running_llama_server`` is the one way these tests start a server: it listens on a Unix socket
in a private directory, is ready once ``/health`` answers 200, and is always stopped with SIGTERM,
then SIGKILL after a grace period (a SIGTERM that lands right after startup can be lost, see
shared/reference/engine.md section 2.4).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BareLlamaServer:
    socket: Path
    log: Path
    process: subprocess.Popen[bytes]
    client: httpx.Client  # base URL http://engine, speaks over the socket

    def log_tail(self, n_bytes: int = 4000) -> str:
        return self.log.read_bytes()[-n_bytes:].decode("utf-8", errors="replace")


class ServerStartError(RuntimeError):
    pass


@contextlib.contextmanager
def running_llama_server(
    binary: Path, model: Path, *, alias: str, extra_args: Sequence[str] = ()
) -> Iterator[BareLlamaServer]:
    # A short private directory: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="mr-bare-") as run_dir:
        socket = Path(run_dir) / "engine.sock"
        log = Path(run_dir) / "llama-server.log"
        socket.unlink(missing_ok=True)  # llama-server refuses to bind over a stale socket file
        argv = [
            str(binary), "-m", str(model), "--host", str(socket), "--no-webui",
            "-np", "1", "-t", "2", "--alias", alias, *extra_args,
        ]  # fmt: skip
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)),
            base_url="http://engine",
            timeout=REQUEST_TIMEOUT_S,
        )
        server = BareLlamaServer(socket=socket, log=log, process=process, client=client)
        try:
            _wait_until_healthy(server)
            yield server
        finally:
            client.close()
            _stop(process)
            socket.unlink(missing_ok=True)  # llama-server leaves it behind


def _wait_until_healthy(server: BareLlamaServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerStartError(f"llama-server exited with {code} during startup:\n{server.log_tail()}")
        if server.socket.exists():
            with contextlib.suppress(httpx.TransportError):
                if server.client.get("/health").status_code == 200:
                    return
        time.sleep(0.01)
    raise ServerStartError(f"llama-server not healthy after {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(server: BareLlamaServer, messages: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    response = server.client.post("/v1/chat/completions", json={"messages": list(messages), **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stream_chat(server: BareLlamaServer, request: dict[str, Any]) -> tuple[httpx.Headers, list[str]]:
    """POST a streaming chat request; return the response headers and the ``data:`` payloads.

    llama-server b11312 closes the connection right after every streamed response although it
    answers ``Keep-Alive: timeout=5, max=100`` (see test_chat.py), so a request that reuses that
    pooled connection can fail with "Server disconnected". ``Connection: close`` keeps the stream's
    connection out of the pool.
    """
    with server.client.stream(
        "POST", "/v1/chat/completions", json={**request, "stream": True}, headers={"Connection": "close"}
    ) as response:
        assert response.status_code == 200, response.read()
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
        return response.headers, events
