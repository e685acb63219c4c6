"""Every DMR route over fakes of the scheduler, backends and store: shapes field by field, status
codes, content types, CORS, prefix stripping, the Unix socket, limits and bad input."""

from __future__ import annotations

import html
import json

import httpx
import pytest
import trio
from modelrunner.distribution.errors import RegistryUnauthorized, RemoteNotFound
from modelrunner.engines import Mode
from modelrunner.scheduler import ModelConfig, ModelTooLarge, QueueFull

from tests.api.conftest import MODEL_ID, OTHER_ID, FakeRow, Served, model_object, now

TEXT = "text/plain; charset=utf-8"

# -- misc ------------------------------------------------------------------------------------------


async def test_root_banner_and_version(served: Served) -> None:
    response = await served.client.get("/")
    assert (response.status_code, response.text) == (200, "Docker Model Runner is running")
    assert response.headers["content-type"] == TEXT
    response = await served.client.get("/version")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"version": "test-1.0"}


async def test_unknown_routes_are_404_text(served: Served) -> None:
    for method, path in [
        ("GET", "/nope"),
        ("PUT", "/models"),
        ("GET", "/engines/bogus/thing"),
        ("DELETE", "/engines/status"),
        ("POST", "/models/x"),
    ]:
        response = await served.client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.text == "not found\n"
        assert response.headers["content-type"] == TEXT


async def test_unknown_v1_route_is_openai_404(served: Served) -> None:
    response = await served.client.post("/v1/nope", json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


async def test_prefix_and_double_slashes(served: Served) -> None:
    for path in [
        "/exp/vDD4.40/models",
        "//models",
        "/exp/vDD4.40//models/",
        "/exp/vDD4.40/engines/../models",
    ]:
        # Sent verbatim: an HTTP client would read "//models" as a host name.
        url = httpx.URL(served.server.base_url).copy_with(raw_path=path.encode())
        response = await served.client.get(url)
        assert response.status_code == 200, path
        assert response.json() == [model_object()]


async def test_unix_socket_access(served: Served) -> None:
    transport = httpx.AsyncHTTPTransport(uds=str(served.unix_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.get("/engines/status")
        assert response.status_code == 200
        response = await client.get("/exp/vDD4.40/models/ai/smollm2")
        assert response.json()["id"] == MODEL_ID
    mode = served.unix_path.stat().st_mode & 0o777
    assert mode == 0o660


# -- /models -----------------------------------------------------------------------------------


async def test_list_models(served: Served) -> None:
    response = await served.client.get("/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content.endswith(b"\n")
    [model] = response.json()
    assert list(model) == ["id", "tags", "created", "config"]
    assert model == model_object()


async def test_list_models_empty_is_array(served: Served) -> None:
    served.fakes.models.models.clear()
    response = await served.client.get("/models")
    assert response.content == b"[]\n"


async def test_get_model_and_not_found(served: Served) -> None:
    response = await served.client.get("/models/ai/smollm2")
    assert response.json() == model_object()
    response = await served.client.get("/models/ai/unknown:v2")
    assert response.status_code == 404
    assert response.headers["content-type"] == TEXT
    assert response.text == "model 'ai/unknown:v2' not found\n"


@pytest.mark.parametrize(
    ("query", "remote"),
    [
        ("?remote=true", True),
        ("?remote=1", True),
        ("?remote", True),
        ("?remote=false", False),
        ("?remote=junk", False),
        ("", False),
    ],
)
async def test_get_model_remote_flag(served: Served, query: str, remote: bool) -> None:
    response = await served.client.get("/models/ai/smollm2" + query)
    assert response.status_code == 200
    assert ("remote" in "".join(str(c[0]) for c in served.fakes.models.calls)) is remote
    if remote:
        assert "tags" not in response.json()


async def test_get_remote_not_found(served: Served) -> None:
    response = await served.client.get("/models/ai/missing?remote=true")
    assert response.status_code == 404


async def test_delete_model_actions(served: Served) -> None:
    response = await served.client.delete("/models/ai/smollm2")
    assert response.status_code == 200
    assert response.json() == [{"Untagged": "docker.io/ai/smollm2:latest"}, {"Deleted": MODEL_ID}]
    assert served.fakes.models.calls[-1] == ("delete", "ai/smollm2", False)


async def test_delete_force_variants_and_conflict(served: Served) -> None:
    served.fakes.models.models["ai/smollm2"]["tags"].append("docker.io/ai/smollm2:v2")
    response = await served.client.delete(f"/models/{MODEL_ID}")
    assert response.status_code == 409
    assert "must be forced" in response.text
    assert response.headers["content-type"] == TEXT
    for query in ("?force", "?force=true", "?force=1"):
        response = await served.client.delete(f"/models/{MODEL_ID}{query}")
        assert response.status_code == 200, query
        assert served.fakes.models.calls[-1][2] is True
    response = await served.client.delete(f"/models/{MODEL_ID}?force=false")
    assert response.status_code == 409


async def test_tag(served: Served) -> None:
    response = await served.client.post("/models/ai/smollm2/tag?repo=myorg/mine&tag=v1")
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "message": 'Model tagged successfully with "myorg/mine:v1"',
        "target": "myorg/mine:v1",
    }
    assert served.fakes.models.calls[-1] == ("tag", "ai/smollm2", "myorg/mine:v1")


@pytest.mark.parametrize("query", ["", "?repo=x", "?tag=v1", "?repo=&tag=v1"])
async def test_tag_needs_repo_and_tag(served: Served, query: str) -> None:
    response = await served.client.post("/models/ai/smollm2/tag" + query)
    assert response.status_code == 400
    assert response.text == "missing repo or tag query parameter\n"


async def test_tag_unknown_source(served: Served) -> None:
    response = await served.client.post("/models/ai/none/tag?repo=a&tag=b")
    assert response.status_code == 404


async def test_repackage(served: Served) -> None:
    response = await served.client.post(
        "/models/ai/smollm2/repackage", json={"target": "ai/small:8k", "context_size": 8192}
    )
    assert response.status_code == 201
    assert response.json() == {
        "message": 'Model repackaged successfully as "ai/small:8k"',
        "source": "ai/smollm2",
        "target": "ai/small:8k",
    }
    assert served.fakes.models.calls[-1] == ("repackage", "ai/smollm2", "ai/small:8k", 8192)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"context_size": 1}, "target is required"),
        ({"target": ""}, "target is required"),
        ({"target": 5}, "'target' must be a string"),
        ({"target": "a", "context_size": "big"}, "'context_size' must be a non-negative integer"),
        ({"target": "a", "context_size": -2}, "'context_size' must be a non-negative integer"),
        ([], "expected a JSON object"),
    ],
)
async def test_repackage_bad_requests(served: Served, body: object, message: str) -> None:
    response = await served.client.post("/models/ai/smollm2/repackage", json=body)
    assert response.status_code == 400
    assert message in response.text


async def test_unknown_action(served: Served) -> None:
    response = await served.client.post("/models/ai/smollm2/frobnicate")
    assert response.status_code == 404
    assert response.text == 'unknown action "frobnicate"\n'


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(html.unescape(line)) for line in text.splitlines() if line]


async def test_pull_progress_is_html_escaped_text_by_default(served: Served) -> None:
    response = await served.client.post("/models/create", json={"from": "ai/smollm2", "bearer-token": "tok"})
    assert response.status_code == 200
    assert response.headers["content-type"] == TEXT
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "&#34;type&#34;:&#34;progress&#34;" in response.text  # Go's html.EscapeString entities
    assert '"' not in response.text
    events = _lines(response.text)
    assert [e["type"] for e in events] == ["progress", "progress", "progress", "success"]
    assert events[0] == {
        "type": "progress",
        "message": "Downloaded: 0.00 MB",
        "total": 300,
        "layer": {"id": "sha256:" + "3" * 64, "size": 300, "current": 100},
        "mode": "pull",
    }
    assert events[-1]["message"] == "Model pulled successfully <ok>"
    assert served.fakes.models.calls[-1] == ("pull", "ai/smollm2", "tok")


async def test_pull_progress_json_only_for_exact_accept(served: Served) -> None:
    response = await served.client.post(
        "/models/create", json={"from": "ai/smollm2"}, headers={"Accept": "application/json"}
    )
    assert response.headers["content-type"] == "application/json"
    events = [json.loads(line) for line in response.text.splitlines()]
    assert events[-1]["message"] == "Model pulled successfully \u003cok\u003e".replace("\\u003c", "<")
    assert "\\u003c" in response.text  # Go escapes <, > and & inside JSON strings
    response = await served.client.post(
        "/models/create", json={"from": "ai/smollm2"}, headers={"Accept": "application/json, text/plain"}
    )
    assert response.headers["content-type"] == TEXT


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RemoteNotFound("manifest unknown", status=404), 404),
        (RegistryUnauthorized("denied", status=401), 401),
    ],
)
async def test_pull_errors_before_progress_get_their_status(
    served: Served, error: Exception, status: int
) -> None:
    served.fakes.models.fail_pull_before = error
    response = await served.client.post("/models/create", json={"from": "ai/missing"})
    assert response.status_code == status
    assert response.headers["content-type"] == TEXT


async def test_pull_error_after_progress_is_an_error_line(served: Served) -> None:
    served.fakes.models.fail_pull_after = RuntimeError("connection reset by registry")
    response = await served.client.post("/models/create", json={"from": "ai/smollm2"})
    assert response.status_code == 200
    events = _lines(response.text)
    assert events[-1]["type"] == "error"
    assert "connection reset by registry" in str(events[-1]["message"])
    assert str(events[-1]["message"]).startswith("Error: ")


@pytest.mark.parametrize(
    "body", [b"", b"{bad", b"[]", b'{"from": 5}', b'{"from": ""}', b'{"from":"a","bearer-token":1}']
)
async def test_pull_bad_bodies(served: Served, body: bytes) -> None:
    response = await served.client.post("/models/create", content=body)
    assert response.status_code == 400
    assert response.text.startswith("invalid request body")


async def test_push_with_and_without_body(served: Served) -> None:
    response = await served.client.post("/models/ai/smollm2/push")
    assert response.status_code == 200
    assert _lines(response.text)[-1] == {
        "type": "success",
        "message": "Model pushed successfully",
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": "push",
    }
    response = await served.client.post("/models/ai/smollm2/push", json={"bearer-token": "t"})
    assert served.fakes.models.calls[-1] == ("push", "ai/smollm2", "t")
    response = await served.client.post("/models/ai/nothing/push")
    assert response.status_code == 404


async def test_export(served: Served) -> None:
    response = await served.client.get("/models/ai/smollm2/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    assert response.headers["content-disposition"] == 'attachment; filename="ai/smollm2.tar"'
    assert response.content == served.fakes.models.export_data
    response = await served.client.get("/models/ai/none/export")
    assert response.status_code == 404
    assert response.headers["content-type"] == TEXT


async def test_load_streams_the_body(served: Served) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: larger than the JSON body limit would allow
    response = await served.client.post("/models/load", content=payload)
    assert response.status_code == 200
    assert _lines(response.text)[-1]["message"] == "Model loaded successfully"
    assert served.fakes.models.loaded == payload


async def test_purge(served: Served) -> None:
    response = await served.client.delete("/models/purge")
    assert (response.status_code, response.content) == (200, b"")
    assert served.fakes.models.calls[-1] == ("purge",)


# -- /engines admin ----------------------------------------------------------------------------------


async def test_engines_status(served: Served) -> None:
    response = await served.client.get("/engines/status")
    assert response.json() == {
        "llama.cpp": "Running: llama.cpp b11312-cpu (sha256:abc)",
        "vllm": "Not Installed: needs a GPU",
    }


async def test_engines_ps(served: Served) -> None:
    from datetime import UTC, datetime

    served.fakes.scheduler.rows = [
        FakeRow(
            "llama.cpp",
            "ai/smollm2",
            MODEL_ID,
            Mode.COMPLETION,
            datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC),
            False,
            False,
            300.0,
            1 << 30,
            900 << 20,
        ),
        FakeRow("llama.cpp", "ai/embed", OTHER_ID, Mode.EMBEDDING, None, True, True, -1.0, 512, None),
    ]
    response = await served.client.get("/engines/ps")
    assert response.json() == [
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/smollm2",
            "mode": "completion",
            "last_used": "2026-03-01T12:00:00Z",
            "keep_alive": "5m0s",
            "memory_reserved": 1 << 30,
            "memory_measured": 900 << 20,
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/embed",
            "mode": "embedding",
            "last_used": "0001-01-01T00:00:00Z",
            "in_use": True,
            "loading": True,
            "keep_alive": "-1",
            "memory_reserved": 512,
        },
    ]


async def test_engines_ps_empty(served: Served) -> None:
    assert (await served.client.get("/engines/ps")).content == b"[]\n"


async def test_engines_df(served: Served) -> None:
    response = await served.client.get("/engines/df")
    assert response.json() == {"models_disk_usage": 123, "default_backend_disk_usage": 456}


async def test_engines_unload(served: Served) -> None:
    response = await served.client.post("/engines/unload", json={"all": True})
    assert response.json() == {"unloaded_runners": 2}
    response = await served.client.post(
        "/engines/unload", json={"backend": "llama.cpp", "models": ["ai/smollm2"]}
    )
    assert response.status_code == 200
    assert served.fakes.scheduler.calls[-1] == ("unload", False, "llama.cpp", ("ai/smollm2",))


@pytest.mark.parametrize(
    "body", [b"{bad", b'{"all": "yes"}', b'{"models": "x"}', b'{"models": [1]}', b'{"backend": 3}', b"[1]"]
)
async def test_engines_unload_bad_requests(served: Served, body: bytes) -> None:
    response = await served.client.post("/engines/unload", content=body)
    assert response.status_code == 400
    assert response.text.startswith("invalid request")


async def test_configure(served: Served) -> None:
    body = {
        "model": "ai/smollm2",
        "context-size": 8192,
        "runtime-flags": ["--threads", "2"],
        "keep_alive": "10m",
    }
    response = await served.client.post("/engines/_configure", json=body)
    assert (response.status_code, response.content) == (202, b"")
    _, request, preload = served.fakes.scheduler.calls[-1]
    assert (request.model, request.context_size, request.runtime_flags, request.keep_alive) == (
        "ai/smollm2",
        8192,
        ("--threads", "2"),
        600.0,
    )
    assert preload is True
    response = await served.client.post("/engines/llama.cpp/_configure", json={"model": "ai/smollm2"})
    assert response.status_code == 202
    assert served.fakes.scheduler.calls[-1][1].backend == "llama.cpp"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/engines/_configure", b"{bad", 400),
        ("/engines/_configure", b'{"context-size": 5}', 400),
        ("/engines/_configure", b'{"model": "ai/smollm2", "context-size": "big"}', 400),
        ("/engines/_configure", b'{"model": "ai/smollm2", "keep_alive": "soon"}', 400),
        ("/engines/_configure", b'{"model": "ai/unknown"}', 404),
        ("/engines/nope/_configure", b'{"model": "ai/smollm2"}', 404),
    ],
)
async def test_configure_errors(served: Served, path: str, body: bytes, status: int) -> None:
    response = await served.client.post(path, content=body)
    assert response.status_code == status
    assert response.headers["content-type"] == TEXT


async def test_configure_list(served: Served) -> None:
    served.fakes.scheduler.configs_ = [
        ModelConfig(
            "llama.cpp",
            MODEL_ID,
            "ai/smollm2",
            Mode.COMPLETION,
            4096,
            ("--threads", "2"),
            60.0,
            {"llamacpp": {"reasoning-budget": 0}},
        ),
    ]
    response = await served.client.get("/engines/_configure?model=ai/smollm2")
    assert response.json() == [
        {
            "Backend": "llama.cpp",
            "Model": "ai/smollm2",
            "ModelID": MODEL_ID,
            "Mode": "completion",
            "Config": {
                "context-size": 4096,
                "runtime-flags": ["--threads", "2"],
                "keep_alive": "1m0s",
                "llamacpp": {"reasoning-budget": 0},
            },
        }
    ]
    assert served.fakes.scheduler.calls[-1] == ("configs", "ai/smollm2")


async def test_install_and_uninstall_backend(served: Served) -> None:
    response = await served.client.post("/engines/install-backend", json={"backend": "vllm"})
    assert (response.status_code, response.content) == (200, b"")
    assert served.fakes.backends.backends["vllm"].installs == 1
    response = await served.client.post("/engines/uninstall-backend", json={"backend": "vllm"})
    assert response.status_code == 200
    assert served.fakes.backends.backends["vllm"].uninstalls == 1
    assert served.fakes.scheduler.calls[-1] == ("unload", False, "vllm", ())


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"{}", 400, "invalid request: backend is required"),
        (b'{"backend": ""}', 400, "invalid request: backend is required"),
        (b'{"backend": "nope"}', 404, "backend not found"),
        (b'{"backend": "vllm", "version": "b1234"}', 400, "not supported"),
        (b"nope", 400, "invalid request"),
    ],
)
async def test_install_backend_errors(served: Served, body: bytes, status: int, text: str) -> None:
    response = await served.client.post("/engines/install-backend", content=body)
    assert response.status_code == status
    assert text in response.text


async def test_install_backend_failure(served: Served) -> None:
    served.fakes.backends.backends["vllm"].fail = RuntimeError("no CUDA")
    response = await served.client.post("/engines/install-backend", json={"backend": "vllm"})
    assert response.status_code == 500
    assert response.text.startswith("backend installation failed: ")


# -- OpenAI model list -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/engines/v1/models", "/v1/models", "/engines/llama.cpp/v1/models"])
async def test_openai_models(served: Served, path: str) -> None:
    response = await served.client.get(path)
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {
                "id": "docker.io/ai/smollm2:latest",
                "object": "model",
                "created": 1742816981,
                "owned_by": "docker",
                "dmr": {
                    "context_window": 8192,
                    "architecture": "llama",
                    "parameters": "361.82M",
                    "quantization": "Q4_K_M",
                    "size": "256.35MiB",
                },
            }
        ],
    }


async def test_openai_model_get_and_errors(served: Served) -> None:
    response = await served.client.get("/v1/models/ai/smollm2")
    assert response.json()["id"] == "docker.io/ai/smollm2:latest"
    response = await served.client.get("/v1/models/ai/none")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    response = await served.client.get("/engines/nope/v1/models")
    assert response.status_code == 404
    assert "backend not found" in response.json()["error"]["message"]


# -- inference without an engine ---------------------------------------------------------------------


async def test_inference_validation_is_openai_json(served: Served) -> None:
    cases = [
        (b"{bad", 400, "not valid JSON"),
        (b"[]", 400, "must be a JSON object"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": 1}', 400, "must be a string"),
        (b'{"model": "ai/unknown", "messages": []}', 404, "not found"),
    ]
    for body, status, text in cases:
        response = await served.client.post("/engines/v1/chat/completions", content=body)
        assert response.status_code == status, body
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        error = response.json()["error"]
        assert text in error["message"]
        assert set(error) == {"message", "type", "param", "code"}
    assert not [c for c in served.fakes.models.calls if c[0] == "pull"]  # no implicit pull


async def test_inference_unknown_backend(served: Served) -> None:
    response = await served.client.post("/engines/nope/v1/chat/completions", json={"model": "ai/smollm2"})
    assert response.status_code == 404
    assert "backend not found" in response.json()["error"]["message"]
    assert not served.fakes.scheduler.calls


async def test_inference_scheduler_errors(served: Served) -> None:
    served.fakes.scheduler.acquire_error = QueueFull("too many requests waiting", retry_after=2.5)
    response = await served.client.post("/v1/chat/completions", json={"model": "ai/smollm2"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    served.fakes.scheduler.acquire_error = ModelTooLarge("ai/smollm2", {"ram": 2 << 30}, {"ram": 1 << 30})
    response = await served.client.post("/v1/embeddings", json={"model": "ai/smollm2", "input": "x"})
    assert response.status_code == 507
    assert "2.00 GiB" in response.json()["error"]["message"]


async def test_engine_unreachable_is_502_and_marks_broken(served: Served) -> None:
    response = await served.client.post("/v1/chat/completions", json={"model": "ai/smollm2"})
    assert response.status_code == 502
    assert "not reachable" in response.json()["error"]["message"]
    assert served.fakes.scheduler.leases[-1].broken
    assert served.fakes.scheduler.released == 1


async def test_preload_only(served: Served) -> None:
    response = await served.client.post(
        "/engines/v1/chat/completions", json={"model": "ai/smollm2"}, headers={"X-Preload-Only": "true"}
    )
    assert (response.status_code, response.content) == (200, b"")
    assert served.fakes.scheduler.calls[-1] == ("acquire", "ai/smollm2", Mode.COMPLETION, None)


async def test_modes_and_backend_reach_the_scheduler(served: Served) -> None:
    headers = {"X-Preload-Only": "true"}
    await served.client.post("/engines/vllm/v1/embeddings", json={"model": "ai/smollm2"}, headers=headers)
    await served.client.post("/rerank", json={"model": "ai/smollm2"}, headers=headers)
    await served.client.post("/engines/llama.cpp/score", json={"model": "ai/smollm2"}, headers=headers)
    assert served.fakes.scheduler.calls[-3:] == [
        ("acquire", "ai/smollm2", Mode.EMBEDDING, "vllm"),
        ("acquire", "ai/smollm2", Mode.RERANKING, None),
        ("acquire", "ai/smollm2", Mode.RERANKING, "llama.cpp"),
    ]


# -- limits ------------------------------------------------------------------------------------------


async def test_body_limit_10_mib(served: Served) -> None:
    limit = 10 << 20
    body = b'{"model": "ai/smollm2", "pad": "' + b"x" * (limit - 40) + b'"}'
    assert len(body) <= limit
    response = await served.client.post(
        "/v1/chat/completions", content=body, headers={"X-Preload-Only": "true"}
    )
    assert response.status_code == 200
    too_big = body + b" " * (limit - len(body) + 1)
    response = await served.client.post("/v1/chat/completions", content=too_big)
    assert response.status_code == 400
    assert "request too large" in response.json()["error"]["message"]
    assert response.headers["connection"] == "close"
    response = await served.client.post("/engines/_configure", content=too_big)
    assert response.status_code == 400
    assert response.text.startswith("request too large")


async def test_chunked_body_over_limit(served: Served) -> None:
    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(11):
            yield b" " * (1 << 20)

    response = await served.client.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 400


# -- CORS ----------------------------------------------------------------------------------------------


async def test_cors_forbidden_origin(served: Served) -> None:
    for path in ["/models", "/engines/status", "/v1/models"]:
        response = await served.client.get(path, headers={"Origin": "http://evil.example"})
        assert response.status_code == 403
        assert response.text == "Origin not allowed\n"


async def test_cors_allowed_origin_is_echoed(served: Served) -> None:
    response = await served.client.get("/models", headers={"Origin": "http://localhost:5173"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    response = await served.client.get("/models")
    assert "access-control-allow-origin" not in response.headers


async def test_cors_preflight(served: Served) -> None:
    response = await served.client.options(
        "/engines/v1/chat/completions", headers={"Origin": "http://127.0.0.1"}
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://127.0.0.1"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-methods"] == "GET, POST, DELETE"
    assert response.headers["access-control-allow-headers"] == "*"
    response = await served.client.options("/engines/v1/chat/completions")
    assert response.status_code == 404  # no origin: the router answers


async def test_cors_not_applied_to_misc_routes(served: Served) -> None:
    response = await served.client.get("/version", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_dmr_origins_extend_the_list(fakes, tmp_path) -> None:
    from tests.api.conftest import serve_fakes

    async with serve_fakes(fakes, tmp_path, cors_origins=("https://ui.example",)) as served:
        response = await served.client.get("/models", headers={"Origin": "https://ui.example"})
        assert response.headers["access-control-allow-origin"] == "https://ui.example"


# -- client disconnects --------------------------------------------------------------------------------


async def test_client_leaving_the_queue_cancels_the_wait(served: Served) -> None:
    gate = trio.Event()
    served.fakes.scheduler.acquire_gate = gate
    with trio.move_on_after(0.5):
        await served.client.post("/v1/chat/completions", json={"model": "ai/smollm2"})
    # The client gave up; the server must leave the queue without waiting for the gate.
    with trio.fail_after(5):
        await served.fakes.scheduler.wait_cancelled.wait()
    gate.set()
    await trio.sleep(0.1)
    assert not served.fakes.scheduler.leases  # never granted: the waiter was cancelled


async def test_metrics_endpoint(served: Served) -> None:
    await served.client.get("/models")
    served.fakes.scheduler.loads.inc()
    response = await served.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'modelrunner_api_requests_total{code="200",route="models.list"} 1.0' in response.text
    assert "modelrunner_test_loads_total 1.0" in response.text


async def test_metrics_can_be_disabled(fakes, tmp_path) -> None:
    from tests.api.conftest import serve_fakes

    async with serve_fakes(fakes, tmp_path, metrics_enabled=False) as served:
        assert (await served.client.get("/metrics")).status_code == 404


async def test_now_helper_is_aware() -> None:
    assert now().tzinfo is not None
    assert OTHER_ID != MODEL_ID
