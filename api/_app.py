"""The application: route a request, apply CORS, run its handler, render errors in the route's style.

Handlers raise `ApiError` (or any lower-layer error, mapped by `map_exception`); rendering happens
in one place (`ApiApp.__call__`), as DMR text on `/models`, `/engines` admin and misc routes, as
OpenAI JSON on `/v1`, `/rerank` and `/score` routes, and in Ollama's and Anthropic's own error
shapes on `/api` and `/anthropic` (whose handlers live in `_compat.py`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from modelrunner.api._anthropic import render_anthropic
from modelrunner.api._compat import CompatLayers
from modelrunner.api._config import ApiConfig
from modelrunner.api._cors import PREFLIGHT_HEADERS, CorsDecision, CorsPolicy
from modelrunner.api._errors import ApiError, map_exception, render_dmr, render_openai
from modelrunner.api._gotime import go_time
from modelrunner.api._http import BodyReadTimeout, BodyTooLarge, ClientDisconnected, Exchange
from modelrunner.api._logs import LogFiles, follow_logs, parse_go_bool, read_log_files
from modelrunner.api._metrics import (
    CONTENT_TYPE_LATEST,
    ApiMetrics,
    EngineScrape,
    merge_families,
    relabel_engine_metrics,
    render_families,
)
from modelrunner.api._ollama import render_ollama
from modelrunner.api._openai import openai_model_list, openai_model_object
from modelrunner.api._proxy import InferenceProxy, require_backend
from modelrunner.api._recorder import Record, RequestRecorder, record_object
from modelrunner.api._routing import ErrorStyle, Route, RouteKind, parse_query, route, split_target
from modelrunner.api._upstream import PoolSet
from modelrunner.api.ports import BackendsPort, ConfigRow, ModelManager, RunnerRow, SchedulerPort
from modelrunner.distribution.progress import EventType, ProgressEvent
from modelrunner.distribution.progress import Mode as ProgressMode
from modelrunner.scheduler import ConfigureRequest, format_keep_alive

__all__ = ["ApiApp", "ApiConfig", "ApiServices", "dmr_json", "render_ps_row"]

log = logging.getLogger("modelrunner.api")

Headers = list[tuple[bytes, bytes]]

BANNER = b"Docker Model Runner is running"
_ZERO_TIME = "0001-01-01T00:00:00Z"
# DMR's first event to a follower of /engines/requests (its exact bytes, spacing included).
_CONNECTED_EVENT = b'event: connected\ndata: {"status": "connected"}\n\n'

_RENDERERS = {
    ErrorStyle.DMR: render_dmr,
    ErrorStyle.OPENAI: render_openai,
    ErrorStyle.OLLAMA: render_ollama,
    ErrorStyle.ANTHROPIC: render_anthropic,
}
# DMR's Anthropic layer answers an over-long body 413; the Ollama layer does the same here.
_TOO_LARGE_STATUS = {ErrorStyle.OLLAMA: 413, ErrorStyle.ANTHROPIC: 413}


@dataclass(frozen=True)
class ApiServices:
    """The collaborators the API serves (wired by the daemon; fakes in unit tests)."""

    scheduler: SchedulerPort
    backends: BackendsPort
    models: ModelManager


def dmr_json(value: object) -> bytes:
    """JSON as Go's `json.Encoder` writes it: compact, `<>&` escaped, trailing newline."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return text.encode() + b"\n"


def _go_time(moment: datetime | None) -> str:
    """Go's RFC 3339 rendering of a `time.Time`; Go's zero time for None."""
    return _ZERO_TIME if moment is None else go_time(moment)


def render_ps_row(row: RunnerRow) -> dict[str, Any]:
    """DMR's `/engines/ps` entry (`in_use`/`loading` omitted when false) plus memory in bytes."""
    out: dict[str, Any] = {
        "backend_name": row.backend_name,
        "model_name": row.model_name,
        "mode": str(row.mode),
        "last_used": _go_time(None if row.in_use else row.last_used),
    }
    if row.in_use:
        out["in_use"] = True
    if row.loading:
        out["loading"] = True
    out["keep_alive"] = format_keep_alive(row.keep_alive)
    out["memory_reserved"] = row.memory_reserved
    if row.memory_measured is not None:
        out["memory_measured"] = row.memory_measured
    return out


def _render_config_row(row: ConfigRow) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if row.context_size is not None:
        config["context-size"] = row.context_size
    config["runtime-flags"] = list(row.runtime_flags)
    if row.keep_alive is not None:
        config["keep_alive"] = format_keep_alive(row.keep_alive)
    config.update(row.extra)
    return {
        "Backend": row.backend,
        "Model": row.model,
        "ModelID": row.model_id,
        "Mode": str(row.mode),
        "Config": config,
    }


def _sse_event(name: str, value: object) -> bytes:
    return (
        b"event: " + name.encode() + b"\ndata: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"
    )


def _html_escape(data: bytes) -> bytes:
    # Go's html.EscapeString, byte for byte (its entities differ from Python's html.escape).
    return (
        data.replace(b"&", b"&amp;")
        .replace(b"'", b"&#39;")
        .replace(b"<", b"&lt;")
        .replace(b">", b"&gt;")
        .replace(b'"', b"&#34;")
    )


def _bool_query(query: Mapping[str, list[str]], name: str) -> bool:
    """DMR reads `?force`/`?remote` with Go's ParseBool; a bare `?force` means true; junk is ignored."""
    if name not in query:
        return False
    value = query[name][0]
    if value == "":
        return True
    try:
        return parse_go_bool(value)
    except ValueError:
        return False


class _ProgressWriter:
    """Streams pull/push progress lines. The 200 head goes out with the first line, so errors raised
    before any progress still get their own status (as in DMR)."""

    def __init__(self, ex: Exchange, extra_headers: Headers) -> None:
        self._ex = ex
        accept = (ex.header(b"accept") or b"").strip()
        self._json = accept == b"application/json"
        self._extra = extra_headers

    @property
    def started(self) -> bool:
        return self._ex.response_started

    async def write_line(self, line: bytes) -> None:
        if not self._ex.response_started:
            content_type = b"application/json" if self._json else b"text/plain; charset=utf-8"
            await self._ex.start_response(
                200, [(b"content-type", content_type), (b"cache-control", b"no-cache"), *self._extra]
            )
        await self._ex.send(line if self._json else _html_escape(line))

    async def __call__(self, event: ProgressEvent) -> None:
        await self.write_line(event.to_json_line())

    async def finish(self) -> None:
        await self._ex.end_response()


class ApiApp:
    """The HTTP application: `await app(exchange)` serves one request."""

    def __init__(self, services: ApiServices, config: ApiConfig) -> None:
        self.services = services
        self.config = config
        self.cors = CorsPolicy.from_origins(config.cors_origins)
        self.pools = PoolSet(max_idle_per_pool=config.pool_max_idle)
        self.metrics = ApiMetrics()
        self.proxy = InferenceProxy(
            services.scheduler,
            services.backends,
            self.pools,
            self.metrics,
            config.body_limit,
            config.pool_max_connections,
            RequestRecorder() if config.record_requests else None,
        )
        compat = CompatLayers(services.scheduler, services.models, self.proxy)
        self._handlers: dict[RouteKind, Callable[[Exchange, Route, str, Headers], Awaitable[None]]] = {
            RouteKind.ROOT: self._root,
            RouteKind.VERSION: self._version,
            RouteKind.LOGS: self._logs,
            RouteKind.METRICS: self._metrics,
            RouteKind.MODELS_LIST: self._models_list,
            RouteKind.MODELS_CREATE: self._models_create,
            RouteKind.MODELS_LOAD: self._models_load,
            RouteKind.MODELS_PURGE: self._models_purge,
            RouteKind.MODEL_GET: self._model_get,
            RouteKind.MODEL_EXPORT: self._model_export,
            RouteKind.MODEL_DELETE: self._model_delete,
            RouteKind.MODEL_TAG: self._model_tag,
            RouteKind.MODEL_PUSH: self._model_push,
            RouteKind.MODEL_REPACKAGE: self._model_repackage,
            RouteKind.MODEL_UNKNOWN_ACTION: self._model_unknown_action,
            RouteKind.ENGINES_STATUS: self._engines_status,
            RouteKind.ENGINES_PS: self._engines_ps,
            RouteKind.ENGINES_DF: self._engines_df,
            RouteKind.ENGINES_UNLOAD: self._engines_unload,
            RouteKind.ENGINES_CONFIGURE: self._engines_configure,
            RouteKind.ENGINES_CONFIGURATIONS: self._engines_configurations,
            RouteKind.ENGINES_REQUESTS: self._engines_requests,
            RouteKind.ENGINES_INSTALL: self._engines_install,
            RouteKind.ENGINES_UNINSTALL: self._engines_uninstall,
            RouteKind.OPENAI_MODELS: self._openai_models,
            RouteKind.OPENAI_MODEL: self._openai_model,
            RouteKind.INFERENCE: self.proxy.handle,
            RouteKind.OLLAMA_VERSION: compat.ollama_version,
            RouteKind.OLLAMA_TAGS: compat.ollama_tags,
            RouteKind.OLLAMA_PS: compat.ollama_ps,
            RouteKind.OLLAMA_SHOW: compat.ollama_show,
            RouteKind.OLLAMA_CHAT: compat.ollama_chat,
            RouteKind.OLLAMA_GENERATE: compat.ollama_generate,
            RouteKind.OLLAMA_PULL: compat.ollama_pull,
            RouteKind.OLLAMA_DELETE: compat.ollama_delete,
            RouteKind.ANTHROPIC_MESSAGES: compat.anthropic_messages,
            RouteKind.RESPONSES_CREATE: compat.responses_create,
            RouteKind.RESPONSES_GET: compat.responses_get,
            RouteKind.RESPONSES_INPUT_ITEMS: compat.responses_input_items,
            RouteKind.RESPONSES_DELETE: compat.responses_delete,
            RouteKind.METHOD_NOT_ALLOWED: self._method_not_allowed,
            RouteKind.NOT_FOUND: self._not_found,
        }

    async def aclose(self) -> None:
        await self.pools.aclose()

    # -- entry point ---------------------------------------------------------------------------

    async def __call__(self, ex: Exchange) -> None:
        path, query = split_target(ex.target)
        matched = route(ex.method, path)
        extra: Headers = []
        try:
            if matched.cors:
                origin = ex.header_str(b"origin")
                decision = self.cors.decide(ex.method, origin)
                if decision is CorsDecision.FORBIDDEN:
                    # DMR's middleware answers before routing, in plain text on every route.
                    await ex.respond(*render_dmr(ApiError(403, "Origin not allowed")))
                    return
                if decision is not CorsDecision.NO_ORIGIN:
                    assert origin is not None
                    extra.append((b"access-control-allow-origin", origin.encode("latin-1")))
                if decision is CorsDecision.PREFLIGHT:
                    await ex.respond(204, [*extra, *PREFLIGHT_HEADERS])
                    return
            await self._handlers[matched.kind](ex, matched, query, extra)
        except ClientDisconnected:
            raise
        except Exception as exc:  # the one place where every error becomes an HTTP answer
            await self._answer_error(ex, matched, exc, extra)
        finally:
            self.metrics.observe_request(matched.kind.value, ex.status)

    async def _answer_error(self, ex: Exchange, matched: Route, exc: Exception, extra: Headers) -> None:
        if isinstance(exc, BodyTooLarge):
            status = _TOO_LARGE_STATUS.get(matched.style, 400)
            exc = ApiError(status, f"request too large: the body exceeds {exc.limit} bytes", close=True)
        error = map_exception(exc)
        if isinstance(exc, BodyReadTimeout):
            error.close = True  # the rest of the body may still come: do not parse it as a request
        if error.status >= 500:
            log.error(
                "%s %s: %s", ex.method, ex.target, error.message, exc_info=not isinstance(exc, ApiError)
            )
        if ex.response_started:
            # Too late for a status: drop the connection so the client sees a broken response.
            raise ClientDisconnected(f"error after the response started: {error.message}") from exc
        status, headers, body = _RENDERERS[matched.style](error)
        headers = [*headers, *extra]
        if error.close:
            headers.append((b"connection", b"close"))
        await ex.respond(status, headers, body)

    # -- helpers -------------------------------------------------------------------------------

    async def _json(self, ex: Exchange, value: object, extra: Headers, status: int = 200) -> None:
        await ex.respond(status, [(b"content-type", b"application/json"), *extra], dmr_json(value))

    async def _read_json(self, ex: Exchange, *, allow_empty: bool = False, what: str = "request") -> Any:
        body = await ex.read_body(self.config.body_limit)
        if allow_empty and not body.strip():
            return {}
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"invalid {what}: the body is not valid JSON ({exc})") from None

    def _check_backend(self, backend: str | None) -> None:
        require_backend(self.services.backends, backend)

    # -- misc routes ---------------------------------------------------------------------------

    async def _root(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await ex.respond(200, [(b"content-type", b"text/plain; charset=utf-8")], BANNER)

    async def _version(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self._json(ex, {"version": self.config.version, **self.config.version_details}, [])

    async def _not_found(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        raise ApiError(404, "not found")

    async def _method_not_allowed(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        allow = route.allow.encode("latin-1")
        raise ApiError(405, f"method {ex.method} not allowed: use {route.allow}", headers=[(b"allow", allow)])

    async def _metrics(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        if not self.config.metrics_enabled:
            raise ApiError(404, "not found")
        scrapes = await self._scrape_engines()
        groups = []
        for scrape in scrapes:
            try:
                groups.append(relabel_engine_metrics(scrape))
            except ValueError as exc:
                self.metrics.engine_scrape_failures.inc()
                log.warning("engine metrics of %s are not Prometheus text: %s", scrape.model, exc)
        body = render_families(self.metrics, self.services.scheduler.metrics(), merge_families(groups))
        await ex.respond(200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body)

    async def _scrape_engines(self) -> list[EngineScrape]:
        """Each ready runner's /metrics, fetched concurrently within the scrape timeout."""
        rows = [row for row in self.services.scheduler.ps() if not row.loading]
        results: list[EngineScrape] = []

        async def scrape(row: RunnerRow, socket_path: Path) -> None:
            try:
                with trio.move_on_after(self.config.engine_scrape_timeout):
                    async with self.pools.get(socket_path).request(
                        b"GET", b"/metrics", [(b"host", b"localhost")], extra=True
                    ) as response:
                        text = await response.read()
                        if response.status == 200:
                            results.append(
                                EngineScrape(
                                    row.backend_name,
                                    row.model_name,
                                    str(row.mode),
                                    text.decode("utf-8", "replace"),
                                )
                            )
                            return
                self.metrics.engine_scrape_failures.inc()
            except Exception as exc:  # one broken runner must not break /metrics
                self.metrics.engine_scrape_failures.inc()
                log.warning("scraping metrics of %s failed: %s", row.model_name, exc)

        async with trio.open_nursery() as nursery:
            for row in rows:
                socket_path = getattr(row, "socket_path", None)
                if socket_path is not None:
                    nursery.start_soon(scrape, row, Path(socket_path))
        return results

    async def _logs(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        params = parse_query(query)
        try:
            follow = parse_go_bool(params["follow"][0]) if "follow" in params else False
            no_engines = parse_go_bool(params["no-engines"][0]) if "no-engines" in params else False
        except ValueError as exc:
            raise ApiError(400, f"invalid query parameter: {exc}") from None
        log_dir = self.config.log_dir
        if log_dir is None:
            raise ApiError(501, "logs are not available: the daemon runs without a log directory")
        service = log_dir / self.config.service_log_name
        if not service.is_file():
            raise ApiError(404, f"service log {service} not found")
        engines = tuple(sorted(log_dir.glob(self.config.engine_log_glob)))
        files = LogFiles(service, engines)
        content, offsets = await trio.to_thread.run_sync(
            lambda: read_log_files(files, engines=not no_engines)
        )
        headers: Headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if not follow:
            await ex.respond(200, headers, content)
            return
        await ex.start_response(200, [*headers, (b"cache-control", b"no-cache")])
        await ex.send(content)
        async with ex.cancel_on_disconnect(), aclosing(follow_logs(offsets)) as lines:
            async for data in lines:
                await ex.send(data)

    # -- /models ---------------------------------------------------------------------------------

    async def _models_list(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self._json(ex, await self.services.models.list_models(), extra)

    async def _models_create(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        request = await self._read_json(ex, what="request body")
        if not isinstance(request, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        reference = request.get("from")
        token = request.get("bearer-token")
        if not isinstance(reference, str) or not reference.strip():
            raise ApiError(400, "invalid request body: 'from' must name the model to pull")
        if token is not None and not isinstance(token, str):
            raise ApiError(400, "invalid request body: 'bearer-token' must be a string")
        await self._with_progress(
            ex,
            extra,
            ProgressMode.PULL,
            lambda progress: self.services.models.pull(
                reference, progress=progress, bearer_token=token or None
            ),
        )

    async def _model_push(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        request = await self._read_json(ex, allow_empty=True, what="request body")
        if not isinstance(request, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        token = request.get("bearer-token")
        if token is not None and not isinstance(token, str):
            raise ApiError(400, "invalid request body: 'bearer-token' must be a string")
        await self._with_progress(
            ex,
            extra,
            ProgressMode.PUSH,
            lambda progress: self.services.models.push(
                route.ref, progress=progress, bearer_token=token or None
            ),
        )

    async def _with_progress(
        self,
        ex: Exchange,
        extra: Headers,
        mode: ProgressMode,
        operation: Callable[[Callable[[ProgressEvent], Awaitable[None]]], Awaitable[object]],
    ) -> None:
        writer = _ProgressWriter(ex, extra)
        try:
            async with ex.cancel_on_disconnect():
                await operation(writer)
        except ClientDisconnected:
            raise
        except Exception as exc:
            if not writer.started:
                raise
            # The 200 head is gone: report the failure as DMR does, as a final error line.
            error = map_exception(exc)
            log.warning("%s failed after progress started: %s", mode, error.message)
            await writer(ProgressEvent(EventType.ERROR, f"Error: {error.message}", mode))
        if ex.client_gone:
            return
        if not writer.started:  # nothing was reported (e.g. a fake); still answer with success
            await writer(
                ProgressEvent.success(
                    mode,
                    "Model pulled successfully" if mode is ProgressMode.PULL else "Model pushed successfully",
                )
            )
        await writer.finish()

    async def _models_load(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        model_id = await self.services.models.load(ex.iter_body())
        log.info("loaded model %s from an archive", model_id)
        writer = _ProgressWriter(ex, extra)
        await writer(ProgressEvent.success(ProgressMode.PULL, "Model loaded successfully"))
        await writer.finish()

    async def _models_purge(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self.services.models.purge()
        await ex.respond(200, list(extra))

    async def _model_get(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        params = parse_query(query)
        if _bool_query(params, "remote"):
            model = await self.services.models.get_remote_model(route.ref)
        else:
            model = await self.services.models.get_model(route.ref)
        await self._json(ex, model, extra)

    async def _model_export(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        filename = json.dumps(route.ref + ".tar")  # Go's %q, for the common printable names
        headers: Headers = [
            (b"content-type", b"application/x-tar"),
            (b"content-disposition", f"attachment; filename={filename}".encode()),
            *extra,
        ]
        async with aclosing(self.services.models.export(route.ref)) as chunks:
            async for chunk in chunks:
                if not ex.response_started:
                    await ex.start_response(200, headers)
                await ex.send(chunk)
        if not ex.response_started:
            await ex.start_response(200, headers)
        await ex.end_response()

    async def _model_delete(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        force = _bool_query(parse_query(query), "force")
        actions = await self.services.models.delete(route.ref, force=force)
        await self._json(ex, actions, extra)

    async def _model_tag(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        params = parse_query(query)
        repo = params.get("repo", [""])[0]
        tag = params.get("tag", [""])[0]
        if not repo or not tag:
            raise ApiError(400, "missing repo or tag query parameter")
        target = f"{repo}:{tag}"
        await self.services.models.tag(route.ref, target)
        message = f"Model tagged successfully with {json.dumps(target)}"
        await self._json(ex, {"message": message, "target": target}, extra, status=201)

    async def _model_repackage(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        request = await self._read_json(ex, what="request body")
        if not isinstance(request, dict):
            raise ApiError(400, "invalid request body: expected a JSON object")
        target = request.get("target")
        if target is not None and not isinstance(target, str):
            raise ApiError(400, "invalid request body: 'target' must be a string")
        if not target:
            raise ApiError(400, "target is required")
        context_size = request.get("context_size")
        if context_size is None:
            raise ApiError(400, "context_size is required: it is the only setting repackage changes")
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 0:
            raise ApiError(400, "invalid request body: 'context_size' must be a non-negative integer")
        await self.services.models.repackage(route.ref, target, context_size=context_size)
        message = f"Model repackaged successfully as {json.dumps(target)}"
        await self._json(ex, {"message": message, "source": route.ref, "target": target}, extra, status=201)

    async def _model_unknown_action(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        raise ApiError(404, f"unknown action {json.dumps(route.action)}")

    # -- /engines admin --------------------------------------------------------------------------

    async def _engines_status(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self._json(ex, self.services.backends.statuses(), extra)

    async def _engines_ps(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        await self._json(ex, [render_ps_row(row) for row in self.services.scheduler.ps()], extra)

    async def _engines_df(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        usage = await trio.to_thread.run_sync(self.services.scheduler.df)
        await self._json(
            ex,
            {
                "models_disk_usage": usage.models_disk_usage,
                "default_backend_disk_usage": usage.default_backend_disk_usage,
            },
            extra,
        )

    async def _engines_unload(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        request = await self._read_json(ex)
        if not isinstance(request, dict):
            raise ApiError(400, "invalid request: expected a JSON object")
        unload_all = request.get("all", False)
        backend = request.get("backend") or None
        models = request.get("models") or []
        if not isinstance(unload_all, bool):
            raise ApiError(400, "invalid request: 'all' must be a boolean")
        if backend is not None and not isinstance(backend, str):
            raise ApiError(400, "invalid request: 'backend' must be a string")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ApiError(400, "invalid request: 'models' must be an array of strings")
        count = await self.services.scheduler.unload(all=unload_all, backend=backend, models=tuple(models))
        await self._json(ex, {"unloaded_runners": count}, extra)

    async def _engines_configure(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        self._check_backend(route.backend)
        body = await self._read_json(ex)
        request = ConfigureRequest.from_json(body, backend=route.backend)
        self._check_backend(request.backend)
        await self.services.scheduler.configure(request, preload=True)
        await ex.respond(202, list(extra))

    async def _engines_configurations(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        model = parse_query(query).get("model", [""])[0] or None
        rows = self.services.scheduler.configs(model)
        await self._json(ex, [_render_config_row(row) for row in rows], extra)

    async def _engines_requests(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        """DMR's `GET /engines/requests`: the recorded requests as JSON, or followed as SSE."""
        recorder = self.proxy.recorder
        params = parse_query(query)
        model = params.get("model", [""])[0]
        model_id = await self._resolve_model_id(model) if model else None
        if ex.header(b"accept") != b"text/event-stream":
            groups = [] if recorder is None else recorder.records(model_id)
            answer = [self._records_object(key, records) for key, records in groups]
            await self._json(ex, answer, extra)
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *extra]
        await ex.start_response(200, headers)
        if recorder is None:
            await ex.send(_CONNECTED_EVENT)
            await ex.end_response()
            return
        async with ex.cancel_on_disconnect():
            with recorder.follow() as finished:
                if params.get("include_existing", [""])[0] == "true":
                    for key, records in recorder.records(model_id):
                        for record in records:
                            await ex.send(
                                _sse_event("existing_request", [self._records_object(key, [record])])
                            )
                await ex.send(_CONNECTED_EVENT)
                async for record in finished:
                    if model and record.model != model:
                        continue
                    await ex.send(_sse_event("new_request", [self._records_object(record.model, [record])]))
        if not ex.client_gone:
            await ex.end_response()

    async def _resolve_model_id(self, reference: str) -> str:
        try:
            found = await self.services.models.get_model(reference)
        except Exception:
            return reference  # DMR's ResolveID: an unknown reference stays as given
        model_id = found.get("id") if isinstance(found, dict) else None
        return model_id if isinstance(model_id, str) else reference

    def _records_object(self, model: str, records: list[Record]) -> dict[str, Any]:
        config: dict[str, Any] = {}
        try:
            rows = self.services.scheduler.configs(records[0].model_id) if records else []
        except Exception:  # the model was deleted since: its records stay, its settings are gone
            rows = []
        if rows:
            config = _render_config_row(rows[0])["Config"]
        return {
            "count": len(records),
            "model": model,
            "config": config,
            "records": [record_object(record) for record in records],
        }

    async def _backend_request(self, ex: Exchange) -> str:
        request = await self._read_json(ex)
        if not isinstance(request, dict):
            raise ApiError(400, "invalid request: expected a JSON object")
        backend = request.get("backend")
        if not isinstance(backend, str) or not backend:
            raise ApiError(400, "invalid request: backend is required")
        version = request.get("version")
        if version not in (None, "", "latest") and not isinstance(version, str):
            raise ApiError(400, "invalid request: 'version' must be a string")
        if version not in (None, "", "latest"):
            raise ApiError(
                400,
                f"invalid request: installing version {version!r} is not supported; "
                "this daemon installs its one pinned engine version",
            )
        self._check_backend(backend)
        return backend

    async def _engines_install(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        name = await self._backend_request(ex)
        try:
            async with ex.cancel_on_disconnect():
                await self.services.backends.get(name).install()
        except Exception as exc:
            error = map_exception(exc)
            raise ApiError(error.status, f"backend installation failed: {error.message}") from exc
        if not ex.client_gone:
            await ex.respond(200, list(extra))

    async def _engines_uninstall(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        name = await self._backend_request(ex)
        await self.services.scheduler.unload(backend=name)
        await self.services.backends.get(name).uninstall()
        await ex.respond(200, list(extra))

    # -- OpenAI models ---------------------------------------------------------------------------

    async def _openai_models(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        self._check_backend(route.backend)
        await self._json(ex, openai_model_list(await self.services.models.list_models()), extra)

    async def _openai_model(self, ex: Exchange, route: Route, query: str, extra: Headers) -> None:
        self._check_backend(route.backend)
        model = await self.services.models.get_model(route.ref)
        await self._json(ex, openai_model_object(model), extra)
