"""Handlers of the compatibility layers: Ollama (`/api/*`), Anthropic (`/anthropic/v1/*`) and
OpenAI's Responses API (`/v1/responses`, translated to chat completions).

The shapes live in the pure modules `_ollama.py`, `_anthropic.py` and `_responses.py`; this module
does the I/O with the pieces the OpenAI proxy uses, so every layer behaves like the proxy where it
matters:

* a runner is held through `scheduler.acquire(model, mode, backend)` for the whole answer, under
  `Exchange.cancel_on_disconnect`, so a client that leaves stops the engine's work;
* the engine is reached over the runner's keep-alive pool (`PoolSet.get(lease.socket_path)`), and
  a failure there is handled as in `InferenceProxy._forward`: 502 before the answer started, the
  lease marked broken, a dropped connection after it started;
* SSE from the engine is split by `SSEFramer` and forwarded (Anthropic) or translated (Ollama,
  Responses) one batch of whole events at a time, as it arrives.

Responses are kept in memory (`_responses.ResponseStore`, one hour, as DMR) for `GET`, `DELETE`,
`input_items` and `previous_response_id`; a daemon restart forgets them, as DMR's does.

Ollama's runner settings go through the scheduler, not the request: `keep_alive` is the lease's
per-request idle timeout (`acquire(keep_alive=...)`), an empty request with `keep_alive` 0 is
`scheduler.unload`, and `options.num_ctx` is a `_configure` context size (merged into the model's
stored settings, applied only when it changes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from modelrunner.api import _anthropic, _ollama, _responses
from modelrunner.api._errors import ApiError, map_exception
from modelrunner.api._http import ClientDisconnected, Exchange
from modelrunner.api._openai import engine_failure
from modelrunner.api._proxy import (
    InferenceProxy,
    filter_response_headers,
    require_backend,
    upstream_request_headers,
)
from modelrunner.api._routing import Route, parse_query
from modelrunner.api._sse import ModelRewriter, SSEFramer, encode_model_name, rewrite_model
from modelrunner.api._upstream import UpstreamResponse
from modelrunner.api.ports import LeasePort, ModelManager, SchedulerPort
from modelrunner.distribution.progress import ProgressEvent
from modelrunner.engines import Mode
from modelrunner.scheduler import ConfigureRequest, RunnerInUse

__all__ = ["CompatLayers"]

log = logging.getLogger("modelrunner.api.compat")

Headers = list[tuple[bytes, bytes]]

_JSON = b"application/json"
_NDJSON = b"application/x-ndjson"
_CHAT_PATH = b"/v1/chat/completions"
# How DMR's request records show these layers (`X-Request-Origin` of its internal requests).
_RECORDED_CHAT_URL = "/engines/v1/chat/completions"
_OLLAMA_ORIGIN = "ollama/completion"
_ANTHROPIC_ORIGIN = "anthropic/messages"
_RESPONSES_ORIGIN = "openai/responses"
_SSE = b"text/event-stream"
_ENGINE_HEADERS: Headers = [(b"host", b"localhost"), (b"content-type", b"application/json")]


def _now() -> datetime:
    return datetime.now(UTC)


def _ns_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1e9)


class _StreamTranslator(Protocol):
    """What the Ollama and Responses layers' stream translators have in common."""

    @property
    def failed(self) -> bool: ...

    def feed(self, event: bytes) -> list[bytes]: ...


async def _send_translated(
    ex: Exchange,
    response: UpstreamResponse,
    translator: _StreamTranslator,
    finish: Callable[[], list[bytes]],
) -> None:
    """Send the engine's SSE stream translated, one batch of whole events at a time as it arrives,
    then what `finish()` closes it with. After an engine error the rest is not read: leaving the
    engine request closes its connection."""
    framer = SSEFramer()
    while not translator.failed:
        chunk = await response.receive()
        if not chunk:
            rest = framer.flush()
            out = translator.feed(rest) if rest else []
            await ex.send(b"".join([*out, *finish()]))
            return
        out = [piece for event in framer.feed(chunk) for piece in translator.feed(event)]
        if out:
            await ex.send(b"".join(out))


async def _completion_object(response: UpstreamResponse) -> dict[str, Any]:
    """The engine's whole (non-streamed) chat completion; 502 if it is not a JSON object."""
    data = await response.read()
    try:
        completion = json.loads(data)
    except ValueError:
        completion = None
    if not isinstance(completion, dict):
        raise ApiError(502, "the engine's answer is not a JSON object")
    return completion


async def _ignore_progress(event: ProgressEvent) -> None:
    return None


class CompatLayers:
    """The Ollama, Anthropic and Responses route handlers (`await layers.ollama_chat(ex, route, ...)`)."""

    def __init__(
        self,
        scheduler: SchedulerPort,
        models: ModelManager,
        proxy: InferenceProxy,
        responses: _responses.ResponseStore | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.models = models
        self.proxy = proxy
        self.responses = responses if responses is not None else _responses.ResponseStore()

    # -- shared ----------------------------------------------------------------------------------

    async def _json(self, ex: Exchange, value: object, extra: Headers, status: int = 200) -> None:
        await ex.respond(status, [(b"content-type", _JSON), *extra], _ollama.json_line(value))

    async def _read_json(self, ex: Exchange) -> object:
        """The body parsed as JSON (400 when it is not; too large is 413 in `ApiApp`)."""
        body = await ex.read_body(self.proxy.body_limit)
        try:
            return json.loads(body)
        except ValueError as exc:  # UnicodeDecodeError included
            detail = str(exc) if body.strip() else "the body is empty"
            raise ApiError(400, f"invalid request: the body is not valid JSON ({detail})") from None

    async def _read_object(self, ex: Exchange) -> dict[str, object]:
        """The body as a JSON object (Ollama-style 400s)."""
        return _ollama.request_object(await self._read_json(ex))

    @asynccontextmanager
    async def _engine_call(
        self,
        ex: Exchange,
        lease: LeasePort,
        *,
        model: str,
        body: bytes,
        origin: str,
        target: bytes = _CHAT_PATH,
        headers: Headers = _ENGINE_HEADERS,
        url: str = _RECORDED_CHAT_URL,
    ) -> AsyncIterator[UpstreamResponse]:
        """POST `body` to the lease's engine (by default a translated chat-completions request),
        recorded as DMR records its layers' requests: under `url`, with `origin`."""
        with self.proxy.recording(ex, lease, model=model, url=url, body=body, origin=origin) as record:
            async with self.proxy.engine_request(
                ex, lease, target, headers, body, model=model, record=record
            ) as response:
                yield response

    async def _stored_model(self, reference: str, not_found: str) -> dict[str, Any]:
        """The store's model object for `reference`; a missing one is a 404 saying `not_found`."""
        try:
            return await self.models.get_model(reference)
        except Exception as exc:
            if map_exception(exc).status == 404:
                raise ApiError(404, not_found) from exc
            raise

    # -- Ollama: models ------------------------------------------------------------------------------

    async def ollama_version(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self._json(ex, {"version": _ollama.OLLAMA_VERSION}, extra)

    async def ollama_tags(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self._json(ex, _ollama.tags_response(await self.models.list_models()), extra)

    async def ollama_show(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        name = _ollama.model_name(await self._read_object(ex))
        model = await self._stored_model(name, f"model {name!r} not found")
        await self._json(ex, _ollama.show_response(model), extra)

    async def ollama_ps(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        rows = list(self.scheduler.ps())
        models: list[dict[str, Any] | None] = []
        for row in rows:
            try:
                models.append(await self.models.get_model(row.model_id))
            except Exception as exc:  # a runner whose model left the store is still listed
                log.debug("no model object for runner of %s: %s", row.model_name, exc)
                models.append(None)
        await self._json(ex, _ollama.ps_response(rows, models), extra)

    async def ollama_delete(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        name = _ollama.model_name(await self._read_object(ex))
        await self.scheduler.unload(models=(name,))  # idle runners go first, as in DMR
        await self.models.delete(name, force=False)
        await self._json(ex, {}, extra)

    async def ollama_pull(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        payload = await self._read_object(ex)
        name = _ollama.model_name(payload)
        for key in ("insecure", "stream"):
            if payload.get(key) is not None and not isinstance(payload.get(key), bool):
                raise ApiError(400, f"invalid request: '{key}' must be a boolean")
        if payload.get("stream") is False:
            await self._pull_quietly(ex, name, extra)
            return
        success_sent = False

        async def progress(event: ProgressEvent) -> None:
            nonlocal success_sent
            line = _ollama.pull_status(event)
            success_sent = success_sent or line.get("status") == "success"
            if not ex.response_started:
                await ex.start_response(200, [(b"content-type", _NDJSON), *extra])
            await ex.send(_ollama.json_line(line))

        try:
            async with ex.cancel_on_disconnect():
                await self.models.pull(name, progress=progress)
        except ClientDisconnected:
            raise
        except Exception as exc:
            error = map_exception(exc)
            if not ex.response_started:  # nothing sent yet: the failure keeps its own status
                raise ApiError(error.status, f"Failed to pull model: {error.message}") from exc
            log.warning("pull of %s failed after progress started: %s", name, error.message)
            await ex.send(_ollama.json_line({"error": f"Failed to pull model: {error.message}"}))
            await ex.end_response()
            return
        if ex.client_gone:
            return
        if not success_sent:
            if not ex.response_started:
                await ex.start_response(200, [(b"content-type", _NDJSON), *extra])
            await ex.send(_ollama.json_line({"status": "success"}))
        await ex.end_response()

    async def _pull_quietly(self, ex: Exchange, name: str, extra: Headers) -> None:
        """`stream: false`: one answer once the pull is over."""
        try:
            async with ex.cancel_on_disconnect():
                await self.models.pull(name, progress=_ignore_progress)
        except ClientDisconnected:
            raise
        except Exception as exc:
            error = map_exception(exc)
            raise ApiError(error.status, f"Failed to pull model: {error.message}") from exc
        if not ex.client_gone:
            await self._json(ex, {"status": "success"}, extra)

    # -- Ollama: inference ---------------------------------------------------------------------------

    async def ollama_chat(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        request = _ollama.parse_chat_request(await self._read_object(ex))
        await self._ollama_inference(ex, request, extra, generate=False)

    async def ollama_generate(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        request = _ollama.parse_generate_request(await self._read_object(ex))
        await self._ollama_inference(ex, request, extra, generate=True)

    async def _ollama_inference(
        self, ex: Exchange, request: _ollama.InferenceRequest, extra: Headers, *, generate: bool
    ) -> None:
        started = time.perf_counter()
        if request.unload:
            await self.scheduler.unload(models=(request.model,))
            answer = _ollama.load_response(request.model, generate=generate, unloaded=True, now=_now())
            await self._json(ex, answer, extra)
            return
        await self._apply_context_size(request.model, request.num_ctx)
        with self.proxy.observing(ex, Mode.COMPLETION, started):
            async with (
                ex.cancel_on_disconnect(),
                self.scheduler.acquire(
                    request.model, Mode.COMPLETION, None, keep_alive=request.keep_alive
                ) as lease,
            ):
                load_ns = _ns_since(started)
                if request.load_only:
                    answer = _ollama.load_response(
                        request.model, generate=generate, unloaded=False, now=_now()
                    )
                    await self._json(ex, answer, extra)
                else:
                    body = request.openai_body()
                    async with self._engine_call(
                        ex, lease, model=request.model, body=body, origin=_OLLAMA_ORIGIN
                    ) as response:
                        await self._ollama_answer(ex, response, request, extra, started, load_ns, generate)

    async def _ollama_answer(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        request: _ollama.InferenceRequest,
        extra: Headers,
        started: float,
        load_ns: int,
        generate: bool,
    ) -> None:
        if response.status != 200:
            raise _ollama.engine_error(response.status, await response.read())
        content_type = response.header(b"content-type") or b""
        if content_type.startswith(b"text/event-stream"):
            await self._ollama_stream(ex, response, request, extra, started, load_ns, generate)
            return
        completion = await _completion_object(response)
        build = _ollama.generate_response if generate else _ollama.chat_response
        answer = build(request.model, completion, now=_now(), total_ns=_ns_since(started), load_ns=load_ns)
        await self._json(ex, answer, extra)

    async def _ollama_stream(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        request: _ollama.InferenceRequest,
        extra: Headers,
        started: float,
        load_ns: int,
        generate: bool,
    ) -> None:
        translator = _ollama.StreamTranslator(request.model, generate=generate, clock=_now)
        # DMR streams Ollama NDJSON as `application/json`, chunked.
        await ex.start_response(200, [(b"content-type", _JSON), *extra])
        await _send_translated(
            ex, response, translator, lambda: translator.finish(total_ns=_ns_since(started), load_ns=load_ns)
        )
        await ex.end_response()

    async def _apply_context_size(self, model: str, size: int | None) -> None:
        """`options.num_ctx` as the model's `_configure` context size, other settings kept.

        Nothing happens when it is already the stored size. A runner busy with other requests
        keeps its settings (DMR ignores this failure too); the request is served regardless.
        """
        if size is None:
            return
        try:
            rows = self.scheduler.configs(model)
        except Exception as exc:
            if map_exception(exc).status == 404:
                return  # acquire answers the 404 in the layer's format
            raise
        current = next((row for row in rows if row.mode is Mode.COMPLETION), None)
        if current is not None and current.context_size == size:
            return
        request = ConfigureRequest(
            model=model,
            backend=current.backend if current is not None else None,
            mode=Mode.COMPLETION,
            context_size=size,
            runtime_flags=tuple(current.runtime_flags) if current is not None else None,
            keep_alive=current.keep_alive if current is not None else None,
            extra=MappingProxyType(dict(current.extra) if current is not None else {}),
        )
        try:
            await self.scheduler.configure(request)
        except RunnerInUse as exc:
            log.warning("num_ctx %d for %s not applied: %s", size, model, exc)

    # -- Anthropic -----------------------------------------------------------------------------------

    async def anthropic_messages(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        body = await ex.read_body(self.proxy.body_limit)
        model = _anthropic.requested_model(body)
        await self._stored_model(model, f"Model not found: {model}")
        target = (route.upstream_path + ("?" + query if query else "")).encode("latin-1")
        headers = upstream_request_headers(ex.headers)
        with self.proxy.observing(ex, Mode.COMPLETION):
            async with (
                ex.cancel_on_disconnect(),
                self.scheduler.acquire(model, Mode.COMPLETION, None) as lease,
                self._engine_call(
                    ex,
                    lease,
                    model=model,
                    body=body,
                    origin=_ANTHROPIC_ORIGIN,
                    target=target,
                    headers=headers,
                    url="/engines" + route.upstream_path,
                ) as response,
            ):
                await self._anthropic_answer(ex, response, model, extra)

    async def _anthropic_answer(
        self, ex: Exchange, response: UpstreamResponse, model: str, extra: Headers
    ) -> None:
        content_type = response.header(b"content-type") or b""
        literal = encode_model_name(model)
        headers = [*filter_response_headers(response.headers), *extra]
        if response.status < 400 and content_type.startswith(b"text/event-stream"):
            framer = SSEFramer()
            rewrite = ModelRewriter(model)
            await ex.start_response(response.status, headers)
            while chunk := await response.receive():
                events = framer.feed(chunk)
                if events:
                    await ex.send(b"".join([rewrite(event) for event in events]))
            rest = framer.flush()
            if rest:
                await ex.send(rewrite(rest))
            await ex.end_response()
            return
        data = await response.read()
        if response.status >= 400:
            raise _anthropic.engine_error(response.status, data)
        if content_type.startswith(b"application/json"):
            data = rewrite_model(data, literal)
        await ex.respond(response.status, headers, data)

    # -- OpenAI Responses ----------------------------------------------------------------------------

    async def responses_create(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        require_backend(self.proxy.backends, route.backend)
        request = _responses.parse_create_request(await self._read_json(ex))
        history: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            earlier = self.responses.conversation(request.previous_response_id)
            if earlier is None:
                raise _responses.previous_response_not_found(request.previous_response_id)
            history = earlier
        chat_body = request.chat_body(history)
        with self.proxy.observing(ex, Mode.COMPLETION):
            async with (
                ex.cancel_on_disconnect(),
                self.scheduler.acquire(request.model, Mode.COMPLETION, route.backend) as lease,
                self._engine_call(
                    ex, lease, model=request.model, body=chat_body, origin=_RESPONSES_ORIGIN
                ) as response,
            ):
                await self._responses_answer(ex, response, request, history, extra)

    async def _responses_answer(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        request: _responses.CreateRequest,
        history: list[dict[str, Any]],
        extra: Headers,
    ) -> None:
        if response.status != 200:
            raise engine_failure(response.status, await response.read(), client_faults=())
        response_id = _responses.new_response_id()
        created_at = int(time.time())
        conversation = [*history, *request.input_messages]
        content_type = response.header(b"content-type") or b""
        if content_type.startswith(_SSE):
            await self._responses_stream(ex, response, request, conversation, extra, response_id, created_at)
            return
        completion = await _completion_object(response)
        answer = _responses.response_object(
            request, completion, response_id=response_id, created_at=created_at
        )
        if request.store:
            self.responses.put(answer, conversation, input_items=request.input_items)
        await self._json(ex, answer, extra)

    async def _responses_stream(
        self,
        ex: Exchange,
        response: UpstreamResponse,
        request: _responses.CreateRequest,
        conversation: list[dict[str, Any]],
        extra: Headers,
        response_id: str,
        created_at: int,
    ) -> None:
        translator = _responses.StreamTranslator(request, response_id=response_id, created_at=created_at)
        await ex.start_response(200, [(b"content-type", _SSE), (b"cache-control", b"no-cache"), *extra])
        await ex.send(b"".join(translator.start()))
        await _send_translated(ex, response, translator, translator.finish)
        if request.store and not translator.failed:
            self.responses.put(translator.response, conversation, input_items=request.input_items)
        await ex.end_response()

    async def responses_get(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        answer = self.responses.get(route.ref)
        if answer is None:
            raise _responses.response_not_found()
        await self._json(ex, answer, extra)

    async def responses_input_items(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        items = self.responses.input_items(route.ref)
        if items is None:
            raise _responses.response_not_found()
        params = parse_query(query)
        page = _responses.input_items_page(
            items,
            order=params.get("order", ["desc"])[-1],
            after=params.get("after", [""])[-1] or None,
            limit=params.get("limit", ["20"])[-1],
        )
        await self._json(ex, page, extra)

    async def responses_delete(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        if not self.responses.delete(route.ref):
            raise _responses.response_not_found()
        await self._json(ex, _responses.deleted_object(route.ref), extra)
