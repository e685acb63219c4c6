"""The inference proxy: the hot path from a client request to a runner's Unix socket and back.

One request:

1. read the body (at most `body_limit`, DMR's 10 MiB) and take `model` from it (`requested_model`);
2. `scheduler.acquire(model, mode, backend)`, which finds, loads or queues for the runner; a client
   that disconnects while waiting leaves the queue (the wait runs under `cancel_on_disconnect`);
3. forward the *original body bytes* to the runner with the path trimmed to `/v1/...` (or
   `/rerank`, `/score`), `Host: localhost` and `Content-Length`, over the runner's keep-alive pool;
4. pass the answer back: status and headers (minus hop-by-hop ones and the engine's CORS header);
   a JSON body gets its `model` rewritten to the name the client asked for, and engine 500s that are
   really bad requests become 400; an SSE stream is forwarded event by event as each event
   completes, each event's `model` rewritten the same way;
5. the lease, and with it the runner's in-use count, is held until the last byte is sent or the
   client is gone; a client that disconnects mid-stream closes the engine connection, which makes
   llama-server stop generating.

An engine connection that fails before the response started answers 502 (the runner is reported
broken to the scheduler when its socket is gone or the connection broke); after the response
started, the client connection is dropped so a truncated body is never taken for a complete one.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType

import trio
from modelrunner.api._errors import ApiError
from modelrunner.api._http import BodyTooLarge, ClientDisconnected, Exchange
from modelrunner.api._metrics import ApiMetrics
from modelrunner.api._openai import classify_engine_error, requested_model
from modelrunner.api._recorder import Record, RequestRecorder
from modelrunner.api._routing import Route
from modelrunner.api._sse import ModelRewriter, SSEFramer, encode_model_name, rewrite_model
from modelrunner.api._upstream import (
    PoolSet,
    UnixConnectionPool,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
)
from modelrunner.api.ports import BackendsPort, LeasePort, SchedulerPort
from modelrunner.engines import Mode

__all__ = [
    "InferenceProxy",
    "engine_slots",
    "filter_response_headers",
    "require_backend",
    "upstream_request_headers",
]

log = logging.getLogger("modelrunner.api.proxy")

_PROPS_TIMEOUT = 2.0

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 §7.6.1) and ones the proxy sets itself.
_DROP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        # The proxy rewrites `model` in response bodies, so it asks for them uncompressed.
        b"accept-encoding",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        # DMR strips the engine's CORS answer; ours is added from the daemon's own policy.
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
    }
)


def upstream_request_headers(client_headers: Headers) -> Headers:
    """The client's end-to-end headers plus `Host: localhost` (content-length is added by the pool)."""
    headers: Headers = [(b"host", b"localhost")]
    headers.extend((name, value) for name, value in client_headers if name not in _DROP_REQUEST)
    return headers


def filter_response_headers(engine_headers: Headers) -> Headers:
    return [(name, value) for name, value in engine_headers if name not in _DROP_RESPONSE]


def require_backend(backends: BackendsPort, name: str | None) -> None:
    """Refuse a request naming a backend that does not exist (404); None means the default."""
    if name is not None and name not in backends.names():
        known = ", ".join(backends.names())
        raise ApiError(404, f"backend not found: {name!r} (known backends: {known})")


def engine_slots(props: bytes) -> int | None:
    """`total_slots` from llama-server's `GET /props` body, or None."""
    try:
        slots = json.loads(props).get("total_slots")
    except (ValueError, AttributeError):
        return None
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 else None


@dataclass
class InferenceProxy:
    scheduler: SchedulerPort
    backends: BackendsPort
    pools: PoolSet
    metrics: ApiMetrics
    body_limit: int = 10 << 20
    max_connections: int = 16
    """Connections per runner at most; for llama.cpp, its slot count when lower."""
    recorder: RequestRecorder | None = None
    """Keeps the last requests per model for `GET /engines/requests`."""

    async def handle(self, ex: Exchange, route: Route, query: str, extra_headers: Headers) -> None:
        """Serve one inference request; raises ApiError for answers in the route's error style."""
        require_backend(self.backends, route.backend)
        try:
            body = await ex.read_body(self.body_limit)
        except BodyTooLarge:
            raise ApiError(
                400, f"request too large: the body exceeds {self.body_limit} bytes", close=True
            ) from None
        model = requested_model(body)
        assert route.mode is not None
        preload_only = (ex.header(b"x-preload-only") or b"").strip().lower() == b"true"
        target = route.upstream_path + ("?" + query if query else "")
        with self.observing(ex, route.mode):
            async with (
                ex.cancel_on_disconnect(),
                self.scheduler.acquire(model, route.mode, route.backend) as lease,
            ):
                if preload_only:
                    await ex.respond(200, list(extra_headers))
                else:
                    with self.recording(ex, lease, model=model, url=route.path, body=body) as record:
                        await self._forward(
                            ex, lease, target.encode("latin-1"), body, model, extra_headers, record
                        )

    def observing(self, ex: Exchange, mode: Mode, started: float | None = None) -> _Observation:
        """`with` it to count the inference request and its duration (from `started`, a
        `perf_counter` time, or now) by outcome: ok, client_gone (the client left) or error."""
        return _Observation(self.metrics, ex, mode, time.perf_counter() if started is None else started)

    def recording(
        self, ex: Exchange, lease: LeasePort, *, model: str, url: str, body: bytes, origin: str | None = None
    ) -> _Recording:
        """`with` it to record the request for `GET /engines/requests`; yields the record, or None
        when recording is off.

        The answer is taken from `engine_request(..., record=...)`; an error raised as `ApiError`
        is recorded as the answer, and a request that ends without one gets status 0 (shown 408).
        """
        recorder = self.recorder
        if recorder is None:
            return _Recording(None, ex, None)
        record = recorder.begin(
            model_id=lease.model_id,
            model=model,
            method=ex.method,
            url=url,
            body=body,
            user_agent=ex.header_str(b"user-agent") or "",
            origin=origin if origin is not None else ex.header_str(b"x-request-origin") or "",
        )
        return _Recording(recorder, ex, record)

    def engine_request(
        self,
        ex: Exchange,
        lease: LeasePort,
        target: bytes,
        headers: Headers,
        body: bytes,
        *,
        model: str,
        record: Record | None = None,
    ) -> _EngineRequest:
        """`async with` it to POST to the lease's runner over its pool; yields the response once its
        head arrived.

        Every layer (OpenAI, Ollama, Anthropic) reaches engines through here, so failures mean the
        same everywhere, and `record` keeps what the engine sends.

        Raises:
            ApiError: 502 when the engine cannot be reached or fails before answering (the runner is
                reported broken).
            ClientDisconnected: the engine failed after the answer started (the client connection is
                dropped so a truncated body is never taken for a whole one).
        """
        return _EngineRequest(self, ex, lease, target, headers, body, model, record)

    async def _failure_error(
        self, ex: Exchange, lease: LeasePort, model: str, exc: UpstreamError
    ) -> Exception:
        """What a failed engine request means to the client; the runner is reported broken."""
        lease.mark_broken(str(exc))
        if isinstance(exc, UpstreamConnectError):
            await self.pools.discard(lease.socket_path)
            return ApiError(502, f"the engine for {model!r} is not reachable: {exc}")
        if ex.response_started:
            return ClientDisconnected(f"engine failed mid-response: {exc}")
        return ApiError(502, f"the engine for {model!r} failed: {exc}")

    async def _forward(
        self,
        ex: Exchange,
        lease: LeasePort,
        target: bytes,
        body: bytes,
        model: str,
        extra_headers: Headers,
        record: Record | None,
    ) -> None:
        headers = upstream_request_headers(ex.headers)
        async with self.engine_request(
            ex, lease, target, headers, body, model=model, record=record
        ) as response:
            content_type = response.header(b"content-type") or b""
            if content_type.startswith(b"text/event-stream"):
                await self._stream(ex, response, model, extra_headers)
            else:
                await self._relay(ex, response, model, extra_headers, content_type)

    async def _learn_capacity(self, pool: UnixConnectionPool, backend: str) -> None:
        """Bound the pool by the engine's parallel slots (llama-server's `total_slots`) plus one, once.

        One connection more than the slots keeps the next request queued inside the engine, so a
        slot starts on it the moment it frees instead of waiting a round trip for the proxy to relay
        the previous response first (bench `proxy`: 0.82x -> 0.98x of direct at 4 concurrent).
        llama-server serves at least `parallel + 2` connections at once, so one of its HTTP threads
        stays free for `/health` and `/metrics` even while the pool is full.
        """
        async with pool.capacity_lock:
            if pool.capacity_known:
                return
            slots = None
            if backend == "llama.cpp":
                with trio.move_on_after(_PROPS_TIMEOUT):
                    async with pool.request(
                        b"GET", b"/props", [(b"host", b"localhost")], extra=True
                    ) as props:
                        body = await props.read()
                    if props.status == 200:
                        slots = engine_slots(body)
            limit = min(slots + 1, self.max_connections) if slots else self.max_connections
            log.debug("engine at %s: %s connections at most", pool.socket_path, limit)
            pool.set_capacity(limit)

    async def _relay(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        model: str,
        extra_headers: Headers,
        content_type: bytes,
    ) -> None:
        data = await response.read()
        status = response.status
        if content_type.startswith(b"application/json"):
            fixed = classify_engine_error(status, data)
            if fixed is not None:
                status, data = fixed
            else:
                data = rewrite_model(data, encode_model_name(model))
        await ex.respond(status, [*filter_response_headers(response.headers), *extra_headers], data)

    async def _stream(
        self, ex: Exchange, response: UpstreamResponse, model: str, extra_headers: Headers
    ) -> None:
        rewrite = ModelRewriter(model)
        framer = SSEFramer()
        await ex.start_response(response.status, [*filter_response_headers(response.headers), *extra_headers])
        while True:
            chunk = await response.receive()
            if not chunk:
                break
            events = framer.feed(chunk)
            if not events:
                continue
            out = b"".join([rewrite(event) for event in events])
            await ex.send(out)
        rest = framer.flush()
        if rest:
            await ex.send(rewrite(rest))
        await ex.end_response()


class _EngineRequest:
    """`InferenceProxy.engine_request()`'s block (a class: see `_PooledRequest`)."""

    __slots__ = ("_body", "_ex", "_headers", "_lease", "_model", "_proxy", "_record", "_request", "_target")

    def __init__(
        self,
        proxy: InferenceProxy,
        ex: Exchange,
        lease: LeasePort,
        target: bytes,
        headers: Headers,
        body: bytes,
        model: str,
        record: Record | None,
    ) -> None:
        self._proxy = proxy
        self._ex = ex
        self._lease = lease
        self._target = target
        self._headers = headers
        self._body = body
        self._model = model
        self._record = record
        self._request: AbstractAsyncContextManager[UpstreamResponse] | None = None

    async def __aenter__(self) -> UpstreamResponse:
        proxy, lease = self._proxy, self._lease
        pool = proxy.pools.get(lease.socket_path)
        try:
            if not pool.capacity_known:
                await proxy._learn_capacity(pool, lease.backend)
            request = pool.request(b"POST", self._target, self._headers, self._body)
            response = await request.__aenter__()
        except UpstreamError as exc:
            raise await proxy._failure_error(self._ex, lease, self._model, exc) from exc
        self._request = request
        if self._record is not None:
            response.tap = self._record.add
        return response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        request, self._request = self._request, None
        if request is not None:
            await request.__aexit__(exc_type, exc, tb)
        if isinstance(exc, UpstreamError):
            raise await self._proxy._failure_error(self._ex, self._lease, self._model, exc) from exc


# The blocks below are classes, not @contextmanager generators: every inference request enters
# each of them once.


class _Observation:
    """`InferenceProxy.observing()`'s block."""

    __slots__ = ("_ex", "_metrics", "_mode", "_started")

    def __init__(self, metrics: ApiMetrics, ex: Exchange, mode: Mode, started: float) -> None:
        self._metrics = metrics
        self._ex = ex
        self._mode = mode
        self._started = started

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ex = self._ex
        # A client that left ends the block with the cancellation (or the failed write) it caused.
        outcome = "client_gone" if ex.client_gone else "ok" if exc_type is None else "error"
        self._metrics.observe_inference(
            self._mode.value, outcome, ex.status, time.perf_counter() - self._started
        )


class _Recording:
    """`InferenceProxy.recording()`'s block."""

    __slots__ = ("_ex", "_record", "_recorder")

    def __init__(self, recorder: RequestRecorder | None, ex: Exchange, record: Record | None) -> None:
        self._recorder = recorder
        self._ex = ex
        self._record = record

    def __enter__(self) -> Record | None:
        return self._record

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        recorder, record = self._recorder, self._record
        if recorder is None or record is None:
            return
        if isinstance(exc, ApiError):
            recorder.finish(record, exc.status, exc.message.encode())
        else:  # status 0: the request ended without an answer
            ex = self._ex
            recorder.finish(record, ex.status if ex.response_started else 0)
