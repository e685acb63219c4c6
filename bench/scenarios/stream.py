"""stream: a 256-token streamed completion through modelrunner vs straight to llama-server.

The tiny chat model answers a raw ``/v1/completions`` prompt with printable gibberish until
``max_tokens``, so every stream is exactly 256 token events long. Each stream is read with
arrival stamps per server-sent event:

- time to first byte: request sent -> first response byte;
- time to first token: request sent -> first event carrying text;
- per-chunk gap: (last token event - first token event) / (tokens - 1), i.e. the mean spacing of
  the stream, which is what a proxy that adds work per chunk would stretch. (A median of single
  gaps says little: several events often arrive in one read, giving gaps of 0.)

A goes through the daemon (``POST /engines/v1/completions`` on its TCP port), B straight to the
runner's socket; rounds alternate, several streams per arm and round, one keep-alive connection
per arm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import trio

from bench.alternation import alternate
from bench.context import BenchContext, format_ms, format_signed_ms
from bench.httpclient import Endpoint, HttpConnection, Response
from bench.report import Row, ScenarioReport, Verdict
from bench.scenarios.common import JSON, chat_body, find_runner_sockets, package_models, request_ok
from bench.services import ServiceError, open_daemon, test_models, work_dir
from bench.sse import parse_sse_events, token_event_indices
from bench.stats import percentile

NAME = "stream"
MODEL = "ai/bench-chat"
TOKENS = 256
TARGET_ADDED_PER_CHUNK = 0.0002


@dataclass(frozen=True, slots=True)
class StreamTiming:
    first_byte: float
    first_token: float
    mean_gap: float
    duration: float
    """First token event -> last token event."""
    tokens: int


def stream_timing(response: Response) -> StreamTiming:
    """Timings of one streamed completion (pure, from the response's arrival stamps).

    Raises:
        ServiceError: the response failed or carried fewer than two tokens.
    """
    if response.status != 200:
        raise ServiceError(f"the stream answered {response.status}: {response.body[:300]!r}")
    indices = token_event_indices(parse_sse_events(response.body))
    times = [response.event_times[i] for i in indices if i < len(response.event_times)]
    if len(times) < 2:
        raise ServiceError(f"the stream carried {len(times)} token events: {response.body[:300]!r}")
    return StreamTiming(
        first_byte=response.time_to_first_byte,
        first_token=times[0] - response.sent_at,
        mean_gap=(times[-1] - times[0]) / (len(times) - 1),
        duration=times[-1] - times[0],
        tokens=len(times),
    )


async def run(ctx: BenchContext) -> ScenarioReport:
    stamp = ctx.begin(NAME)
    rounds = ctx.scale(8, 2)
    per_round = ctx.scale(4, 2)
    body = json.dumps(
        {"model": MODEL, "prompt": "Once upon a time", "max_tokens": TOKENS, "stream": True, "temperature": 0}
    ).encode()
    with work_dir(NAME) as root:
        models = await trio.to_thread.run_sync(test_models, root / "testmodels")
        await trio.to_thread.run_sync(package_models, root / "models", [(MODEL, models["chat"], None)])
        async with open_daemon(root, ctx.engine) as daemon:
            ctx.log(NAME, "loading the model through the daemon")
            await request_ok(daemon.tcp, "POST", "/engines/v1/chat/completions", chat_body(MODEL))
            sockets = await find_runner_sockets(daemon)
            if len(sockets) != 1:
                raise ServiceError(f"expected one runner socket under {daemon.state_dir}, found {sockets}")
            a_connection = HttpConnection(daemon.tcp)
            b_connection = HttpConnection(Endpoint.unix(str(sockets[0])))

            async def streams(connection: HttpConnection, target: str, count: int) -> list[StreamTiming]:
                return [
                    stream_timing(await connection.request("POST", target, body, headers=JSON, sse=True))
                    for _ in range(count)
                ]

            await streams(a_connection, "/engines/v1/completions", 1)  # warm-up
            await streams(b_connection, "/v1/completions", 1)

            async def candidate(_: int) -> list[StreamTiming]:
                return await streams(a_connection, "/engines/v1/completions", per_round)

            async def baseline(_: int) -> list[StreamTiming]:
                return await streams(b_connection, "/v1/completions", per_round)

            ctx.log(NAME, f"{rounds} rounds of {per_round} streams per arm")
            paired = await alternate(rounds, candidate, baseline, time_budget=ctx.scale(45, 15))
            await a_connection.aclose()
            await b_connection.aclose()

    a_all = [t for r in paired.candidate for t in r]
    b_all = [t for r in paired.baseline for t in r]

    def med(timings: list[StreamTiming], field: str) -> float:
        return percentile([getattr(t, field) for t in timings], 50)

    def added(field: str) -> float:
        return percentile(
            [med(a, field) - med(b, field) for a, b in zip(paired.candidate, paired.baseline, strict=True)],
            50,
        )

    added_gap = added("mean_gap")
    token_counts = sorted({t.tokens for t in a_all + b_all})
    rows = (
        Row(
            "time to first byte",
            format_ms(med(a_all, "first_byte"), 3),
            format_ms(med(b_all, "first_byte"), 3),
            format_signed_ms(added("first_byte"), 3) + " added",
        ),
        Row(
            "time to first token",
            format_ms(med(a_all, "first_token"), 3),
            format_ms(med(b_all, "first_token"), 3),
            format_signed_ms(added("first_token"), 3) + " added",
        ),
        Row(
            "per-chunk gap (mean over the stream)",
            format_ms(med(a_all, "mean_gap"), 4),
            format_ms(med(b_all, "mean_gap"), 4),
            format_signed_ms(added_gap, 4) + " added",
            f"<= {TARGET_ADDED_PER_CHUNK * 1000:.1f} ms added",
            Verdict.MET if added_gap <= TARGET_ADDED_PER_CHUNK else Verdict.MISSED,
        ),
        Row(
            "first to last token",
            format_ms(med(a_all, "duration"), 2),
            format_ms(med(b_all, "duration"), 2),
            format_signed_ms(added("duration"), 2) + " added",
        ),
    )
    return stamp.report(
        title=f"{TOKENS}-token streamed completion, through the daemon vs direct",
        candidate_label="modelrunner (TCP, /engines/v1/completions)",
        baseline_label="llama-server's Unix socket",
        method=(
            f"The daemon (`modelrunner serve`) serves the tiny chat model. {TOKENS}-token streamed "
            "/v1/completions (temperature 0; every stream had "
            f"{', '.join(map(str, token_counts))} token events) through the daemon (A) or straight to the "
            f"runner's socket (B): {paired.rounds} alternating rounds of {per_round} streams per arm, one "
            "keep-alive connection per arm. Per-chunk gap = (last token event - first) / (tokens - 1), "
            "stamped on arrival at the client. 'Added' is the median over rounds of the per-round A-B "
            "difference of medians."
        ),
        rows=rows,
    )
