"""Routing: request line in, a `Route` value out. Pure; no I/O.

Theory of operation. Docker Model Runner serves everything from one Go `ServeMux` tree:

* the raw target is split into path and query; the path is percent-decoded, and when it contains
  `//` it is cleaned like Go's `path.Clean` (DMR's `NormalizedServeMux`). We clean `.` and `..`
  segments too instead of answering Go's 301 redirect to the clean path;
* Docker Desktop exposes the same routes under `/exp/vDD4.40` on the Docker socket, so that prefix
  is stripped;
* `/v1/...`, `/rerank` and `/score` are internal aliases of `/engines/v1/...`, `/engines/rerank` and
  `/engines/score`;
* the `/models` and `/engines` sub-trees end in a catch-all, so an unknown sub-path *or a wrong
  method* there answers 404 `not found`;
* the compatibility layers live under `/api` (Ollama) and `/anthropic` (Anthropic Messages). Their
  sub-routers are Go's plain method+pattern muxes, so a known path with the wrong method answers
  405 (with `Allow`) and an unknown path 404, each in the layer's own error format;
* OpenAI's Responses API answers under `/responses`, `/v1/responses`, `/engines/responses`,
  `/engines/v1/responses` and `/engines/{backend}/v1/responses` (so "responses" is never a
  backend name), with OpenAI-style errors.

`route()` returns a `Route` naming the handler (`RouteKind`) and the values taken from the path
(backend, model reference, action, inference mode, upstream path). Whether a backend name is known
is not decided here: the router has no state.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from modelrunner.engines import Mode

__all__ = [
    "EXPERIMENTAL_PREFIX",
    "ErrorStyle",
    "Route",
    "RouteKind",
    "clean_path",
    "parse_query",
    "route",
    "split_target",
]

EXPERIMENTAL_PREFIX = "/exp/vDD4.40"

# OpenAI-style inference paths below `/v1/` and the mode each runs in.
_V1_INFERENCE: dict[str, Mode] = {
    "chat/completions": Mode.COMPLETION,
    "completions": Mode.COMPLETION,
    "embeddings": Mode.EMBEDDING,
    # llama-server's native Anthropic endpoints; DMR routes them in completion mode too.
    "messages": Mode.COMPLETION,
    "messages/count_tokens": Mode.COMPLETION,
}

# Paths that are internal aliases of the same path under /engines (and the trees below two of them).
_ROOT_ALIASES = ("/v1", "/rerank", "/score", "/responses")
_ROOT_ALIAS_TREES = ("/v1/", "/responses/")

# Non-v1 inference paths directly under /engines[/{backend}].
_RERANK_PATHS: dict[str, Mode] = {"rerank": Mode.RERANKING, "score": Mode.RERANKING}


class RouteKind(enum.Enum):
    ROOT = "root"
    VERSION = "version"
    LOGS = "logs"
    METRICS = "metrics"

    MODELS_LIST = "models.list"
    MODELS_CREATE = "models.create"
    MODELS_LOAD = "models.load"
    MODELS_PURGE = "models.purge"
    MODEL_GET = "model.get"
    MODEL_EXPORT = "model.export"
    MODEL_DELETE = "model.delete"
    MODEL_TAG = "model.tag"
    MODEL_PUSH = "model.push"
    MODEL_REPACKAGE = "model.repackage"
    MODEL_UNKNOWN_ACTION = "model.unknown_action"

    ENGINES_STATUS = "engines.status"
    ENGINES_PS = "engines.ps"
    ENGINES_DF = "engines.df"
    ENGINES_UNLOAD = "engines.unload"
    ENGINES_CONFIGURE = "engines.configure"
    ENGINES_CONFIGURATIONS = "engines.configurations"
    ENGINES_INSTALL = "engines.install_backend"
    ENGINES_UNINSTALL = "engines.uninstall_backend"
    ENGINES_REQUESTS = "engines.requests"

    OPENAI_MODELS = "openai.models"
    OPENAI_MODEL = "openai.model"
    INFERENCE = "inference"

    OLLAMA_VERSION = "ollama.version"
    OLLAMA_TAGS = "ollama.tags"
    OLLAMA_PS = "ollama.ps"
    OLLAMA_SHOW = "ollama.show"
    OLLAMA_CHAT = "ollama.chat"
    OLLAMA_GENERATE = "ollama.generate"
    OLLAMA_PULL = "ollama.pull"
    OLLAMA_DELETE = "ollama.delete"

    ANTHROPIC_MESSAGES = "anthropic.messages"

    RESPONSES_CREATE = "responses.create"
    RESPONSES_GET = "responses.get"
    RESPONSES_INPUT_ITEMS = "responses.input_items"
    RESPONSES_DELETE = "responses.delete"

    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"


class ErrorStyle(enum.Enum):
    """How errors are written for a route: DMR's plain text, or the JSON error object of the API the
    route imitates (OpenAI, Ollama, Anthropic)."""

    DMR = "dmr"
    OPENAI = "openai"
    OLLAMA = "ollama"
    ANTHROPIC = "anthropic"


# Admin routes under /engines (these names can never be backends): method -> kind.
_ENGINES_ADMIN: dict[str, dict[str, RouteKind]] = {
    "status": {"GET": RouteKind.ENGINES_STATUS},
    "ps": {"GET": RouteKind.ENGINES_PS},
    "df": {"GET": RouteKind.ENGINES_DF},
    "unload": {"POST": RouteKind.ENGINES_UNLOAD},
    "_configure": {"POST": RouteKind.ENGINES_CONFIGURE, "GET": RouteKind.ENGINES_CONFIGURATIONS},
    "install-backend": {"POST": RouteKind.ENGINES_INSTALL},
    "uninstall-backend": {"POST": RouteKind.ENGINES_UNINSTALL},
    "requests": {"GET": RouteKind.ENGINES_REQUESTS},
}

# Ollama's routes below `/api/` (DMR `pkg/ollama/http_handler.go`): name -> (method, kind). Go's
# mux lets a GET pattern answer HEAD too.
_OLLAMA: dict[str, tuple[str, RouteKind]] = {
    "version": ("GET", RouteKind.OLLAMA_VERSION),
    "tags": ("GET", RouteKind.OLLAMA_TAGS),
    "ps": ("GET", RouteKind.OLLAMA_PS),
    "show": ("POST", RouteKind.OLLAMA_SHOW),
    "chat": ("POST", RouteKind.OLLAMA_CHAT),
    "generate": ("POST", RouteKind.OLLAMA_GENERATE),
    "pull": ("POST", RouteKind.OLLAMA_PULL),
    "delete": ("DELETE", RouteKind.OLLAMA_DELETE),
}

# Anthropic's routes below `/anthropic/v1/` and the engine path each is forwarded to.
_ANTHROPIC: dict[str, str] = {
    "messages": "/v1/messages",
    "messages/count_tokens": "/v1/messages/count_tokens",
}


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    path: str
    """The normalized path the route was matched on (after prefix stripping and aliases)."""
    cors: bool = False
    """Whether DMR's CORS middleware wraps this route (models, engines and their aliases)."""
    style: ErrorStyle = ErrorStyle.DMR
    backend: str | None = None
    """The `/engines/{backend}` segment, None when the path has none (default backend)."""
    ref: str = ""
    """Model reference from `/models/{ref...}` or `/v1/models/{name...}`."""
    action: str = ""
    """The unknown action of `MODEL_UNKNOWN_ACTION`."""
    mode: Mode | None = None
    upstream_path: str = ""
    """For INFERENCE: the path on the engine, trimmed to start at `/v1/`, `/rerank` or `/score`;
    for ANTHROPIC_MESSAGES: `/v1/messages` or `/v1/messages/count_tokens`."""
    allow: str = ""
    """For METHOD_NOT_ALLOWED: the method the path answers (the `Allow` header)."""


# Both functions below are pure and clients repeat the same few targets (an agent's chat route), so
# they are memoized: a hit is one dictionary lookup instead of the decoding, cleaning and matching
# (about 5% of the daemon's CPU per proxied request). The caches are bounded, so clients that send
# ever-new targets cost memory only up to the bound.
_CACHED_TARGETS = 1024


@functools.lru_cache(maxsize=_CACHED_TARGETS)
def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (normalized path, raw query string).

    The path is percent-decoded, cleaned and stripped of DMR's `/exp/vDD4.40` prefix.
    """
    raw_path, _, query = target.partition("?")
    # An absolute-form target (proxies) carries scheme and authority; only the path routes.
    if raw_path.startswith(("http://", "https://")):
        after_scheme = raw_path.split("://", 1)[1]
        slash = after_scheme.find("/")
        raw_path = after_scheme[slash:] if slash >= 0 else "/"
    path = unquote(raw_path, errors="replace")
    path = clean_path(path)
    if path == EXPERIMENTAL_PREFIX or path.startswith(EXPERIMENTAL_PREFIX + "/"):
        path = path[len(EXPERIMENTAL_PREFIX) :] or "/"
    return path, query


def clean_path(path: str) -> str:
    """Go's `path.Clean`, always applied: one slash between segments, `.`/`..` resolved.

    A trailing slash is dropped (except for `/`), as Clean does.
    """
    if not path.startswith("/"):
        path = "/" + path
    if "//" not in path and "/." not in path and not (len(path) > 1 and path.endswith("/")):
        return path  # fast path: already clean
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    return "/" + "/".join(parts)


def parse_query(query: str) -> dict[str, list[str]]:
    """Query string to name -> values; blank values kept (`?force` means force=``)."""
    if not query:
        return {}
    return parse_qs(query, keep_blank_values=True)


@functools.lru_cache(maxsize=_CACHED_TARGETS)
def route(method: str, path: str) -> Route:
    """Match a normalized path (from `split_target`) and method to a route.

    Never raises: anything unknown is `RouteKind.NOT_FOUND` with the error style of its sub-tree.
    """
    # Root aliases (DMR rewrites these internally, not by redirect).
    if path.startswith(_ROOT_ALIASES) and (path in _ROOT_ALIASES or path.startswith(_ROOT_ALIAS_TREES)):
        path = "/engines" + path

    if path == "/":
        return Route(RouteKind.ROOT, path)
    if path == "/version":
        return Route(RouteKind.VERSION, path)
    if path == "/metrics":
        return Route(RouteKind.METRICS, path)
    if path == "/logs":
        if method in ("GET", "HEAD"):
            return Route(RouteKind.LOGS, path)
        return Route(RouteKind.NOT_FOUND, path)
    if path == "/models" or path.startswith("/models/"):
        return _route_models(method, path)
    if path == "/engines" or path.startswith("/engines/"):
        return _route_engines(method, path)
    if path.startswith("/api/"):
        return _route_ollama(method, path)
    if path.startswith("/anthropic/"):
        return _route_anthropic(method, path)
    return Route(RouteKind.NOT_FOUND, path)


def _route_ollama(method: str, path: str) -> Route:
    entry = _OLLAMA.get(path[len("/api/") :])
    if entry is None:
        return Route(RouteKind.NOT_FOUND, path, cors=True, style=ErrorStyle.OLLAMA)
    allowed, kind = entry
    if method == allowed or (method == "HEAD" and allowed == "GET"):
        return Route(kind, path, cors=True, style=ErrorStyle.OLLAMA)
    allow = "GET, HEAD" if allowed == "GET" else allowed
    return Route(RouteKind.METHOD_NOT_ALLOWED, path, cors=True, style=ErrorStyle.OLLAMA, allow=allow)


def _route_anthropic(method: str, path: str) -> Route:
    upstream = _ANTHROPIC.get(path[len("/anthropic/v1/") :]) if path.startswith("/anthropic/v1/") else None
    if upstream is None:
        return Route(RouteKind.NOT_FOUND, path, cors=True, style=ErrorStyle.ANTHROPIC)
    if method != "POST":
        return Route(RouteKind.METHOD_NOT_ALLOWED, path, cors=True, style=ErrorStyle.ANTHROPIC, allow="POST")
    return Route(
        RouteKind.ANTHROPIC_MESSAGES,
        path,
        cors=True,
        style=ErrorStyle.ANTHROPIC,
        mode=Mode.COMPLETION,
        upstream_path=upstream,
    )


def _route_models(method: str, path: str) -> Route:
    def models(kind: RouteKind, ref: str = "", action: str = "") -> Route:
        return Route(kind, path, cors=True, ref=ref, action=action)

    rest = path[len("/models") :].lstrip("/")
    if not rest:
        return models(RouteKind.MODELS_LIST if method == "GET" else RouteKind.NOT_FOUND)
    if method == "POST" and rest == "create":
        return models(RouteKind.MODELS_CREATE)
    if method == "POST" and rest == "load":
        return models(RouteKind.MODELS_LOAD)
    if method == "DELETE" and rest == "purge":
        return models(RouteKind.MODELS_PURGE)
    if method == "GET":
        head, _, last = rest.rpartition("/")
        if head and last == "export":
            return models(RouteKind.MODEL_EXPORT, ref=head)
        return models(RouteKind.MODEL_GET, ref=rest)
    if method == "DELETE":
        return models(RouteKind.MODEL_DELETE, ref=rest)
    if method == "POST":
        # The action is the last segment (Go's path.Split), the reference everything before it.
        head, _, action = rest.rpartition("/")
        if not head:
            return models(RouteKind.NOT_FOUND)
        kinds = {
            "tag": RouteKind.MODEL_TAG,
            "push": RouteKind.MODEL_PUSH,
            "repackage": RouteKind.MODEL_REPACKAGE,
        }
        return models(kinds.get(action, RouteKind.MODEL_UNKNOWN_ACTION), ref=head, action=action)
    return models(RouteKind.NOT_FOUND)


def _route_engines(method: str, path: str) -> Route:
    segments = path.split("/")[2:]  # drop "", "engines"
    if not segments:
        return Route(RouteKind.NOT_FOUND, path, cors=True)
    first = segments[0]
    if first == "responses":
        return _route_responses(method, path, segments[1:], backend=None)
    admin = _ENGINES_ADMIN.get(first)
    if admin is not None:
        if len(segments) == 1 and method in admin:
            return Route(admin[method], path, cors=True)
        return Route(RouteKind.NOT_FOUND, path, cors=True)

    backend: str | None = None
    if first not in ("v1", "rerank", "score"):
        backend = first
        segments = segments[1:]
        if segments == ["_configure"]:
            if method == "POST":
                return Route(RouteKind.ENGINES_CONFIGURE, path, cors=True, backend=backend)
            return Route(RouteKind.NOT_FOUND, path, cors=True, backend=backend)
    if not segments:
        return Route(RouteKind.NOT_FOUND, path, cors=True, backend=backend)

    openai = Route(RouteKind.NOT_FOUND, path, cors=True, style=ErrorStyle.OPENAI, backend=backend)
    if segments[0] in _RERANK_PATHS and len(segments) == 1:
        if method != "POST":
            return openai
        return Route(
            RouteKind.INFERENCE,
            path,
            cors=True,
            style=ErrorStyle.OPENAI,
            backend=backend,
            mode=_RERANK_PATHS[segments[0]],
            upstream_path="/" + segments[0],
        )
    if segments[0] != "v1":
        return Route(RouteKind.NOT_FOUND, path, cors=True, backend=backend)

    if len(segments) > 1 and segments[1] == "responses":
        return _route_responses(method, path, segments[2:], backend=backend)
    rest = "/".join(segments[1:])
    if rest == "models" and method == "GET":
        return Route(RouteKind.OPENAI_MODELS, path, cors=True, style=ErrorStyle.OPENAI, backend=backend)
    if rest.startswith("models/") and method == "GET" and len(rest) > len("models/"):
        return Route(
            RouteKind.OPENAI_MODEL,
            path,
            cors=True,
            style=ErrorStyle.OPENAI,
            backend=backend,
            ref=rest[len("models/") :],
        )
    mode = _V1_INFERENCE.get(rest)
    if mode is not None and method == "POST":
        return Route(
            RouteKind.INFERENCE,
            path,
            cors=True,
            style=ErrorStyle.OPENAI,
            backend=backend,
            mode=mode,
            upstream_path="/v1/" + rest,
        )
    return openai


def _route_responses(method: str, path: str, rest: list[str], backend: str | None) -> Route:
    """`{prefix}` (POST), `{prefix}/{id}` (GET, DELETE), `{prefix}/{id}/input_items` (GET)."""

    def responses(kind: RouteKind, ref: str = "", allow: str = "") -> Route:
        return Route(
            kind,
            path,
            cors=True,
            style=ErrorStyle.OPENAI,
            backend=backend,
            ref=ref,
            mode=Mode.COMPLETION,
            upstream_path="/v1/chat/completions",
            allow=allow,
        )

    if not rest:
        if method == "POST":
            return responses(RouteKind.RESPONSES_CREATE)
        return responses(RouteKind.METHOD_NOT_ALLOWED, allow="POST")
    if len(rest) == 1:
        if method in ("GET", "HEAD"):
            return responses(RouteKind.RESPONSES_GET, ref=rest[0])
        if method == "DELETE":
            return responses(RouteKind.RESPONSES_DELETE, ref=rest[0])
        return responses(RouteKind.METHOD_NOT_ALLOWED, allow="GET, HEAD, DELETE")
    if len(rest) == 2 and rest[1] == "input_items":
        if method in ("GET", "HEAD"):
            return responses(RouteKind.RESPONSES_INPUT_ITEMS, ref=rest[0])
        return responses(RouteKind.METHOD_NOT_ALLOWED, allow="GET, HEAD")
    return responses(RouteKind.NOT_FOUND)
