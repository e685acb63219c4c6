"""The Anthropic layer (`/anthropic/v1/messages[/count_tokens]`): checks, error shapes, and the
forwarding over fakes and a scripted engine (the body goes through unchanged, SSE event by event)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelrunner.api._anthropic import anthropic_error_type, engine_error, render_anthropic, requested_model
from modelrunner.api._errors import ApiError
from modelrunner.api._routing import ErrorStyle, RouteKind, route
from modelrunner.engines import Mode

from tests.api.conftest import Fakes, Served, serve_fakes
from tests.api.scripted_engine import EngineRequest, json_answer, scripted_engine, sse_answer

MODEL = "ai/smollm2"
MESSAGE = {
    "id": "msg-1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hello"}],
    "model": "engine-alias",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1},
}
EVENTS = [
    'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
    '"role":"assistant","content":[],"model":"engine-alias","usage":{"input_tokens":5,"output_tokens":0}}}\n\n',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"\\"model\\": x"}}\n\n',
    'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def error_of(body: bytes) -> dict[str, str]:
    payload = json.loads(body)
    assert payload["type"] == "error"
    assert set(payload) == {"type", "error"}
    return payload["error"]  # type: ignore[no-any-return]


# -- pure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "Invalid JSON in request body"),
        (b"\xff", "Invalid JSON in request body"),
        (b"[1]", "Invalid JSON in request body: expected an object"),
        (b"{}", "Missing required field: model"),
        (b'{"model": ""}', "Missing required field: model"),
        (b'{"model": "  "}', "Missing required field: model"),
        (b'{"model": 5}', "Invalid field: model must be a string"),
    ],
)
def test_requested_model_refusals(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as info:
        requested_model(body)
    assert (info.value.status, info.value.message) == (400, message)


def test_requested_model() -> None:
    assert requested_model(b'{"model": "ai/x", "messages": 3}') == "ai/x"  # the rest is the engine's


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "internal_error"),
        (502, "internal_error"),
        (503, "overloaded_error"),
    ],
)
def test_error_types(status: int, kind: str) -> None:
    assert anthropic_error_type(status) == kind
    rendered_status, headers, body = render_anthropic(ApiError(status, "why", headers=[(b"allow", b"POST")]))
    assert rendered_status == status
    assert headers == [(b"content-type", b"application/json"), (b"allow", b"POST")]
    assert error_of(body) == {"type": kind, "message": "why"}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            500,
            b'{"error":{"code":500,"message":"\'messages\' is required","type":"server_error"}}',
            (400, "'messages' is required"),
        ),
        (
            500,
            b'{"error":{"code":500,"message":"[json.exception.type_error.302] x","type":"server_error"}}',
            (400, "[json.exception.type_error.302] x"),
        ),
        (
            400,
            b'{"error":{"code":400,"message":"bad max_tokens","type":"invalid_request_error"}}',
            (400, "bad max_tokens"),
        ),
        (
            500,
            b'{"error":{"code":500,"message":"slot unavailable","type":"server_error"}}',
            (500, "slot unavailable"),
        ),
        (503, b'{"error":"Loading model"}', (503, "Loading model")),
        (502, b"", (502, "the engine answered 502")),
    ],
)
def test_engine_errors(status: int, body: bytes, expected: tuple[int, str]) -> None:
    error = engine_error(status, body)
    assert (error.status, error.message) == expected


def test_routes() -> None:
    messages = route("POST", "/anthropic/v1/messages")
    assert (messages.kind, messages.upstream_path, messages.mode) == (
        RouteKind.ANTHROPIC_MESSAGES,
        "/v1/messages",
        Mode.COMPLETION,
    )
    assert messages.cors and messages.style is ErrorStyle.ANTHROPIC
    assert route("POST", "/anthropic/v1/messages/count_tokens").upstream_path == "/v1/messages/count_tokens"
    wrong = route("GET", "/anthropic/v1/messages")
    assert (wrong.kind, wrong.allow) == (RouteKind.METHOD_NOT_ALLOWED, "POST")
    for path in ("/anthropic/v1/complete", "/anthropic/messages", "/anthropic/v1/messages/x"):
        assert route("POST", path).kind is RouteKind.NOT_FOUND
        assert route("POST", path).style is ErrorStyle.ANTHROPIC
    # The /v1 alias keeps going to the OpenAI-style proxy route, as in DMR.
    assert route("POST", "/v1/messages").kind is RouteKind.INFERENCE


# -- handlers ---------------------------------------------------------------------------------------


async def test_messages_body_is_forwarded_unchanged(fakes: Fakes, tmp_path: Path) -> None:
    def answer(request: EngineRequest) -> list[bytes]:
        if request.target.startswith("/v1/messages/count_tokens"):
            return json_answer({"input_tokens": 23})
        return json_answer(MESSAGE)

    raw = b'{"model": "ai/smollm2",  "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}'
    async with scripted_engine(tmp_path, answer) as engine, serve_fakes(fakes, tmp_path) as served:
        fakes.scheduler.socket_path = engine.path
        response = await served.client.post(
            "/anthropic/v1/messages?beta=true",
            content=raw,
            headers={"anthropic-version": "2023-06-01", "Origin": "http://localhost:5173"},
        )
        assert response.status_code == 200
        assert response.json() == {**MESSAGE, "model": MODEL}  # the engine's alias replaced
        assert response.headers.get_list("access-control-allow-origin") == ["http://localhost:5173"]
        response = await served.client.post("/anthropic/v1/messages/count_tokens", content=raw)
        assert response.json() == {"input_tokens": 23}
    first, second = engine.requests
    assert (first.method, first.target, first.body) == ("POST", "/v1/messages?beta=true", raw)
    assert first.headers["anthropic-version"] == "2023-06-01"
    assert first.headers["host"] == "localhost"
    assert (second.target, second.body) == ("/v1/messages/count_tokens", raw)
    assert fakes.scheduler.calls[-1] == ("acquire", MODEL, Mode.COMPLETION, None)
    assert fakes.scheduler.released == 2


async def test_stream_is_passed_through_event_by_event(fakes: Fakes, tmp_path: Path) -> None:
    async with (
        scripted_engine(tmp_path, lambda request: sse_answer(EVENTS)) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        body = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": []}
        async with served.client.stream("POST", "/anthropic/v1/messages", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            pieces = [piece async for piece in response.aiter_raw()]
    text = b"".join(pieces).decode()
    expected = EVENTS[0].replace('"model":"engine-alias"', '"model":"ai/smollm2"') + EVENTS[1] + EVENTS[2]
    assert text == expected  # the escaped "model" inside the text delta is left alone
    assert len(pieces) >= 2  # sent as it came, not buffered to the end


async def test_refusals_are_anthropic_shaped(served: Served) -> None:
    client = served.client
    response = await client.post("/anthropic/v1/messages", json={"model": "ai/missing", "messages": []})
    assert response.status_code == 404
    assert error_of(response.content) == {"type": "not_found_error", "message": "Model not found: ai/missing"}
    response = await client.post("/anthropic/v1/messages", content=b"{")
    assert response.status_code == 400
    assert error_of(response.content) == {
        "type": "invalid_request_error",
        "message": "Invalid JSON in request body",
    }
    response = await client.post("/anthropic/v1/messages", json={"messages": []})
    assert error_of(response.content)["message"] == "Missing required field: model"
    response = await client.get("/anthropic/v1/messages")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_of(response.content)["type"] == "invalid_request_error"
    response = await client.post("/anthropic/v1/complete", json={})
    assert (response.status_code, error_of(response.content)["type"]) == (404, "not_found_error")
    assert [c for c in served.fakes.scheduler.calls if c[0] == "acquire"] == []


async def test_body_over_the_limit_is_413(fakes: Fakes, tmp_path: Path) -> None:
    async with serve_fakes(fakes, tmp_path, body_limit=100) as served:
        response = await served.client.post("/anthropic/v1/messages", json={"model": MODEL, "pad": "x" * 200})
        assert response.status_code == 413
        assert error_of(response.content) == {
            "type": "request_too_large",
            "message": "request too large: the body exceeds 100 bytes",
        }


async def test_engine_errors_and_a_missing_engine(fakes: Fakes, tmp_path: Path) -> None:
    refusal = {"error": {"code": 500, "message": "'messages' is required", "type": "server_error"}}
    async with (
        scripted_engine(
            tmp_path, lambda request: json_answer(refusal, 500, "Internal Server Error")
        ) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        response = await served.client.post("/anthropic/v1/messages", json={"model": MODEL})
        assert response.status_code == 400
        assert error_of(response.content) == {
            "type": "invalid_request_error",
            "message": "'messages' is required",
        }
        fakes.scheduler.socket_path = tmp_path / "gone.sock"
        response = await served.client.post("/anthropic/v1/messages", json={"model": MODEL})
        assert response.status_code == 502
        assert error_of(response.content)["type"] == "internal_error"
        assert fakes.scheduler.leases[-1].broken
