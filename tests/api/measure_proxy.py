"""Measure what the API proxy adds on top of calling llama-server's socket directly.

Not collected by pytest (file name); run by hand:

    .venv/bin/python tests/api/measure_proxy.py [--rounds 5] [--duration 3] [--servers]

One llama-server (the generated tiny chat model) serves both paths; requests alternate between
"direct" (its Unix socket) and "proxy" (our API server's Unix socket, same request, route
`/engines/v1/...`) in A B A B blocks, so drift on this noisy 2-core machine hits both alike.

Reported:
* added latency, p50 and p99, of a non-streamed tiny chat request at concurrency 1;
* throughput (requests/s) at 1, 4 and 16 concurrent clients, proxy / direct ratio;
* streaming: per-chunk overhead of a streamed 128-token completion ((proxy - direct) / chunks);
* `--servers`: the bare server cost of a trivial route, our lean h11 server vs hypercorn's trio worker.

The API server runs in its own process (as in the daemon), with a static scheduler that hands
out the one runner; clients are separate processes speaking raw HTTP/1.1 with keep-alive.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "hack" / "lib"), str(REPO)]

CHAT_BODY = json.dumps(
    {"model": "ai/tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "ai/tiny-chat",
        "prompt": "Once upon a time",
        "max_tokens": 128,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
).encode()


class RawClient:
    """Minimal keep-alive HTTP/1.1 client over a Unix or TCP socket (no parsing beyond framing)."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.address = address
        self.family = family
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(self.address)
        self.buffer = b""
        return sock

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def request(self, path: str, body: bytes, on_chunk=None) -> tuple[int, int]:
        """POST; returns (status, number of body chunks). Reconnects once if the server closed."""
        for attempt in range(2):
            if self.sock is None:
                self.sock = self._connect()
            try:
                return self._request(path, body, on_chunk)
            except (ConnectionError, OSError):
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _request(self, path: str, body: bytes, on_chunk) -> tuple[int, int]:
        assert self.sock is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head_bytes, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head_bytes.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        chunks = 0
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(self.buffer) < length:
                self._fill()
            self.buffer = self.buffer[length:]
            chunks = 1
        else:  # chunked
            while True:
                while b"\r\n" not in self.buffer:
                    self._fill()
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buffer) < size + 2:
                    self._fill()
                self.buffer = self.buffer[size + 2 :]
                if size == 0:
                    break
                chunks += 1
                if on_chunk:
                    on_chunk()
        if headers.get(b"connection", b"").lower() == b"close":
            self.sock.close()
            self.sock = None
        return status, chunks


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve_api(runner_socket: str, api_socket: str) -> None:
    """Child process: our API server with a scheduler that always hands out `runner_socket`."""
    import contextlib
    from dataclasses import dataclass

    import trio
    from modelrunner.api import ApiConfig, ApiServices, open_api_server
    from modelrunner.engines import Mode
    from prometheus_client import CollectorRegistry

    @dataclass
    class StaticLease:
        socket_path: Path
        model_id: str = "sha256:" + "0" * 64
        model_name: str = "ai/tiny-chat"
        backend: str = "llama.cpp"
        mode: Mode = Mode.COMPLETION

        def mark_broken(self, reason: str) -> None:
            print("broken:", reason, file=sys.stderr)

    class StaticScheduler:
        def acquire(self, model, mode=Mode.COMPLETION, backend=None, *, keep_alive=None):
            return self._acquire()

        @contextlib.asynccontextmanager
        async def _acquire(self):
            yield StaticLease(Path(runner_socket))

        def ps(self):
            return []

        def metrics(self):
            return CollectorRegistry()

    class Backends:
        def names(self):
            return ("llama.cpp",)

    async def main() -> None:
        config = ApiConfig(tcp=None, unix_path=Path(api_socket), version="bench")
        async with open_api_server(ApiServices(StaticScheduler(), Backends(), None), config):  # type: ignore[arg-type]
            await trio.sleep_forever()

    trio.run(main)


def serve_hypercorn(api_socket: str) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"30")],
            }
        )
        await send({"type": "http.response.body", "body": b"Docker Model Runner is running"})

    config = Config()
    config.bind = [f"unix:{api_socket}"]
    config.accesslog = None
    config.errorlog = None
    trio.run(serve, app, config)


def _wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode}")
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(path)
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not come up")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(direct: str, proxy: str, rounds: int, block: int, api_pid: int) -> dict[str, list[float]]:
    clients = {
        "direct": (RawClient(direct), "/v1/chat/completions"),
        "proxy": (RawClient(proxy), "/engines/v1/chat/completions"),
    }
    samples: dict[str, list[float]] = {"direct": [], "proxy": []}
    for client, path in clients.values():  # warm up both, and the prompt cache
        for _ in range(20):
            client.request(path, CHAT_BODY)
    api_cpu = 0.0
    for _ in range(rounds):
        for name, (client, path) in clients.items():
            cpu_before = process_cpu_seconds(api_pid)
            for _ in range(block):
                start = time.perf_counter()
                status, _ = client.request(path, CHAT_BODY)
                samples[name].append(time.perf_counter() - start)
                assert status == 200, status
            if name == "proxy":
                api_cpu += process_cpu_seconds(api_pid) - cpu_before
    samples["api_cpu_per_request"] = [api_cpu / (rounds * block)]
    return samples


def _throughput_worker(address: str, path: str, body: bytes, duration: float, start_at: float, out) -> None:
    client = RawClient(address)
    client.request(path, body)
    while time.time() < start_at:
        time.sleep(0.001)
    count = 0
    end = start_at + duration
    while time.time() < end:
        status, _ = client.request(path, body)
        assert status == 200, status
        count += 1
    out.put(count)


def throughput(address: str, path: str, concurrency: int, duration: float) -> float:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.5
    workers = [
        ctx.Process(target=_throughput_worker, args=(address, path, CHAT_BODY, duration, start_at, out))
        for _ in range(concurrency)
    ]
    for worker in workers:
        worker.start()
    total = sum(out.get() for _ in workers)
    for worker in workers:
        worker.join()
    return total / duration


def streaming(direct: str, proxy: str, rounds: int) -> dict[str, tuple[list[float], int]]:
    results: dict[str, tuple[list[float], int]] = {"direct": ([], 0), "proxy": ([], 0)}
    clients = {
        "direct": (RawClient(direct), "/v1/completions"),
        "proxy": (RawClient(proxy), "/engines/v1/completions"),
    }
    for client, path in clients.values():
        client.request(path, STREAM_BODY)
    for _ in range(rounds):
        for name, (client, path) in clients.items():
            for _ in range(5):
                start = time.perf_counter()
                status, chunks = client.request(path, STREAM_BODY)
                results[name][0].append(time.perf_counter() - start)
                results[name] = (results[name][0], chunks)
                assert status == 200
    return results


def compare_servers(workdir: Path, rounds: int) -> None:
    ours = str(workdir / "ours.sock")
    theirs = str(workdir / "hypercorn.sock")
    procs = [
        subprocess.Popen([sys.executable, __file__, "--serve-banner", ours]),
        subprocess.Popen([sys.executable, __file__, "--serve-hypercorn", theirs]),
    ]
    try:
        _wait_for_socket(ours, procs[0])
        _wait_for_socket(theirs, procs[1])
        samples: dict[str, list[float]] = {"lean h11": [], "hypercorn": []}
        clients = {"lean h11": RawClient(ours), "hypercorn": RawClient(theirs)}
        get = b""
        for _ in range(rounds):
            for name, client in clients.items():
                for _ in range(500):
                    start = time.perf_counter()
                    assert client.request("/", get)[0] == 200
                    samples[name].append(time.perf_counter() - start)
        print("\n== trivial route (POST /, banner), concurrency 1, Unix socket ==")
        for name, values in samples.items():
            p50, p99 = statistics.median(values) * 1e6, _quantile(values, 0.99) * 1e6
            print(f"{name:10s} p50 {p50:7.1f} us   p99 {p99:7.1f} us")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def serve_banner(api_socket: str) -> None:
    import trio
    from modelrunner.api import ApiConfig, ApiServices, open_api_server

    async def main() -> None:
        config = ApiConfig(tcp=None, unix_path=Path(api_socket))
        async with open_api_server(ApiServices(None, None, None), config):  # type: ignore[arg-type]
            await trio.sleep_forever()

    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--servers", action="store_true", help="also compare this server with hypercorn")
    parser.add_argument("--concurrency", default="1,4,16", help="throughput levels, comma separated")
    parser.add_argument("--pairs", type=int, default=2, help="A/B pairs per throughput level")
    parser.add_argument(
        "--only",
        choices=["latency", "throughput", "stream"],
        action="append",
        help="run only these parts (repeatable)",
    )
    parser.add_argument("--serve-api", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-hypercorn", help=argparse.SUPPRESS)
    parser.add_argument("--serve-banner", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_api:
        return serve_api(*args.serve_api)
    if args.serve_hypercorn:
        return serve_hypercorn(args.serve_hypercorn)
    if args.serve_banner:
        return serve_banner(args.serve_banner)

    import testmodels

    from tests.api.runners import start_llama_server, stop_process

    build = subprocess.run(
        [str(REPO / "hack" / "build-engine-llamacpp")], capture_output=True, text=True, check=True
    )
    binary = Path(build.stdout.strip().splitlines()[-1]).parent / "bin" / "llama-server"
    with tempfile.TemporaryDirectory(prefix="measure-proxy-") as tmp:
        workdir = Path(tmp)
        model = testmodels.write_chat_model(
            workdir / "chat.gguf", reply=testmodels.CHAT_REPLY, name=testmodels.CHAT_MODEL_NAME
        )
        runner_socket = workdir / "runner.sock"
        api_socket = workdir / "api.sock"
        # Enough HTTP threads that direct clients (one keep-alive connection each) are never
        # starved by llama-server's thread-per-connection model, so the baseline is fair.
        engine = start_llama_server(
            binary,
            model,
            runner_socket,
            alias="tiny-chat",
            log_path=workdir / "engine.log",
            extra=("--threads-http", "64"),
        )
        api = subprocess.Popen([sys.executable, __file__, "--serve-api", str(runner_socket), str(api_socket)])
        try:
            _wait_for_socket(str(api_socket), api)
            print(f"machine: {os.cpu_count()} CPUs; llama-server {binary}")
            parts = set(args.only or ["latency", "throughput", "stream"])
            print(f"load average at start: {os.getloadavg()[0]:.2f}")
            if "latency" in parts:
                samples = latency(str(runner_socket), str(api_socket), args.rounds, args.block, api.pid)
                d50, p50 = statistics.median(samples["direct"]), statistics.median(samples["proxy"])
                d99, p99 = _quantile(samples["direct"], 0.99), _quantile(samples["proxy"], 0.99)
                print("\n== non-streamed tiny chat, concurrency 1 ==")
                print(f"direct p50 {d50 * 1e3:.3f} ms  p99 {d99 * 1e3:.3f} ms")
                print(f"proxy  p50 {p50 * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms")
                print(f"added  p50 {(p50 - d50) * 1e3:.3f} ms  p99 {(p99 - d99) * 1e3:.3f} ms")
                cpu = samples["api_cpu_per_request"][0]
                print(f"API server CPU per proxied request: {cpu * 1e6:.0f} us (clock ticks of 10 ms; rough)")

            if "throughput" in parts:
                print("\n== throughput, non-streamed tiny chat (requests/s, A B A B) ==")
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    direct_runs, proxy_runs = [], []
                    for _ in range(args.pairs):
                        direct_runs.append(
                            throughput(str(runner_socket), "/v1/chat/completions", concurrency, args.duration)
                        )
                        proxy_runs.append(
                            throughput(
                                str(api_socket), "/engines/v1/chat/completions", concurrency, args.duration
                            )
                        )
                    direct_rate, proxy_rate = statistics.median(direct_runs), statistics.median(proxy_runs)
                    runs = " ".join(f"{d:.0f}/{p:.0f}" for d, p in zip(direct_runs, proxy_runs, strict=True))
                    print(
                        f"c={concurrency:2d}  direct {direct_rate:7.1f}  proxy {proxy_rate:7.1f}  "
                        f"ratio {proxy_rate / direct_rate:.3f}   (pairs direct/proxy: {runs})"
                    )

            if "stream" in parts:
                stream = streaming(str(runner_socket), str(api_socket), args.rounds)
                direct_t, chunks = statistics.median(stream["direct"][0]), stream["direct"][1]
                proxy_t = statistics.median(stream["proxy"][0])
                print("\n== streamed completion, 128 tokens ==")
                print(
                    f"direct {direct_t * 1e3:.2f} ms  proxy {proxy_t * 1e3:.2f} ms  chunks {chunks}  "
                    f"per-chunk overhead {(proxy_t - direct_t) / max(chunks, 1) * 1e3:.3f} ms"
                )
            print(f"load average at end: {os.getloadavg()[0]:.2f}")
            if args.servers:
                compare_servers(workdir, args.rounds)
        finally:
            api.terminate()
            api.wait()
            stop_process(engine)


if __name__ == "__main__":
    main()
