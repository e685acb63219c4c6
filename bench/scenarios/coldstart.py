"""coldstart: request to first token for an unloaded model, sandboxed containerd task vs the same
llama-server started as a bare process.

Both arms start the tiny chat model (``hack/make-test-models`` chat.gguf) from nothing, wait until
it is ready, send one streamed chat request over its Unix socket and stop the clock at the first
event that carries a token:

- A: engines/'s ``LlamaCppBackend.start_runner`` (containerd task in the default-deny sandbox:
  container, snapshot, lease, cgroup, seccomp, then its own ``/health`` wait) on a private embedded
  containerd;
- B: the same binary with the same argv (container paths mapped to host paths), spawned directly,
  ``/health`` polled every 5 ms (as fast as a client can reasonably ask).

One warm-up start (it installs the engine image into containerd) is not recorded. Stops are timed
too, off the clock of the start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio
from modelrunner.engines import MemoryEstimate, Mode, ModelSpec, RunnerConfig
from modelrunner.engines.environment import EngineEnvironment, EngineImageSource
from modelrunner.engines.llamacpp.argv import CONTAINER_MODELS_DIR, CONTAINER_SOCKET
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import open_embedded_containerd

from bench.alternation import alternate
from bench.context import BenchContext, format_ms, format_signed_ms
from bench.httpclient import Endpoint, HttpConnection, HttpError
from bench.report import Row, ScenarioReport, Verdict
from bench.services import ServiceError, remove_namespace_cgroups, test_models, work_dir
from bench.sse import first_token_index, parse_sse_events
from bench.stats import percentile

NAME = "coldstart"
NAMESPACE = "bench-coldstart"
TARGET_ADDED = 0.150
RESERVATION = MemoryEstimate(ram=512 << 20)
CHAT_BODY = b'{"messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":16}'
BARE_POLL_INTERVAL = 0.005
START_TIMEOUT = 60.0
STOP_GRACE = 4.0


@dataclass(frozen=True, slots=True)
class ColdStart:
    ready: float
    """Start requested -> ``/health`` 200 (seconds)."""
    first_token: float
    """Start requested -> first token of the streamed reply."""
    stop: float
    """Stop requested -> everything released."""


async def first_token_after(socket_path: Path, started: float) -> float:
    """Send the streamed chat request; seconds from ``started`` to the first token event."""
    connection = HttpConnection(Endpoint.unix(str(socket_path)))
    try:
        response = await connection.request(
            "POST",
            "/v1/chat/completions",
            CHAT_BODY,
            headers=(("Content-Type", "application/json"),),
            sse=True,
        )
    finally:
        await connection.aclose()
    if response.status != 200:
        raise ServiceError(f"the engine answered {response.status}: {response.body[:300]!r}")
    index = first_token_index(parse_sse_events(response.body))
    if index is None or index >= len(response.event_times):
        raise ServiceError(f"the streamed reply carried no token: {response.body[:300]!r}")
    return response.event_times[index] - started


def bare_argv(container_argv: Sequence[str], binary: Path, bundle: Path, socket_path: Path) -> list[str]:
    """The runner's argv with its container paths mapped to the host's (pure)."""
    mapped = [str(binary)]
    models_prefix = f"{CONTAINER_MODELS_DIR}/"
    for arg in list(container_argv)[1:]:
        if arg == str(CONTAINER_SOCKET):
            mapped.append(str(socket_path))
        elif arg.startswith(models_prefix):
            mapped.append(str(bundle / arg.removeprefix(models_prefix)))
        else:
            mapped.append(arg)
    return mapped


async def _wait_bare_ready(proc: trio.Process, socket_path: Path) -> None:
    connection = HttpConnection(Endpoint.unix(str(socket_path)))
    try:
        while True:
            if proc.returncode is not None:
                raise ServiceError(f"bare llama-server exited with {proc.returncode} (see its log)")
            try:
                response = await connection.request("GET", "/health")
                if response.status == 200:
                    return
            except (OSError, HttpError):
                await connection.aclose()
            await trio.sleep(BARE_POLL_INTERVAL)
    finally:
        await connection.aclose()


async def bare_coldstart(argv: list[str], socket_path: Path, log: BinaryIO) -> ColdStart:
    # A stale socket file makes llama-server fail to bind; the stop below removes it, this check
    # only guards against a previous round that died before its stop.
    await trio.to_thread.run_sync(lambda: socket_path.unlink(missing_ok=True))
    started = time.perf_counter()
    proc = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(START_TIMEOUT):
            await _wait_bare_ready(proc, socket_path)
            ready = time.perf_counter() - started
            first = await first_token_after(socket_path, started)
    finally:
        stop_started = time.perf_counter()
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_GRACE):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await trio.to_thread.run_sync(lambda: socket_path.unlink(missing_ok=True))
        stopped = time.perf_counter() - stop_started
    return ColdStart(ready, first, stopped)


async def sandboxed_coldstart(
    backend: LlamaCppBackend, model: ModelSpec
) -> tuple[ColdStart, tuple[str, ...]]:
    started = time.perf_counter()
    with trio.fail_after(START_TIMEOUT):
        runner = await backend.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
    try:
        ready = time.perf_counter() - started
        with trio.fail_after(START_TIMEOUT):
            first = await first_token_after(runner.socket_path, started)
    finally:
        stop_started = time.perf_counter()
        with trio.CancelScope(shield=True):
            await runner.stop(grace=STOP_GRACE)
        stopped = time.perf_counter() - stop_started
    return ColdStart(ready, first, stopped), tuple(runner.argv)


@contextlib.asynccontextmanager
async def _namespace_cgroups_removed() -> AsyncIterator[None]:
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove_namespace_cgroups, NAMESPACE)


def _bundle(root: Path, gguf: Path) -> ModelSpec:
    bundle = root / "bundle"
    bundle.mkdir()
    target = bundle / "model.gguf"
    os.link(gguf, target)
    bundle.chmod(0o755)
    return ModelSpec(
        id="sha256:" + "b" * 64,
        name="bench/tiny-chat:latest",
        bundle_dir=bundle,
        format="gguf",
        gguf_path=target,
    )


async def run(ctx: BenchContext) -> ScenarioReport:
    stamp = ctx.begin(NAME)
    rounds = ctx.scale(20, 3)
    engine = ctx.engine
    with work_dir(NAME) as root:
        models = await trio.to_thread.run_sync(test_models, root / "models")
        model = _bundle(root, models["chat"])
        async with (
            open_embedded_containerd(root / "ctd") as containerd,
            open_containerd(containerd.address, NAMESPACE, runc_root=containerd.runc_root) as client,
            _namespace_cgroups_removed(),
        ):
            environment = EngineEnvironment(
                containerd=client,
                state_dir=root / "st",
                llamacpp_image=EngineImageSource(ref=engine.image_ref, tarball=engine.image_tar),
                threads=2,
                load_timeout=START_TIMEOUT,
                stop_grace=STOP_GRACE,
            )
            async with open_llamacpp_backend(environment) as backend:
                ctx.log(NAME, "warm-up start (installs the engine image)")
                _, container_argv = await sandboxed_coldstart(backend, model)
                bare_socket = root / "bare" / "engine.sock"
                bare_socket.parent.mkdir()
                argv = bare_argv(container_argv, engine.binary, model.bundle_dir, bare_socket)
                with open(root / "bare" / "engine.log", "ab") as log:  # noqa: ASYNC230 (tiny, local)
                    await bare_coldstart(argv, bare_socket, log)  # warm-up of the bare path

                    async def candidate(_: int) -> ColdStart:
                        result, _argv = await sandboxed_coldstart(backend, model)
                        return result

                    async def baseline(_: int) -> ColdStart:
                        return await bare_coldstart(argv, bare_socket, log)

                    ctx.log(NAME, f"{rounds} rounds, A B A B ...")
                    paired = await alternate(rounds, candidate, baseline, time_budget=ctx.scale(100, 30))

    def median(values: list[ColdStart], attribute: str) -> float:
        return percentile([getattr(v, attribute) for v in values], 50)

    def p90(values: list[ColdStart], attribute: str) -> float:
        return percentile([getattr(v, attribute) for v in values], 90)

    pairs = zip(paired.candidate, paired.baseline, strict=True)
    added_first = [a.first_token - b.first_token for a, b in pairs]
    added_median = percentile(added_first, 50)
    rows = (
        Row(
            "request to first token, median",
            format_ms(median(paired.candidate, "first_token"), 1),
            format_ms(median(paired.baseline, "first_token"), 1),
            format_signed_ms(added_median, 1) + " added",
            f"<= {TARGET_ADDED * 1000:.0f} ms added",
            Verdict.MET if added_median <= TARGET_ADDED else Verdict.MISSED,
        ),
        Row(
            "request to first token, p90",
            format_ms(p90(paired.candidate, "first_token"), 1),
            format_ms(p90(paired.baseline, "first_token"), 1),
            format_signed_ms(percentile(added_first, 90), 1) + " added (p90 of per-round)",
        ),
        Row(
            "start to /health 200, median",
            format_ms(median(paired.candidate, "ready"), 1),
            format_ms(median(paired.baseline, "ready"), 1),
            format_signed_ms(median(paired.candidate, "ready") - median(paired.baseline, "ready"), 1),
        ),
        Row(
            "stop (all released), median",
            format_ms(median(paired.candidate, "stop"), 1),
            format_ms(median(paired.baseline, "stop"), 1),
            format_signed_ms(median(paired.candidate, "stop") - median(paired.baseline, "stop"), 1),
        ),
    )
    return stamp.report(
        title="request to first token for an unloaded model",
        candidate_label="sandboxed containerd task (engines/ start_runner)",
        baseline_label="bare llama-server process",
        method=(
            f"The tiny chat model is started from nothing {paired.rounds} times per arm, alternating A and B "
            "after one unrecorded warm-up each; the clock runs from the start request to the first streamed "
            "token of a chat request (sent as soon as /health answers 200). Same binary, same argv, same "
            f"model file; B polls /health every {BARE_POLL_INTERVAL * 1000:.0f} ms. 'Added' is the median of "
            "per-round A-B differences."
        ),
        rows=rows,
        notes=(("the time budget cut the run to fewer rounds than planned",) if paired.stopped_early else ()),
    )
