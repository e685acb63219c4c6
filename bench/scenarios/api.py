"""api: ``/v1/models`` and ``/models`` requests per second at 16 concurrent, and the daemon's RSS
over 10k requests.

The daemon's store holds the four generated test models. Throughput: 16 closed-loop clients on
the daemon's TCP port for a fixed window, alternating each route (A) with ``GET /version`` (B), the
cheapest route the daemon has: same process, same HTTP stack, so the ratio says what listing models
costs on top of merely answering, and it travels between machines where absolute req/s do not.

Memory: after a warm-up of mixed requests, 10k more (both listing routes, alternating) at 16
concurrent, sampling the daemon's VmRSS every 1k; growth after warm-up should be none (a few
hundred KiB of allocator noise aside).
"""

from __future__ import annotations

import time

import trio

from bench.alternation import alternate
from bench.context import BenchContext, format_ms
from bench.load import LoadResult, RequestSpec, run_closed_loop
from bench.report import Row, ScenarioReport, Verdict
from bench.scenarios.common import package_models
from bench.services import ServiceError, open_daemon, test_models, work_dir
from bench.stats import percentile, summarize_ratios

NAME = "api"
CONCURRENCY = 16
ROUTES = ("/v1/models", "/models")
BASELINE_ROUTE = "/version"
MEMORY_REQUESTS = 10_000
MEMORY_BATCH = 1_000
WARMUP_REQUESTS = 2_000
RSS_GROWTH_TOLERANCE = 1 << 20
MIB = 1 << 20


def _check(result: LoadResult, what: str) -> None:
    if result.failures:
        raise ServiceError(
            f"{what}: {result.failures} failed requests ({dict(result.statuses)}, {dict(result.errors)})"
        )


def _mixed(sequence: int) -> RequestSpec:
    return RequestSpec("GET", ROUTES[sequence % len(ROUTES)])


async def run(ctx: BenchContext) -> ScenarioReport:
    stamp = ctx.begin(NAME)
    rounds = ctx.scale(8, 1)  # many short windows: see proxy.py
    window = 1.0
    memory_requests = ctx.scale(MEMORY_REQUESTS, 2_000)
    warmup = ctx.scale(WARMUP_REQUESTS, 500)
    with work_dir(NAME) as root:
        models = await trio.to_thread.run_sync(test_models, root / "testmodels")
        await trio.to_thread.run_sync(
            package_models,
            root / "models",
            [
                ("ai/bench-chat", models["chat"], None),
                ("ai/bench-chat-tool", models["chat-tool"], None),
                ("ai/bench-embed", models["embed"], None),
                ("ai/bench-chat-large", models["chat-large"], None),
            ],
        )
        async with open_daemon(root, ctx.engine) as daemon:
            endpoint = daemon.tcp
            rss_start = daemon.rss_bytes()
            ctx.log(NAME, f"warm-up: {warmup} requests")
            _check(
                await run_closed_loop(
                    endpoint, _mixed, concurrency=CONCURRENCY, duration=30, max_requests=warmup
                ),
                "warm-up",
            )

            rates: dict[str, tuple[list[float], list[float]]] = {}
            cpu: dict[str, list[float]] = {route: [0.0, 0.0] for route in (*ROUTES, BASELINE_ROUTE)}

            async def measured(target: str) -> float:
                """Requests per second on ``target``, adding the daemon's CPU time to ``cpu``."""
                cpu_before = daemon.cpu_seconds()
                result = await run_closed_loop(
                    endpoint,
                    RequestSpec("GET", target),
                    concurrency=CONCURRENCY,
                    duration=window,
                    max_requests=1_000_000,
                )
                cpu[target][0] += daemon.cpu_seconds() - cpu_before
                cpu[target][1] += result.completed
                _check(result, target)
                return result.throughput

            for route in ROUTES:

                async def candidate(_: int, target: str = route) -> float:
                    return await measured(target)

                async def baseline(_: int) -> float:
                    return await measured(BASELINE_ROUTE)

                ctx.log(NAME, f"{route}: {rounds} rounds of {window:.0f} s per arm")
                paired = await alternate(rounds, candidate, baseline, time_budget=ctx.scale(25, 5))
                rates[route] = (paired.candidate, paired.baseline)

            ctx.log(NAME, f"memory: {memory_requests} requests after warm-up, RSS every {MEMORY_BATCH}")
            rss_warm = daemon.rss_bytes()
            samples = [rss_warm]
            sent = 0
            deadline = time.monotonic() + ctx.scale(60, 30)
            while sent < memory_requests and time.monotonic() < deadline:
                batch = min(MEMORY_BATCH, memory_requests - sent)
                result = await run_closed_loop(
                    endpoint, _mixed, concurrency=CONCURRENCY, duration=20, max_requests=batch
                )
                _check(result, "memory run")
                sent += result.completed
                samples.append(daemon.rss_bytes())

    growth = samples[-1] - rss_warm

    def cpu_per_request(target: str) -> float:
        seconds, requests = cpu[target]
        return seconds / requests if requests else float("nan")

    rows: list[Row] = []
    for route, (ours, theirs) in rates.items():
        rows.append(
            Row(
                f"GET {route}, {CONCURRENCY} concurrent",
                f"{percentile(ours, 50):.0f} req/s",
                f"{percentile(theirs, 50):.0f} req/s",
                summarize_ratios(ours, theirs).format(),
            )
        )
        rows.append(
            Row(
                f"daemon CPU per request, GET {route}",
                format_ms(cpu_per_request(route), 3),
                format_ms(cpu_per_request(BASELINE_ROUTE), 3),
                f"{cpu_per_request(route) / cpu_per_request(BASELINE_ROUTE):.2f}x CPU time",
            )
        )
    rows += [
        Row(
            "daemon RSS: at start / after warm-up",
            f"{rss_start / MIB:.1f} / {rss_warm / MIB:.1f} MiB",
            "",
            "",
        ),
        Row(
            f"daemon RSS after {sent} more requests",
            f"{samples[-1] / MIB:.1f} MiB (max {max(samples) / MIB:.1f})",
            "",
            f"{growth / MIB:+.2f} MiB growth",
            f"no growth (<= {RSS_GROWTH_TOLERANCE / MIB:.0f} MiB noise)",
            Verdict.MET if growth <= RSS_GROWTH_TOLERANCE else Verdict.MISSED,
        ),
    ]
    trend = ", ".join(f"{value / MIB:.1f}" for value in samples)
    return stamp.report(
        title="model listing throughput and daemon memory",
        candidate_label="the listing route",
        baseline_label=f"GET {BASELINE_ROUTE} on the same daemon",
        method=(
            "The daemon (`modelrunner serve`) has the 4 generated test models in its store. Throughput: 16 "
            "closed-loop clients on the "
            f"daemon's TCP port, {window:.0f} s per arm, {rounds} alternating rounds per route; B is the "
            "daemon's cheapest route, so the ratio is what listing costs over answering at all. Memory: "
            f"VmRSS of the daemon after {warmup} warm-up requests, then every {MEMORY_BATCH} of {sent} more "
            "(both listing routes alternating, 16 concurrent). Daemon CPU per request: the daemon "
            "process's user+system CPU time over a window divided by the requests it answered."
        ),
        rows=tuple(rows),
        notes=(f"RSS trend (MiB, after warm-up then every {MEMORY_BATCH} requests): {trend}",),
    )
