"""proxy: a tiny non-streamed chat through modelrunner vs straight to llama-server's socket.

The daemon (``modelrunner serve``) serves the tiny chat model (``hack/make-test-models`` chat.gguf,
a scripted 10-token reply). After one request loads the runner, the same chat request goes

- A: to the daemon's OpenAI endpoint (``POST /engines/v1/chat/completions`` on its loopback TCP
  port, as an OpenAI client would send it), which proxies it to the runner;
- B: straight to that runner's llama-server over its Unix socket (``POST /v1/chat/completions``).

Latency: sequential requests on one keep-alive connection per arm, in alternating rounds; the added
p50 is the median over rounds of the per-round p50 difference, the added p99 the difference of the
pooled p99s. Throughput: closed-loop clients (1, 4, 16 concurrent) for a fixed window per arm and
round; the ratio is the median of per-round A/B ratios.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from bench.alternation import alternate
from bench.context import BenchContext, format_ms, format_signed_ms
from bench.httpclient import Endpoint, HttpConnection
from bench.load import LoadResult, RequestSpec, run_closed_loop, run_sequential
from bench.report import Row, ScenarioReport, Verdict
from bench.scenarios.common import JSON, chat_body, find_runner_sockets, package_models, request_ok
from bench.services import Daemon, ServiceError, open_daemon, test_models, work_dir
from bench.stats import percentile, summarize_ratios

NAME = "proxy"
MODEL = "ai/bench-chat"
# llama-server serves at most max(parallel + 2, cores - 1) connections at once (cpp-httplib's thread
# pool: 3 here) and a thread stays with a keep-alive connection until it has been idle 5 s. With 16
# keep-alive clients (or a proxy pool of 16) most connections just wait, in either arm. The main
# measurement gives the engine room for every connection, so it measures the proxy; the default is
# measured once more at the end, as information.
ENGINE_FLAGS = ("--threads-http", "64")
DEFAULT_FLAGS_CONCURRENCY = 4
TARGET_ADDED_P50 = 0.001
TARGET_THROUGHPUT_RATIO = 0.9
CONCURRENCY = (1, 4, 16)


async def configure(endpoint: Endpoint, flags: tuple[str, ...]) -> None:
    """Set the model's runtime flags (DMR's ``_configure``); the daemon (re)loads it in the background."""
    await request_ok(
        endpoint,
        "POST",
        "/engines/_configure",
        json.dumps({"model": MODEL, "runtime-flags": list(flags)}).encode(),
    )


async def default_flags_round(
    daemon: Daemon, old_socket: Path, body: bytes, through: RequestSpec, direct: RequestSpec, window: float
) -> tuple[LoadResult, LoadResult]:
    """One A and one B window at DEFAULT_FLAGS_CONCURRENCY with the engine's default flags, each
    bounded in time (stalled connections are what this shows), failures counted, not raised."""
    await trio.sleep(6)  # let the engine drop the previous keep-alive connections (5 s idle)
    await configure(daemon.tcp, ())
    # The reload is asynchronous; wait until the old runner is gone and a new one answers.
    with trio.fail_after(30):
        while True:
            await request_ok(daemon.tcp, "POST", through.target, body)
            sockets = await find_runner_sockets(daemon)
            if len(sockets) == 1 and sockets[0] != old_socket:
                break
            await trio.sleep(0.2)
    engine = Endpoint.unix(str(sockets[0]))
    results = []
    for endpoint, spec in ((daemon.tcp, through), (engine, direct)):
        with trio.move_on_after(window + 10):
            results.append(
                await run_closed_loop(
                    endpoint,
                    spec,
                    concurrency=DEFAULT_FLAGS_CONCURRENCY,
                    duration=window,
                    max_requests=100_000,
                )
            )
        if len(results) < 2 and endpoint is daemon.tcp:
            await trio.sleep(6)
    while len(results) < 2:
        results.append(LoadResult())
    return results[0], results[1]


async def run_pairs(
    a: HttpConnection, a_spec: RequestSpec, b: HttpConnection, b_spec: RequestSpec, pairs: int
) -> tuple[list[float], list[float]]:
    """`pairs` requests per arm, one A and one B back to back, the order alternating; latencies.

    Raises:
        ServiceError: a request failed.
    """
    latencies: tuple[list[float], list[float]] = ([], [])
    for n in range(pairs):
        order = ((0, a, a_spec), (1, b, b_spec)) if n % 2 == 0 else ((1, b, b_spec), (0, a, a_spec))
        for arm, connection, spec in order:
            response = await connection.request(spec.method, spec.target, spec.body, headers=spec.headers)
            if response.status != 200:
                raise ServiceError(f"{spec.target} answered {response.status}: {response.body[:300]!r}")
            latencies[arm].append(response.latency)
    return latencies


def _check(result: LoadResult, what: str) -> None:
    if result.failures:
        raise ServiceError(
            f"{what}: {result.failures} failed requests ({dict(result.statuses)}, {dict(result.errors)})"
        )


def _p99_text(result: LoadResult) -> str:
    return format_ms(percentile(result.latencies, 99), 0) if result.latencies else "n/a"


async def run(ctx: BenchContext) -> ScenarioReport:
    stamp = ctx.begin(NAME)
    latency_rounds = ctx.scale(10, 2)
    per_round = ctx.scale(100, 20)
    # Many short windows rather than a few long ones: a burst of load from another tenant then
    # spoils one round's ratio, and the median of the rounds shrugs it off.
    throughput_rounds = ctx.scale(10, 1)
    window = 1.0
    body = chat_body(MODEL)
    through = RequestSpec("POST", "/engines/v1/chat/completions", body, JSON)
    direct = RequestSpec("POST", "/v1/chat/completions", body, JSON)
    with work_dir(NAME) as root:
        models = await trio.to_thread.run_sync(test_models, root / "testmodels")
        await trio.to_thread.run_sync(package_models, root / "models", [(MODEL, models["chat"], None)])
        async with open_daemon(root, ctx.engine) as daemon:
            ctx.log(NAME, f"configuring {MODEL} with {' '.join(ENGINE_FLAGS)} and loading it")
            await configure(daemon.tcp, ENGINE_FLAGS)
            await request_ok(daemon.tcp, "POST", through.target, body)
            sockets = await find_runner_sockets(daemon)
            if len(sockets) != 1:
                raise ServiceError(f"expected one runner socket under {daemon.state_dir}, found {sockets}")
            engine = Endpoint.unix(str(sockets[0]))
            a_connection = HttpConnection(daemon.tcp)
            b_connection = HttpConnection(engine)
            # Warm both paths (connection pools, first-request allocations) before measuring.
            _check(await run_sequential(a_connection, through, 20), "warm-up through the daemon")
            _check(await run_sequential(b_connection, direct, 20), "warm-up direct")

            daemon_cpu = [0.0, 0]  # seconds, requests

            async def latency_a(_: int) -> LoadResult:
                cpu_before = daemon.cpu_seconds()
                result = await run_sequential(a_connection, through, per_round)
                daemon_cpu[0] += daemon.cpu_seconds() - cpu_before
                daemon_cpu[1] += result.completed
                _check(result, "through the daemon")
                return result

            async def latency_b(_: int) -> LoadResult:
                result = await run_sequential(b_connection, direct, per_round)
                _check(result, "direct")
                return result

            ctx.log(NAME, f"latency: {latency_rounds} rounds of {per_round} sequential requests per arm")
            latency = await alternate(latency_rounds, latency_a, latency_b, time_budget=ctx.scale(45, 15))
            ctx.log(NAME, f"latency, paired: {latency_rounds} rounds of {per_round} request pairs")
            pair_rounds = [
                await run_pairs(a_connection, through, b_connection, direct, per_round)
                for _ in range(latency_rounds)
            ]
            await a_connection.aclose()
            await b_connection.aclose()

            throughput: dict[int, tuple[list[float], list[float]]] = {}
            for concurrency in CONCURRENCY:

                async def load_a(_: int, c: int = concurrency) -> float:
                    result = await run_closed_loop(
                        daemon.tcp, through, concurrency=c, duration=window, max_requests=100_000
                    )
                    _check(result, f"{c} concurrent through the daemon")
                    return result.throughput

                async def load_b(_: int, c: int = concurrency) -> float:
                    result = await run_closed_loop(
                        engine, direct, concurrency=c, duration=window, max_requests=100_000
                    )
                    _check(result, f"{c} concurrent direct")
                    return result.throughput

                ctx.log(
                    NAME,
                    f"throughput at {concurrency} concurrent: {throughput_rounds} rounds of "
                    f"{window:.0f} s per arm",
                )
                paired = await alternate(throughput_rounds, load_a, load_b, time_budget=ctx.scale(30, 10))
                throughput[concurrency] = (paired.candidate, paired.baseline)

            ctx.log(NAME, f"default engine flags, {DEFAULT_FLAGS_CONCURRENCY} concurrent, one round")
            default_flags = await default_flags_round(daemon, sockets[0], body, through, direct, window)

    a_all = [v for r in latency.candidate for v in r.latencies]
    b_all = [v for r in latency.baseline for v in r.latencies]
    p50_diffs = [
        percentile(a.latencies, 50) - percentile(b.latencies, 50)
        for a, b in zip(latency.candidate, latency.baseline, strict=True)
    ]
    added_p50 = percentile(p50_diffs, 50)
    paired_a = [v for a, _ in pair_rounds for v in a]
    paired_b = [v for _, b in pair_rounds for v in b]
    paired_p50 = percentile([percentile(a, 50) - percentile(b, 50) for a, b in pair_rounds], 50)
    added_p99 = percentile(a_all, 99) - percentile(b_all, 99)
    rows = [
        Row(
            "latency p50",
            format_ms(percentile(a_all, 50), 3),
            format_ms(percentile(b_all, 50), 3),
            format_signed_ms(added_p50, 3) + " added",
            f"<= {TARGET_ADDED_P50 * 1000:.0f} ms added",
            Verdict.MET if added_p50 <= TARGET_ADDED_P50 else Verdict.MISSED,
        ),
        Row(
            "latency p50, requests paired one by one",
            format_ms(percentile(paired_a, 50), 3),
            format_ms(percentile(paired_b, 50), 3),
            format_signed_ms(paired_p50, 3) + " added",
            f"<= {TARGET_ADDED_P50 * 1000:.0f} ms added",
            Verdict.MET if paired_p50 <= TARGET_ADDED_P50 else Verdict.MISSED,
        ),
        Row(
            "latency p99",
            format_ms(percentile(a_all, 99), 3),
            format_ms(percentile(b_all, 99), 3),
            format_signed_ms(added_p99, 3) + " added",
        ),
        Row(
            "daemon CPU per proxied request",
            format_ms(daemon_cpu[0] / max(1, int(daemon_cpu[1])), 3),
            "",
            "CPU time, not wall time: steady under load",
        ),
    ]
    for concurrency, (ours, theirs) in throughput.items():
        ratio = summarize_ratios(ours, theirs)
        rows.append(
            Row(
                f"throughput, {concurrency} concurrent",
                f"{percentile(ours, 50):.0f} req/s",
                f"{percentile(theirs, 50):.0f} req/s",
                ratio.format(),
                f">= {TARGET_THROUGHPUT_RATIO}x",
                Verdict.MET if ratio.median >= TARGET_THROUGHPUT_RATIO else Verdict.MISSED,
            )
        )
    default_a, default_b = default_flags
    rows.append(
        Row(
            f"throughput, {DEFAULT_FLAGS_CONCURRENCY} concurrent, default engine flags (1 round)",
            f"{default_a.throughput:.0f} req/s",
            f"{default_b.throughput:.0f} req/s",
            f"{default_a.throughput / default_b.throughput:.2f}x" if default_b.throughput else "n/a",
        )
    )
    return stamp.report(
        title="tiny non-streamed chat, through the daemon vs direct",
        candidate_label="modelrunner (TCP, /engines/v1/chat/completions)",
        baseline_label="llama-server's Unix socket",
        method=(
            "The daemon (`modelrunner serve`, its own embedded containerd) loads the tiny chat model "
            "(scripted 10-token reply, max_tokens 16); the same "
            f"chat request then goes through the daemon (A) or straight to the runner's socket (B). Latency: "
            f"{latency.rounds} alternating rounds of {per_round} sequential requests per arm on a "
            "keep-alive connection (added p50 = median of per-round p50 differences; added p99 = "
            f"difference of pooled p99s over {len(a_all)} requests per arm); then, paired, "
            f"{len(pair_rounds)} rounds of {per_round} pairs, each pair one request per arm back to back "
            "(which goes first alternates), so that a change in the host's speed hits both arms of a "
            "pair alike. Throughput: closed-loop "
            f"clients, {window:.0f} s per arm and round, ratio = median of per-round A/B ratios. Client "
            "and servers share the machine's 2 cores. Daemon CPU per proxied request: the daemon "
            "process's user+system CPU time during the latency rounds divided by their requests."
        ),
        rows=tuple(rows),
        notes=(
            f"The model is configured with runtime flags `{' '.join(ENGINE_FLAGS)}` for all rows but the "
            "last: "
            "llama-server serves at most max(parallel + 2, cores - 1) connections at once (3 here) and keeps "
            "a thread on a keep-alive connection until it has been idle for 5 s, so with more connections "
            "than threads both arms stall on the engine, not on the proxy. The last row shows the default.",
            f"Default-flags row: A completed {default_a.completed} requests in {default_a.elapsed:.1f} s "
            f"(p99 {_p99_text(default_a)}), B {default_b.completed} in {default_b.elapsed:.1f} s "
            f"(p99 {_p99_text(default_b)}).",
        ),
    )
