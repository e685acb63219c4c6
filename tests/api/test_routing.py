"""Routing, path normalization and prefix stripping (pure)."""

from __future__ import annotations

import pytest
from modelrunner.api._routing import ErrorStyle, RouteKind, clean_path, parse_query, route, split_target
from modelrunner.engines import Mode


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/models", "/models", ""),
        ("/models?x=1", "/models", "x=1"),
        ("//models//ai/smollm2", "/models/ai/smollm2", ""),
        ("/exp/vDD4.40/models", "/models", ""),
        ("/exp/vDD4.40//engines//v1/models?a", "/engines/v1/models", "a"),
        ("/exp/vDD4.40", "/", ""),
        ("/exp/vDD4.400/models", "/exp/vDD4.400/models", ""),  # only the exact segment is a prefix
        ("/models/ai%2Fsmollm2", "/models/ai/smollm2", ""),
        ("/engines/./status", "/engines/status", ""),
        ("/models/../engines/status", "/engines/status", ""),
        ("/engines/status/", "/engines/status", ""),
        ("http://localhost/engines/status", "/engines/status", ""),
    ],
)
def test_split_target_normalizes(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


def test_clean_path_never_escapes_root() -> None:
    assert clean_path("/../../etc/passwd") == "/etc/passwd"
    assert clean_path("") == "/"


def test_parse_query_keeps_blank_values() -> None:
    assert parse_query("force") == {"force": [""]}
    assert parse_query("repo=a%2Fb&tag=v1") == {"repo": ["a/b"], "tag": ["v1"]}
    assert parse_query("") == {}


@pytest.mark.parametrize(
    ("method", "path", "kind", "ref"),
    [
        ("GET", "/models", RouteKind.MODELS_LIST, ""),
        ("POST", "/models/create", RouteKind.MODELS_CREATE, ""),
        ("POST", "/models/load", RouteKind.MODELS_LOAD, ""),
        ("DELETE", "/models/purge", RouteKind.MODELS_PURGE, ""),
        ("GET", "/models/ai/smollm2:latest", RouteKind.MODEL_GET, "ai/smollm2:latest"),
        (
            "GET",
            "/models/huggingface.co/org/repo:Q4_K_M",
            RouteKind.MODEL_GET,
            "huggingface.co/org/repo:Q4_K_M",
        ),
        ("GET", "/models/ai/smollm2/export", RouteKind.MODEL_EXPORT, "ai/smollm2"),
        ("DELETE", "/models/ai/smollm2", RouteKind.MODEL_DELETE, "ai/smollm2"),
        ("POST", "/models/ai/smollm2/tag", RouteKind.MODEL_TAG, "ai/smollm2"),
        ("POST", "/models/ai/smollm2/push", RouteKind.MODEL_PUSH, "ai/smollm2"),
        ("POST", "/models/ai/smollm2/repackage", RouteKind.MODEL_REPACKAGE, "ai/smollm2"),
        ("POST", "/models/ai/smollm2/frobnicate", RouteKind.MODEL_UNKNOWN_ACTION, "ai/smollm2"),
        ("PUT", "/models", RouteKind.NOT_FOUND, ""),
        ("POST", "/models", RouteKind.NOT_FOUND, ""),
        ("POST", "/models/tag", RouteKind.NOT_FOUND, ""),
        ("GET", "/engines/status", RouteKind.ENGINES_STATUS, ""),
        ("GET", "/engines/ps", RouteKind.ENGINES_PS, ""),
        ("GET", "/engines/df", RouteKind.ENGINES_DF, ""),
        ("POST", "/engines/unload", RouteKind.ENGINES_UNLOAD, ""),
        ("POST", "/engines/_configure", RouteKind.ENGINES_CONFIGURE, ""),
        ("GET", "/engines/_configure", RouteKind.ENGINES_CONFIGURATIONS, ""),
        ("POST", "/engines/install-backend", RouteKind.ENGINES_INSTALL, ""),
        ("POST", "/engines/uninstall-backend", RouteKind.ENGINES_UNINSTALL, ""),
        ("POST", "/engines/status", RouteKind.NOT_FOUND, ""),
        ("GET", "/engines/unload", RouteKind.NOT_FOUND, ""),
        ("GET", "/engines", RouteKind.NOT_FOUND, ""),
        ("GET", "/", RouteKind.ROOT, ""),
        ("DELETE", "/", RouteKind.ROOT, ""),
        ("GET", "/version", RouteKind.VERSION, ""),
        ("GET", "/logs", RouteKind.LOGS, ""),
        ("POST", "/logs", RouteKind.NOT_FOUND, ""),
        ("GET", "/metrics", RouteKind.METRICS, ""),
        ("GET", "/nothing/here", RouteKind.NOT_FOUND, ""),
    ],
)
def test_route_table(method: str, path: str, kind: RouteKind, ref: str) -> None:
    matched = route(method, path)
    assert matched.kind is kind
    assert matched.ref == ref


def test_unknown_model_action_keeps_its_name() -> None:
    assert route("POST", "/models/ai/x/frobnicate").action == "frobnicate"


@pytest.mark.parametrize(
    ("path", "backend", "mode", "upstream"),
    [
        ("/engines/v1/chat/completions", None, Mode.COMPLETION, "/v1/chat/completions"),
        ("/engines/llama.cpp/v1/chat/completions", "llama.cpp", Mode.COMPLETION, "/v1/chat/completions"),
        ("/engines/llama.cpp/v1/completions", "llama.cpp", Mode.COMPLETION, "/v1/completions"),
        ("/engines/v1/embeddings", None, Mode.EMBEDDING, "/v1/embeddings"),
        ("/engines/vllm/v1/embeddings", "vllm", Mode.EMBEDDING, "/v1/embeddings"),
        ("/engines/rerank", None, Mode.RERANKING, "/rerank"),
        ("/engines/llama.cpp/score", "llama.cpp", Mode.RERANKING, "/score"),
        ("/v1/chat/completions", None, Mode.COMPLETION, "/v1/chat/completions"),
        ("/v1/embeddings", None, Mode.EMBEDDING, "/v1/embeddings"),
        ("/rerank", None, Mode.RERANKING, "/rerank"),
        ("/score", None, Mode.RERANKING, "/score"),
        ("/engines/v1/messages", None, Mode.COMPLETION, "/v1/messages"),
    ],
)
def test_inference_routes(path: str, backend: str | None, mode: Mode, upstream: str) -> None:
    matched = route("POST", path)
    assert matched.kind is RouteKind.INFERENCE
    assert matched.backend == backend
    assert matched.mode is mode
    assert matched.upstream_path == upstream
    assert matched.style is ErrorStyle.OPENAI
    assert matched.cors


def test_inference_routes_need_post() -> None:
    matched = route("GET", "/v1/chat/completions")
    assert matched.kind is RouteKind.NOT_FOUND
    assert matched.style is ErrorStyle.OPENAI


@pytest.mark.parametrize(
    ("path", "kind", "backend", "ref"),
    [
        ("/engines/v1/models", RouteKind.OPENAI_MODELS, None, ""),
        ("/v1/models", RouteKind.OPENAI_MODELS, None, ""),
        ("/engines/llama.cpp/v1/models", RouteKind.OPENAI_MODELS, "llama.cpp", ""),
        ("/engines/v1/models/ai/smollm2:latest", RouteKind.OPENAI_MODEL, None, "ai/smollm2:latest"),
        ("/v1/models/docker.io/ai/x", RouteKind.OPENAI_MODEL, None, "docker.io/ai/x"),
        ("/engines/foo/v1/models/x", RouteKind.OPENAI_MODEL, "foo", "x"),
    ],
)
def test_openai_model_routes(path: str, kind: RouteKind, backend: str | None, ref: str) -> None:
    matched = route("GET", path)
    assert (matched.kind, matched.backend, matched.ref) == (kind, backend, ref)


def test_backend_configure_route() -> None:
    matched = route("POST", "/engines/llama.cpp/_configure")
    assert (matched.kind, matched.backend) == (RouteKind.ENGINES_CONFIGURE, "llama.cpp")


def test_cors_applies_to_models_and_engines_only() -> None:
    assert route("GET", "/models").cors
    assert route("GET", "/engines/status").cors
    assert route("POST", "/v1/chat/completions").cors
    assert not route("GET", "/").cors
    assert not route("GET", "/version").cors
    assert not route("GET", "/metrics").cors
    assert not route("GET", "/logs").cors


def test_error_style_by_subtree() -> None:
    assert route("GET", "/models/x").style is ErrorStyle.DMR
    assert route("GET", "/engines/status").style is ErrorStyle.DMR
    assert route("GET", "/v1/models").style is ErrorStyle.OPENAI
    assert route("POST", "/v1/unknown").style is ErrorStyle.OPENAI


@pytest.mark.parametrize(
    ("method", "path", "kind", "backend", "ref"),
    [
        ("POST", "/responses", RouteKind.RESPONSES_CREATE, None, ""),
        ("POST", "/v1/responses", RouteKind.RESPONSES_CREATE, None, ""),
        ("POST", "/engines/responses", RouteKind.RESPONSES_CREATE, None, ""),
        ("POST", "/engines/v1/responses", RouteKind.RESPONSES_CREATE, None, ""),
        ("POST", "/engines/llama.cpp/v1/responses", RouteKind.RESPONSES_CREATE, "llama.cpp", ""),
        ("GET", "/v1/responses/resp_1", RouteKind.RESPONSES_GET, None, "resp_1"),
        ("HEAD", "/responses/resp_1", RouteKind.RESPONSES_GET, None, "resp_1"),
        ("DELETE", "/engines/v1/responses/resp_1", RouteKind.RESPONSES_DELETE, None, "resp_1"),
        (
            "GET",
            "/engines/vllm/v1/responses/resp_1/input_items",
            RouteKind.RESPONSES_INPUT_ITEMS,
            "vllm",
            "resp_1",
        ),
        ("GET", "/v1/responses", RouteKind.METHOD_NOT_ALLOWED, None, ""),
        ("POST", "/v1/responses/resp_1", RouteKind.METHOD_NOT_ALLOWED, None, ""),
        ("DELETE", "/v1/responses/resp_1/input_items", RouteKind.METHOD_NOT_ALLOWED, None, ""),
        ("GET", "/v1/responses/resp_1/other", RouteKind.NOT_FOUND, None, ""),
        ("POST", "/engines/llama.cpp/responses", RouteKind.NOT_FOUND, "llama.cpp", ""),
    ],
)
def test_responses_routes(method: str, path: str, kind: RouteKind, backend: str | None, ref: str) -> None:
    matched = route(method, path)
    assert (matched.kind, matched.backend, matched.ref) == (kind, backend, ref)
    if kind is not RouteKind.NOT_FOUND or path.startswith("/v1/"):
        assert matched.style is ErrorStyle.OPENAI
    if kind is RouteKind.RESPONSES_CREATE:
        assert matched.mode is Mode.COMPLETION and matched.cors


def test_responses_wrong_method_names_the_allowed_ones() -> None:
    assert route("PUT", "/v1/responses").allow == "POST"
    assert route("PATCH", "/v1/responses/resp_1").allow == "GET, HEAD, DELETE"
    assert route("POST", "/v1/responses/resp_1/input_items").allow == "GET, HEAD"


def test_memoized_routing_stays_correct_and_bounded() -> None:
    first = route("POST", "/v1/chat/completions")
    for index in range(3000):  # more distinct targets than the caches keep
        assert route("GET", f"/models/ai/m{index}").ref == f"ai/m{index}"
        assert split_target(f"/models//ai/m{index}?x={index}") == (f"/models/ai/m{index}", f"x={index}")
    assert route("POST", "/v1/chat/completions") == first
    assert route("GET", "/v1/chat/completions").kind is RouteKind.NOT_FOUND  # the method is part of the key
    assert route.cache_info().currsize <= route.cache_info().maxsize
    assert split_target.cache_info().currsize <= split_target.cache_info().maxsize
