"""Closed-loop load: N clients, each with its own keep-alive connection, sending the next request
as soon as the previous answer is read, until a request count or a time limit is reached.

Closed loop (rather than a fixed arrival rate) is what "throughput at N concurrent" means: it
measures how many requests per second the server completes with N in flight.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from bench.httpclient import Endpoint, HttpConnection, HttpError, Response

__all__ = ["LoadResult", "RequestSpec", "run_closed_loop", "run_sequential"]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    method: str
    target: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    sse: bool = False


@dataclass(slots=True)
class LoadResult:
    """What one load run saw."""

    latencies: list[float] = field(default_factory=list)
    """Seconds per successful (2xx) request."""
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    """Connection-level failures by kind."""
    elapsed: float = 0.0
    responses: list[Response] = field(default_factory=list)
    """Kept only when asked for (``keep_responses``)."""

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def failures(self) -> int:
        return sum(self.errors.values()) + sum(
            n for status, n in self.statuses.items() if not 200 <= status < 300
        )

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0


async def run_closed_loop(
    endpoint: Endpoint,
    request: RequestSpec | Callable[[int], RequestSpec],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    keep_responses: bool = False,
) -> LoadResult:
    """Run ``concurrency`` clients against ``endpoint`` for ``duration`` seconds or ``max_requests``
    requests in all, whichever comes first. ``request`` may be a function of the request's sequence
    number (to mix routes). Requests in flight when time runs out are finished and counted; the
    elapsed time includes them.

    Raises:
        ValueError: ``concurrency`` or ``max_requests`` is below 1, or ``duration`` is not positive.
    """
    if concurrency < 1 or max_requests < 1 or duration <= 0:
        raise ValueError("concurrency and max_requests must be >= 1 and duration > 0")
    result = LoadResult()
    issued = 0
    started = time.perf_counter()
    deadline = started + duration

    def next_spec() -> RequestSpec | None:
        nonlocal issued
        if issued >= max_requests or time.perf_counter() >= deadline:
            return None
        sequence = issued
        issued += 1
        return request(sequence) if callable(request) else request

    async def client() -> None:
        connection = HttpConnection(endpoint)
        try:
            while (spec := next_spec()) is not None:
                await _tally_request(connection, spec, result, keep_responses)
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    result.elapsed = time.perf_counter() - started
    return result


async def run_sequential(
    connection: HttpConnection, spec: RequestSpec, count: int, *, keep_responses: bool = False
) -> LoadResult:
    """``count`` requests one after another on ``connection`` (one client, no concurrency)."""
    result = LoadResult()
    started = time.perf_counter()
    for _ in range(count):
        await _tally_request(connection, spec, result, keep_responses)
    result.elapsed = time.perf_counter() - started
    return result


async def _tally_request(
    connection: HttpConnection, spec: RequestSpec, result: LoadResult, keep_responses: bool
) -> None:
    """One request into `result`: its status and latency, or its error (the connection is then
    closed, so the next request opens a fresh one)."""
    try:
        response = await connection.request(
            spec.method, spec.target, spec.body, headers=spec.headers, sse=spec.sse
        )
    except (OSError, HttpError) as exc:
        result.errors[type(exc).__name__] += 1
        await connection.aclose()
        return
    result.statuses[response.status] += 1
    if 200 <= response.status < 300:
        result.latencies.append(response.latency)
    if keep_responses:
        result.responses.append(response)
