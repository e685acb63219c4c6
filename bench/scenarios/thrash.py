"""thrash: 3 models, memory for 1, 300 interleaved requests from 8 clients.

Three distinct models (the tiny chat model, the tool-call model, and the chat model packaged with
another context size, so a third model ID) are served by a daemon whose memory budget
(``--memory``) fits the largest one's estimate but never two. A fixed, seeded plan assigns each of
300 chat requests a model at random; client k of 8 sends requests k, k+8, k+16, ... one after
another (closed loop), so requests for all three models interleave all the time.

Reported: failed requests (target 0), engine loads as the daemon counts them
(``modelrunner_runner_loads_total{result="ok"}``) against the offline minimum, and latency
percentiles. The offline minimum is Belady's optimum for a cache of one runner over the order in
which the requests were sent: one load per change of model in that sequence. A scheduler may beat it
by holding requests and serving them grouped by model (the floor then is 3, one load per model);
one that loads per request would approach 300.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import trio

from bench.context import BenchContext, format_ms
from bench.httpclient import HttpConnection, HttpError
from bench.report import Row, ScenarioReport, Verdict
from bench.scenarios.common import JSON, chat_body, metric_total, package_models
from bench.services import open_daemon, test_models, work_dir
from bench.stats import percentile

NAME = "thrash"
MODELS = ("ai/bench-a", "ai/bench-b", "ai/bench-c")
REQUESTS = 300
CLIENTS = 8
SEED = 20261127
REQUEST_TIMEOUT = 120.0
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Outcome:
    sequence: int
    model: str
    sent: float
    latency: float
    status: int
    """HTTP status, or 0 when the connection failed."""


def request_plan(count: int, models: tuple[str, ...], seed: int = SEED) -> list[str]:
    """The model of each request, seeded so every run sends the same plan (pure)."""
    rng = random.Random(seed)
    return [rng.choice(models) for _ in range(count)]


def offline_minimum_loads(sequence: list[str]) -> int:
    """Belady's optimum with room for one model: a load at the start and at every change (pure)."""
    return sum(1 for index, model in enumerate(sequence) if index == 0 or model != sequence[index - 1])


def memory_budget(estimates: list[int]) -> int:
    """Room for the largest model but never for two: two models need at least the largest estimate
    plus the smallest, so the budget adds only half the smallest (at most 128 MiB) of slack (pure)."""
    return max(estimates) + min(min(estimates) // 2, 128 * MIB)


async def run(ctx: BenchContext) -> ScenarioReport:
    stamp = ctx.begin(NAME)
    requests = ctx.scale(REQUESTS, 40)
    plan = request_plan(requests, MODELS)
    outcomes: list[Outcome] = []
    with work_dir(NAME) as root:
        models = await trio.to_thread.run_sync(test_models, root / "testmodels")
        packaged = await trio.to_thread.run_sync(
            package_models,
            root / "models",
            [
                (MODELS[0], models["chat"], None),
                (MODELS[1], models["chat-tool"], None),
                (MODELS[2], models["chat"], 2048),
            ],
        )
        budget = memory_budget([model.estimate_ram for model in packaged])
        async with open_daemon(root, ctx.engine, memory=budget) as daemon:
            loads_before = await metric_total(daemon.tcp, "modelrunner_runner_loads", result="ok")
            started = time.perf_counter()

            async def client(index: int) -> None:
                connection = HttpConnection(daemon.tcp)
                try:
                    for sequence in range(index, requests, CLIENTS):
                        model = plan[sequence]
                        sent = time.perf_counter() - started
                        status = 0
                        try:
                            with trio.fail_after(REQUEST_TIMEOUT):
                                response = await connection.request(
                                    "POST", "/engines/v1/chat/completions", chat_body(model), headers=JSON
                                )
                            status = response.status
                        except (OSError, HttpError, trio.TooSlowError):
                            await connection.aclose()
                        outcomes.append(
                            Outcome(sequence, model, sent, time.perf_counter() - started - sent, status)
                        )
                finally:
                    await connection.aclose()

            ctx.log(
                NAME,
                f"{requests} requests from {CLIENTS} clients, memory budget {budget / MIB:.0f} MiB "
                f"(estimates {', '.join(f'{m.estimate_ram / MIB:.0f}' for m in packaged)} MiB)",
            )
            with trio.move_on_after(ctx.scale(150, 60)) as scope:
                async with trio.open_nursery() as nursery:
                    for index in range(CLIENTS):
                        nursery.start_soon(client, index)
            elapsed = time.perf_counter() - started
            loads = await metric_total(daemon.tcp, "modelrunner_runner_loads", result="ok") - loads_before

    arrival_order = [o.model for o in sorted(outcomes, key=lambda o: o.sent)]
    minimum = offline_minimum_loads(arrival_order)
    failures = sum(1 for o in outcomes if not 200 <= o.status < 300)
    unfinished = requests - len(outcomes)
    latencies = [o.latency for o in outcomes if 200 <= o.status < 300]
    p50 = percentile(latencies, 50) if latencies else float("nan")
    p99 = percentile(latencies, 99) if latencies else float("nan")
    rows = (
        Row(
            "failed requests",
            str(failures),
            "",
            f"of {len(outcomes)} answered",
            "0",
            Verdict.MET if failures == 0 else Verdict.MISSED,
        ),
        Row(
            "engine loads",
            f"{loads:.0f}",
            f"{minimum} (offline minimum)",
            f"{loads / minimum:.2f}x the minimum; floor {len(MODELS)}",
        ),
        Row("latency p50", format_ms(p50, 1), "", ""),
        Row("latency p99", format_ms(p99, 1), "", ""),
        Row("wall time, throughput", f"{elapsed:.1f} s, {len(latencies) / elapsed:.1f} req/s", "", ""),
    )
    notes = [
        f"memory budget {budget / MIB:.0f} MiB; estimates per model: "
        + ", ".join(f"{m.name} {m.estimate_ram / MIB:.0f} MiB" for m in packaged)
    ]
    if scope.cancelled_caught:
        notes.append(
            f"the time limit stopped the run: {unfinished} of {requests} requests were not answered "
            "(not counted as failures; loads and the minimum cover what was sent)"
        )
    return stamp.report(
        title=f"3 models, memory for 1, {requests} interleaved requests from {CLIENTS} clients",
        candidate_label="modelrunner scheduler",
        baseline_label="offline minimum (Belady, 1 slot, arrival order)",
        method=(
            f"{requests} non-streamed chat requests (max_tokens 16), models drawn by a seeded RNG, sent by "
            f"{CLIENTS} closed-loop clients through the TCP port of `modelrunner serve`, whose --memory "
            "fits one model's estimate, never two. Loads come from the daemon's own counter; the offline "
            "minimum counts model changes in the order requests were sent."
        ),
        rows=rows,
        notes=tuple(notes),
    )
