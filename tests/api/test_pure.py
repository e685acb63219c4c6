"""Pure helpers: CORS policy, SSE framing, model rewrite, error bodies, OpenAI shapes, logs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelrunner.api._app import _go_time, dmr_json, render_ps_row
from modelrunner.api._cors import DEFAULT_ORIGINS, CorsDecision, CorsPolicy, parse_origins
from modelrunner.api._errors import ApiError, map_exception, render_dmr, render_openai
from modelrunner.api._logs import merge_log_lines, parse_go_bool
from modelrunner.api._openai import classify_engine_error, openai_model_object, requested_model
from modelrunner.api._sse import EventTooLarge, ModelRewriter, SSEFramer, encode_model_name, rewrite_model

# -- CORS ------------------------------------------------------------------------------------------


def test_default_origins_are_dmrs() -> None:
    assert set(DEFAULT_ORIGINS) == {
        f"{s}://{h}{p}"
        for s in ("http", "https")
        for h in ("localhost", "127.0.0.1", "0.0.0.0")
        for p in ("", ":*")
    }


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True),
        ("https://127.0.0.1", True),
        ("http://0.0.0.0", True),
        ("http://localhost:3000", True),
        ("http://localhost:*", True),
        ("http://localhost:abc", False),
        ("http://localhost.evil.com", False),
        ("http://evil.com", False),
        ("https://app.example.com", True),
        ("https://app.example.com:8443", False),
        ("null", False),
    ],
)
def test_cors_policy(origin: str, allowed: bool) -> None:
    policy = CorsPolicy.from_origins(parse_origins(' "https://app.example.com, " '))
    assert policy.is_allowed(origin) is allowed


def test_cors_decisions() -> None:
    policy = CorsPolicy.from_origins()
    assert policy.decide("GET", None) is CorsDecision.NO_ORIGIN
    assert policy.decide("GET", "http://evil.com") is CorsDecision.FORBIDDEN
    assert policy.decide("OPTIONS", "http://evil.com") is CorsDecision.FORBIDDEN
    assert policy.decide("OPTIONS", "http://localhost") is CorsDecision.PREFLIGHT
    assert policy.decide("POST", "http://localhost") is CorsDecision.ALLOWED


def test_cors_star_allows_everything() -> None:
    assert CorsPolicy.from_origins(["*"]).is_allowed("http://anything.example")


# -- SSE ----------------------------------------------------------------------------------------

EVENTS = [
    b'data: {"id":"1","model":"tiny-chat","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"lo \\"model\\":\\"x\\""}}],"model":"tiny-chat"}\n\n',
    b"data: [DONE]\n\n",
]


def test_framer_returns_whole_events_only() -> None:
    framer = SSEFramer()
    stream = b"".join(EVENTS)
    assert framer.feed(stream[:10]) == []
    assert framer.pending == 10
    assert framer.feed(stream[10:]) == EVENTS
    assert framer.flush() == b""


@given(st.lists(st.integers(min_value=0, max_value=len(b"".join(EVENTS))), max_size=12))
def test_framer_is_independent_of_how_bytes_arrive(cuts: list[int]) -> None:
    stream = b"".join(EVENTS)
    points = sorted(set(cuts))
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    framer = SSEFramer()
    out = [event for piece in pieces for event in framer.feed(piece)]
    assert out == EVENTS
    assert framer.flush() == b""


def _naive_events(stream: bytes) -> tuple[list[bytes], bytes]:
    """Whole events by the earliest-ending terminator, scanning from each event's start."""
    events, start = [], 0
    while True:
        ends = [i + len(t) for t in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := stream.find(t, start)) >= 0]
        if not ends:
            return events, stream[start:]
        events.append(stream[start : min(ends)])
        start = min(ends)


@given(
    st.lists(st.sampled_from([b"data: x", b"\n", b"\r", b"\n\n", b"\r\n\r\n", b":c"]), max_size=30),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_framer_matches_a_naive_split_for_any_terminators_and_pieces(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    points = sorted({c for c in cuts if c <= len(stream)})
    framer = SSEFramer()
    out = [
        e for a, b in zip([0, *points], [*points, len(stream)], strict=True) for e in framer.feed(stream[a:b])
    ]
    expected, rest = _naive_events(stream)
    assert b"".join(out) + framer.flush() == stream
    if b"\r" not in stream:
        assert (out, rest) == (expected, stream[len(b"".join(expected)) :])


@given(
    st.lists(st.sampled_from([*EVENTS, b'data: {"model" :  "other","n":1}\n\n', b": ping\n\n"]), max_size=12)
)
def test_model_rewriter_agrees_with_rewrite_model_event_by_event(events: list[bytes]) -> None:
    rewrite = ModelRewriter('ai/we"ird')
    literal = encode_model_name('ai/we"ird')
    assert [rewrite(event) for event in events] == [rewrite_model(event, literal) for event in events]


def test_framer_handles_crlf_and_cr_terminators() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: a\r\n\r\ndata: b\r\rdata: c") == [b"data: a\r\n\r\n", b"data: b\r\r"]
    assert framer.flush() == b"data: c"


def test_framer_limits_unterminated_events() -> None:
    framer = SSEFramer(max_event_size=16)
    with pytest.raises(EventTooLarge):
        framer.feed(b"data: " + b"x" * 32)


def test_rewrite_model_replaces_only_the_member_value() -> None:
    literal = encode_model_name("ai/smollm2")
    out = rewrite_model(EVENTS[1], literal)
    payload = json.loads(out[len(b"data: ") :])
    assert payload["model"] == "ai/smollm2"
    assert payload["choices"][0]["delta"]["content"] == 'lo "model":"x"'  # inside a string: untouched


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"a","x":1}',
        b'{"x": 1, "model": "a\\"b"}',
        b'{"object":"list","model":"x","data":[]}',
    ],
)
def test_rewrite_model_in_various_json_layouts(body: bytes) -> None:
    out = rewrite_model(body, encode_model_name('we"ird/ü'))
    assert json.loads(out)["model"] == 'we"ird/ü'


def test_rewrite_model_without_model_is_identity() -> None:
    body = b'{"error":{"message":"x"}}'
    assert rewrite_model(body, b'"m"') is body


@given(st.text(), st.text())
def test_rewrite_model_roundtrip(original: str, wanted: str) -> None:
    body = json.dumps({"content": original, "model": original, "n": 1}).encode()
    out = json.loads(rewrite_model(body, encode_model_name(wanted)))
    assert out == {"content": original, "model": wanted, "n": 1}


# -- errors ----------------------------------------------------------------------------------------


def test_render_dmr_is_go_http_error() -> None:
    status, headers, body = render_dmr(ApiError(404, "not found"))
    assert status == 404
    assert body == b"not found\n"
    assert (b"content-type", b"text/plain; charset=utf-8") in headers
    assert (b"x-content-type-options", b"nosniff") in headers


def test_render_openai_error_shape() -> None:
    status, headers, body = render_openai(ApiError(400, "model is required", param="model"))
    assert status == 400
    assert json.loads(body) == {
        "error": {
            "message": "model is required",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }
    assert headers[0] == (b"content-type", b"application/json; charset=utf-8")


class ModelNotFound(Exception):
    status_hint = 404


class QueueFull(Exception):
    status_hint = 503

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineStartError(Exception):
    pass


class SomethingElse(EngineStartError):
    pass


def test_map_exception_uses_status_hint_and_retry_after() -> None:
    error = map_exception(QueueFull("busy", 2.2))
    assert (error.status, error.message) == (503, "busy")
    assert error.headers == [(b"retry-after", b"3")]
    assert map_exception(ModelNotFound("model 'x' not found")).code == "model_not_found"


def test_map_exception_by_class_name_in_mro() -> None:
    error = map_exception(SomethingElse("llama.cpp terminated"))
    assert error.status == 500
    assert error.message == "unable to load runner: llama.cpp terminated"


def test_map_exception_unknown_is_500_with_type() -> None:
    error = map_exception(KeyError("boom"))
    assert error.status == 500
    assert "KeyError" in error.message


def test_real_error_classes_map() -> None:
    from modelrunner.distribution.errors import Conflict, InvalidReference
    from modelrunner.engines import BackendNotInstalled, InvalidRuntimeFlags, UnknownBackend
    from modelrunner.scheduler import ModelTooLarge, RunnerInUse

    assert map_exception(UnknownBackend("x")).status == 404
    assert map_exception(BackendNotInstalled("vllm", "no GPU")).status == 412
    assert map_exception(InvalidRuntimeFlags("--foo not allowed")).status == 400
    assert map_exception(ModelTooLarge("m", {"ram": 2}, {"ram": 1})).status == 507
    assert map_exception(RunnerInUse("m")).status == 409
    assert map_exception(Conflict("multiple tags")).status == 409
    assert map_exception(InvalidReference("A//b", "bad")).status == 400


# -- OpenAI helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"{bad", "not valid JSON"),
        (b"\xff\xfe\x00", "UTF-8"),
        (b"[]", "must be a JSON object, not an array"),
        (b'"x"', "not a string"),
        (b"{}", "model is required"),
        (b'{"model": ""}', "model is required"),
        (b'{"model": "   "}', "model is required"),
        (b'{"model": 5}', "'model' must be a string, not a number"),
        (b'{"model": null}', "model is required"),
        (b'{"model": ["a"]}', "not an array"),
    ],
)
def test_requested_model_rejects_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as info:
        requested_model(body)
    assert info.value.status == 400
    assert message in info.value.message


def test_requested_model_returns_the_name_as_given() -> None:
    assert requested_model(b'{"model":"ai/SmolLM2","messages":[]}') == "ai/SmolLM2"


def test_engine_500_for_bad_input_becomes_400() -> None:
    body = json.dumps(
        {
            "error": {
                "code": 500,
                "message": "input (602 tokens) is too large to process. increase the physical batch size",
                "type": "server_error",
            }
        }
    ).encode()
    status, new_body = classify_engine_error(500, body) or (0, b"")
    assert status == 400
    assert json.loads(new_body)["error"]["type"] == "invalid_request_error"
    assert "602 tokens" in json.loads(new_body)["error"]["message"]


def test_engine_500_for_engine_trouble_passes() -> None:
    body = b'{"error":{"code":500,"message":"the context does not support logits","type":"server_error"}}'
    assert classify_engine_error(500, body) is None
    assert classify_engine_error(400, b'{"error":{"message":"json.exception"}}') is None
    assert classify_engine_error(500, b"not json") is None


def test_openai_model_object_shape() -> None:
    model = {
        "id": "sha256:" + "a" * 64,
        "tags": ["docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:135M"],
        "created": 1742816981,
        "config": {
            "format": "gguf",
            "architecture": "llama",
            "parameters": "361.82M",
            "quantization": "Q4_K_M",
            "size": "256.35MiB",
            "gguf": {"llama.context_length": "8192"},
        },
    }
    assert openai_model_object(model) == {
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


def test_openai_model_object_untagged_uses_id_and_config_context_size() -> None:
    model = {"id": "sha256:" + "b" * 64, "created": 0, "config": {"format": "gguf", "context_size": 4096}}
    out = openai_model_object(model)
    assert out["id"] == "sha256:" + "b" * 64
    assert out["dmr"] == {"context_window": 4096}


# -- DMR rendering -------------------------------------------------------------------------------


def test_dmr_json_escapes_like_go() -> None:
    assert dmr_json({"a": "<&>"}) == b'{"a":"\\u003c\\u0026\\u003e"}\n'


def test_go_time() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    assert _go_time(None) == "0001-01-01T00:00:00Z"
    assert _go_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"
    assert _go_time(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)) == "2026-01-02T03:04:05.12Z"
    plus_two = timezone(timedelta(hours=2))
    assert _go_time(datetime(2026, 1, 2, 5, 4, 5, tzinfo=plus_two)) == "2026-01-02T03:04:05Z"


def test_ps_row_omits_false_flags() -> None:
    from dataclasses import dataclass
    from datetime import UTC, datetime

    from modelrunner.engines import Mode

    @dataclass
    class Row:
        backend_name: str = "llama.cpp"
        model_name: str = "ai/smollm2"
        model_id: str = "sha256:" + "0" * 64
        mode: Mode = Mode.EMBEDDING
        last_used: datetime | None = datetime(2026, 1, 1, tzinfo=UTC)
        in_use: bool = False
        loading: bool = False
        keep_alive: float = 300.0
        memory_reserved: int = 1024
        memory_measured: int | None = None

    assert render_ps_row(Row()) == {
        "backend_name": "llama.cpp",
        "model_name": "ai/smollm2",
        "mode": "embedding",
        "last_used": "2026-01-01T00:00:00Z",
        "keep_alive": "5m0s",
        "memory_reserved": 1024,
    }
    busy = render_ps_row(Row(in_use=True, loading=True, keep_alive=-1, memory_measured=10, last_used=None))
    assert busy["in_use"] is True and busy["loading"] is True
    assert busy["last_used"] == "0001-01-01T00:00:00Z"
    assert busy["keep_alive"] == "-1"
    assert busy["memory_measured"] == 10


# -- logs ------------------------------------------------------------------------------------------


def test_merge_log_lines_by_timestamp() -> None:
    service = [b"[2026-01-01T00:00:01Z] a\n", b"[2026-01-01T00:00:03Z] c\n", b"  continued\n"]
    engine = [b"[2026-01-01T00:00:02Z] b\n", b"[2026-01-01T00:00:04Z] d\n"]
    assert merge_log_lines([service, engine]) == [
        b"[2026-01-01T00:00:01Z] a\n",
        b"[2026-01-01T00:00:02Z] b\n",
        b"[2026-01-01T00:00:03Z] c\n  continued\n",
        b"[2026-01-01T00:00:04Z] d\n",
    ]


@pytest.mark.parametrize(("text", "value"), [("1", True), ("true", True), ("F", False), ("FALSE", False)])
def test_parse_go_bool(text: str, value: bool) -> None:
    assert parse_go_bool(text) is value


def test_parse_go_bool_rejects_junk() -> None:
    with pytest.raises(ValueError):
        parse_go_bool("yes")


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("12434", ("127.0.0.1", 12434)),
        (":8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:12434", ("0.0.0.0", 12434)),
        ("[::1]:12434", ("::1", 12434)),
        ("http://127.0.0.1:12435", ("127.0.0.1", 12435)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_bind_address(text: str, address: tuple[str, int]) -> None:
    from modelrunner.api import parse_bind_address

    assert parse_bind_address(text) == address


@pytest.mark.parametrize("text", ["", "abc", "host:", "1.2.3.4:99999", "http://127.0.0.1", "example.com:80"])
def test_parse_bind_address_rejects(text: str) -> None:
    from modelrunner.api import InvalidBindAddress, parse_bind_address

    with pytest.raises(InvalidBindAddress):
        parse_bind_address(text)


def test_config_from_environ() -> None:
    from pathlib import Path

    from modelrunner.api import ApiConfig

    config = ApiConfig.from_environ(
        {
            "MODEL_RUNNER_PORT": " '13434' ",
            "MODEL_RUNNER_SOCK": "/tmp/x.sock",
            "DMR_ORIGINS": "https://a.example,https://b.example",
            "DISABLE_METRICS": "1",
            "MODEL_RUNNER_LOG_DIR": "/var/log/mr",
        },
        version="1.2.3",
    )
    assert config.tcp == ("127.0.0.1", 13434)
    assert config.unix_path == Path("/tmp/x.sock")
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert config.metrics_enabled is False
    assert config.log_dir == Path("/var/log/mr")
    assert config.version == "1.2.3"
    assert ApiConfig.from_environ({}) == ApiConfig()


def test_public_names_are_exported() -> None:
    import modelrunner.api as api

    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        assert getattr(api, name) is not None, name


# -- the wire ---------------------------------------------------------------------------------------


def test_reader_pulls_pipelined_requests_and_chunked_bodies() -> None:
    from modelrunner.api._wire import END, Head, MessageReader

    reader = MessageReader(requests=True)
    reader.feed(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /b HT"
    )
    head = reader.next_event()
    assert isinstance(head, Head) and (head.method, head.target, head.keep_alive) == ("POST", "/a", True)
    assert head.get(b"transfer-encoding") == b"chunked"
    assert reader.next_event() == b"abc"
    assert reader.next_event() is END
    assert reader.next_event() is None  # the second request is incomplete
    reader.feed(b"TP/1.0\r\n\r\n")
    second = reader.next_event()
    assert isinstance(second, Head) and second.target == "/b" and second.keep_alive is False


def test_reader_hands_over_the_body_pieces_that_arrived_together() -> None:
    from modelrunner.api._wire import END, Head, MessageReader

    reader = MessageReader(requests=False)
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n")
    assert isinstance(reader.next_event(), Head)
    assert reader.take_body() == [b"ab", b"c"]
    assert reader.take_body() == []
    reader.feed(b"1\r\nd\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert reader.take_body() == [b"d"]  # not past the end of the message
    assert reader.next_event() is END
    assert reader.take_body() == []
    assert isinstance(reader.next_event(), Head)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000, 431),
    ],
)
def test_reader_rejects(raw: bytes, status: int) -> None:
    from modelrunner.api._wire import MessageReader, ProtocolError

    with pytest.raises(ProtocolError) as info:
        MessageReader(requests=True).feed(raw)
    assert info.value.status_hint == status


def test_serializers_refuse_header_injection() -> None:
    from modelrunner.api._wire import chunk, request_bytes, response_head

    assert response_head(201, [(b"a", b"b")]) == b"HTTP/1.1 201 Created\r\na: b\r\n\r\n"
    assert request_bytes(b"POST", b"/v1/x", [(b"host", b"localhost")], b"{}") == (
        b"POST /v1/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}"
    )
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    with pytest.raises(ValueError):
        response_head(200, [(b"x", b"a\r\nset-cookie: evil")])
    with pytest.raises(ValueError):
        request_bytes(b"GET", b"/a b", [], b"")
    good = [(b"a", b"1"), (b"b", b"2")]
    for bad in [(b"x\n", b"v"), (b"x", b"v\r"), (b"x", b"\nv"), (b"x\r", b"\nv")]:
        with pytest.raises(ValueError, match="CR or LF"):
            response_head(200, [*good, bad])
        with pytest.raises(ValueError, match="CR or LF"):
            request_bytes(b"GET", b"/", [bad, *good], b"")


def test_engine_slots() -> None:
    from modelrunner.api._proxy import engine_slots

    assert engine_slots(b'{"total_slots": 4}') == 4
    assert engine_slots(b'{"total_slots": 0}') is None
    assert engine_slots(b'{"total_slots": true}') is None
    assert engine_slots(b"[]") is None
    assert engine_slots(b"nope") is None
