"""The Ollama layer (`/api/*`): the pure translation (requests, answers, the SSE-to-NDJSON state
machine, listings, pull progress) and the handlers over fakes and a scripted engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from modelrunner.api._errors import ApiError
from modelrunner.api._ollama import (
    StreamTranslator,
    chat_response,
    engine_error,
    generate_response,
    load_response,
    ollama_time,
    ollama_tool_calls,
    parse_chat_request,
    parse_generate_request,
    ps_response,
    pull_status,
    render_ollama,
    show_response,
    tags_response,
)
from modelrunner.api._routing import ErrorStyle, RouteKind, route
from modelrunner.distribution.errors import RemoteNotFound
from modelrunner.distribution.progress import EventType, LayerProgress, Mode, ProgressEvent
from modelrunner.engines import Mode as EngineMode
from modelrunner.scheduler import ModelConfig, RunnerInUse

from tests.api.conftest import (
    MODEL_ID,
    FakeBackends,
    FakeModels,
    FakeRow,
    Fakes,
    FakeScheduler,
    Served,
    model_object,
    serve_fakes,
)
from tests.api.scripted_engine import (
    TOOL_CALL_EVENTS,
    EngineRequest,
    chunk,
    json_answer,
    scripted_engine,
    sse,
    sse_answer,
)

NOW = datetime(2025, 3, 24, 12, 29, 41, 123400, tzinfo=UTC)
MODEL = "ai/smollm2"

def lines_of(data: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for piece in data:
        assert piece.endswith(b"\n") and piece.count(b"\n") == 1, piece
        out.append(json.loads(piece))
    return out


# -- requests ---------------------------------------------------------------------------------------


def test_chat_request_translation() -> None:
    request = parse_chat_request(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is this?", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "the user wants weather",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
                },
                {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "c1"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "options": {
                "temperature": 0.2,
                "top_k": 40,
                "num_predict": 64,
                "stop": "\n\n",
                "seed": 7,
                "repeat_penalty": 1.1,
                "num_keep": 4,
                "num_gpu": 99,  # a runner option with no request meaning: dropped
                "num_ctx": 4096,
            },
            "format": "json",
            "think": True,
            "keep_alive": "10m",
        }
    )
    assert request.model == MODEL
    assert request.stream is True  # Ollama's default
    assert request.keep_alive == 600.0
    assert request.num_ctx == 4096
    assert request.load_only is False and request.unload is False
    assert request.openai == {
        "model": MODEL,
        "temperature": 0.2,
        "top_k": 40,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "seed": 7,
        "repeat_penalty": 1.1,
        "n_keep": 4,
        "response_format": {"type": "json_object"},
        "chat_template_kwargs": {"enable_thinking": True},
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "the user wants weather",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
    }


def test_openai_body_asks_for_usage_only_when_streaming() -> None:
    streamed = json.loads(parse_chat_request({"model": MODEL, "messages": [{"role": "user"}]}).openai_body())
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    single = parse_chat_request({"model": MODEL, "messages": [{"role": "user"}], "stream": False})
    body = json.loads(single.openai_body())
    assert body["stream"] is False and "stream_options" not in body
    assert body["messages"] == [{"role": "user", "content": ""}]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "ai/by-name", "model": "ai/by-model"}, "ai/by-name"),  # DMR prefers `name`
        ({"name": "", "model": " ai/by-model "}, "ai/by-model"),
        ({"model": "ai/x"}, "ai/x"),
    ],
)
def test_model_name_fields(fields: dict[str, str], expected: str) -> None:
    assert parse_chat_request(fields).model == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300.0), ("0", 0.0), ("0s", 0.0), ("0m", 0.0), ("-1", -1.0), (-5, -1.0), (90, 90.0), (1.5, 1.5)],
)
def test_keep_alive_forms(value: object, seconds: float) -> None:
    assert parse_chat_request({"model": MODEL, "keep_alive": value}).keep_alive == seconds


def test_keep_alive_falls_back_to_options_and_think_levels() -> None:
    request = parse_chat_request({"model": MODEL, "options": {"keep_alive": "1h"}, "think": "high"})
    assert request.keep_alive == 3600.0
    assert request.openai["chat_template_kwargs"] == {"enable_thinking": True}
    assert request.openai["reasoning_effort"] == "high"
    off = parse_chat_request({"model": MODEL, "think": False})
    assert off.openai["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in parse_chat_request({"model": MODEL}).openai


def test_unlimited_num_predict_and_small_num_ctx_are_left_to_the_engine() -> None:
    request = parse_chat_request({"model": MODEL, "options": {"num_predict": -1, "num_ctx": 0}})
    assert "max_tokens" not in request.openai
    assert request.num_ctx is None
    assert parse_chat_request({"model": MODEL, "options": {"num_ctx": "2048"}}).num_ctx == 2048
    assert parse_chat_request({"model": MODEL, "options": {"num_ctx": 2048.0}}).num_ctx == 2048


def test_format_schema_becomes_json_schema() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    request = parse_chat_request({"model": MODEL, "format": schema})
    assert request.openai["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "response_format" not in parse_chat_request({"model": MODEL, "format": ""}).openai


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body must be a JSON object, not an array"),
        ({}, "model is required"),
        ({"model": ""}, "model is required"),
        ({"model": 5}, "'model' must be a string, not a number"),
        ({"model": MODEL, "messages": "hi"}, "'messages' must be an array"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0] must be an object"),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role must be a non-empty string"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": 3}]},
            "messages[0].content must be a string",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "images": "x"}]},
            "must be an array of base64 strings",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "tool_calls": {}}]}, "tool_calls must be an array"),
        (
            {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": ""}}]}]},
            "function.name must be a non-empty string",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}
                ],
            },
            "function.arguments must be an object",
        ),
        ({"model": MODEL, "tools": {}}, "'tools' must be an array of objects"),
        ({"model": MODEL, "stream": "yes"}, "'stream' must be a boolean"),
        ({"model": MODEL, "options": []}, "'options' must be an object"),
        ({"model": MODEL, "options": {"temperature": "hot"}}, "'temperature' must be a number, not a string"),
        ({"model": MODEL, "options": {"temperature": True}}, "'temperature' must be a number, not a boolean"),
        ({"model": MODEL, "options": {"top_k": 1.5}}, "'top_k' must be an integer, not 1.5"),
        ({"model": MODEL, "options": {"stop": [1]}}, "'stop' must be a string or an array of strings"),
        ({"model": MODEL, "options": {"num_ctx": "big"}}, "'num_ctx' must be an integer"),
        ({"model": MODEL, "options": {"num_ctx": 2**40}}, "'num_ctx' 1099511627776 is too large"),
        ({"model": MODEL, "keep_alive": "soon"}, "'keep_alive' 'soon' is not a duration"),
        ({"model": MODEL, "keep_alive": True}, "'keep_alive' must be a duration"),
        ({"model": MODEL, "options": {"keep_alive": []}}, "'options.keep_alive' must be a duration"),
        ({"model": MODEL, "format": "xml"}, "'format' must be \"json\" or a JSON schema object"),
        ({"model": MODEL, "think": 1}, "'think' must be a boolean or one of high, medium, low"),
        ({"model": MODEL, "think": "max"}, "'think' must be a boolean or one of high, medium, low"),
    ],
)
def test_bad_chat_requests_are_400(body: object, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat_request(body)
    assert info.value.status == 400
    assert message in info.value.message


def test_generate_request_translation() -> None:
    request = parse_generate_request(
        {"model": MODEL, "prompt": "hi", "system": "be brief", "images": ["R0lGOD"], "stream": False}
    )
    assert request.stream is False
    assert request.openai["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGOD"}},
            ],
        },
    ]
    with pytest.raises(ApiError, match="'prompt' must be a string"):
        parse_generate_request({"model": MODEL, "prompt": 5})
    with pytest.raises(ApiError, match="'system' must be a string"):
        parse_generate_request({"model": MODEL, "prompt": "x", "system": ["a"]})


@pytest.mark.parametrize(
    ("body", "load_only", "unload"),
    [
        ({"model": MODEL}, True, False),  # Ollama: an empty prompt loads the model
        ({"model": MODEL, "prompt": ""}, True, False),
        ({"model": MODEL, "keep_alive": 0}, True, True),
        ({"model": MODEL, "keep_alive": "0s"}, True, True),
        ({"model": MODEL, "keep_alive": "0m"}, True, True),
        ({"model": MODEL, "keep_alive": "5m"}, True, False),
        ({"model": MODEL, "prompt": "hi", "keep_alive": 0}, False, False),  # answered, then unloaded
    ],
)
def test_empty_generate_loads_or_unloads(body: dict[str, Any], load_only: bool, unload: bool) -> None:
    request = parse_generate_request(body)
    assert (request.load_only, request.unload) == (load_only, unload)


def test_empty_chat_loads_or_unloads() -> None:
    assert parse_chat_request({"model": MODEL, "messages": []}).load_only
    assert parse_chat_request({"model": MODEL, "keep_alive": 0}).unload
    assert not parse_chat_request({"model": MODEL, "messages": [{"role": "user"}], "keep_alive": 0}).unload


# -- answers ----------------------------------------------------------------------------------------


COMPLETION = {
    "choices": [
        {
            "finish_reason": "stop",
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"},
        }
    ],
    "model": "engine-alias",
    "usage": {"completion_tokens": 10, "prompt_tokens": 23, "total_tokens": 33},
    "timings": {"prompt_ms": 199.986, "predicted_ms": 0.871},
}


def test_chat_response_shape_and_counters() -> None:
    answer = chat_response(MODEL, COMPLETION, now=NOW, total_ns=5_000_000, load_ns=1_000)
    assert answer == {
        "model": MODEL,
        "created_at": "2025-03-24T12:29:41.1234Z",
        "message": {"role": "assistant", "content": "Hello!", "thinking": "greet back"},
        "done_reason": "stop",
        "done": True,
        "total_duration": 5_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": 23,
        "prompt_eval_duration": 199_986_000,
        "eval_count": 10,
        "eval_duration": 871_000,
    }


def test_chat_response_tool_calls_have_object_arguments() -> None:
    completion = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
                        {"type": "function", "function": {"name": "b", "arguments": ""}},
                    ],
                },
            }
        ]
    }
    answer = chat_response(MODEL, completion, now=NOW, total_ns=1, load_ns=0)
    assert answer["done_reason"] == "stop"  # Ollama reports a tool call as a normal stop
    assert answer["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "function": {"index": 0, "name": "a", "arguments": {"x": 1}}},
            {"function": {"index": 1, "name": "b", "arguments": {}}},
        ],
    }
    assert "eval_count" not in answer  # not reported, so not invented


def test_tool_call_arguments_that_are_not_an_object_are_kept_as_text() -> None:
    calls = ollama_tool_calls([("", "f", "[1, 2]"), ("", "g", "{broken")])
    assert [c["function"]["arguments"] for c in calls] == ["[1, 2]", "{broken"]


def test_generate_response_and_length_reason() -> None:
    completion = {"choices": [{"finish_reason": "length", "message": {"content": "Hel"}}]}
    answer = generate_response(MODEL, completion, now=NOW, total_ns=9, load_ns=2)
    assert answer == {
        "model": MODEL,
        "created_at": "2025-03-24T12:29:41.1234Z",
        "response": "Hel",
        "done_reason": "length",
        "done": True,
        "total_duration": 9,
        "load_duration": 2,
    }


def test_load_and_unload_answers() -> None:
    assert load_response(MODEL, generate=True, unloaded=False, now=NOW) == {
        "model": MODEL,
        "created_at": "2025-03-24T12:29:41.1234Z",
        "response": "",
        "done_reason": "load",
        "done": True,
    }
    chat = load_response(MODEL, generate=False, unloaded=True, now=NOW)
    assert chat["message"] == {"role": "assistant", "content": ""}
    assert chat["done_reason"] == "unload"


def test_ollama_time() -> None:
    assert ollama_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
    assert ollama_time(datetime(2025, 1, 2, 3, 4, 5, 500000)) == "2025-01-02T03:04:05.5Z"
    east = datetime(2025, 1, 2, 7, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert ollama_time(east) == "2025-01-02T05:04:05Z"


# -- the stream state machine -----------------------------------------------------------------------


def clock() -> datetime:
    return NOW


def test_stream_translates_content_and_thinking_deltas() -> None:
    translator = StreamTranslator(MODEL, clock=clock)
    events = [
        chunk(None)
        | {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
        chunk(reasoning="hmm"),
        chunk("Hel"),
        chunk(""),  # nothing to say: no line
        chunk("lo"),
        chunk(finish="stop", timings={"prompt_ms": 2.0, "predicted_ms": 3.5}),
        chunk(usage={"completion_tokens": 2, "prompt_tokens": 5, "total_tokens": 7}),
        "[DONE]",
    ]
    out = [line for event in events for line in translator.feed(sse(event))]
    assert lines_of(out) == [
        {
            "model": MODEL,
            "created_at": "2025-03-24T12:29:41.1234Z",
            "message": {"role": "assistant", "content": "", "thinking": "hmm"},
            "done": False,
        },
        {
            "model": MODEL,
            "created_at": "2025-03-24T12:29:41.1234Z",
            "message": {"role": "assistant", "content": "Hel"},
            "done": False,
        },
        {
            "model": MODEL,
            "created_at": "2025-03-24T12:29:41.1234Z",
            "message": {"role": "assistant", "content": "lo"},
            "done": False,
        },
    ]
    [final] = lines_of(translator.finish(total_ns=10_000, load_ns=500))
    assert final == {
        "model": MODEL,
        "created_at": "2025-03-24T12:29:41.1234Z",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "total_duration": 10_000,
        "load_duration": 500,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 2_000_000,
        "eval_count": 2,
        "eval_duration": 3_500_000,
    }
    assert translator.finish(total_ns=1, load_ns=1) == []  # only one final line, ever


def test_stream_gathers_tool_call_fragments_into_one_call() -> None:
    translator = StreamTranslator(MODEL, clock=clock)
    out = [line for event in [*TOOL_CALL_EVENTS, "[DONE]"] for line in translator.feed(sse(event))]
    [calls_line] = lines_of(out)  # sent when the engine reported the finish reason
    assert calls_line["done"] is False
    assert calls_line["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call-1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    }
    [final] = lines_of(translator.finish(total_ns=1, load_ns=0))
    assert "tool_calls" not in final["message"]
    assert (final["done_reason"], final["eval_count"], final["prompt_eval_count"]) == ("stop", 16, 257)


def test_stream_sends_gathered_calls_at_the_end_without_a_finish_reason() -> None:
    translator = StreamTranslator(MODEL, clock=clock)
    for event in TOOL_CALL_EVENTS[:5]:
        assert translator.feed(sse(event)) == []
    calls, final = lines_of(translator.finish(total_ns=1, load_ns=0))
    assert calls["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert final["done"] is True


def test_stream_of_several_parallel_calls_keeps_their_order() -> None:
    translator = StreamTranslator(MODEL, clock=clock)
    translator.feed(sse(chunk(tool_calls=[{"index": 1, "function": {"name": "b", "arguments": "{}"}}])))
    translator.feed(sse(chunk(tool_calls=[{"index": 0, "function": {"name": "a", "arguments": '{"k":'}}])))
    translator.feed(sse(chunk(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}])))
    [line] = lines_of(translator.feed(sse(chunk(finish="tool_calls"))))
    calls = line["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("a", {"k": 1}),
        ("b", {}),
    ]


def test_stream_generate_shape() -> None:
    translator = StreamTranslator(MODEL, generate=True, clock=clock)
    out = translator.feed(sse(chunk("Hi", reasoning="think")))
    assert lines_of(out) == [
        {
            "model": MODEL,
            "created_at": "2025-03-24T12:29:41.1234Z",
            "response": "Hi",
            "thinking": "think",
            "done": False,
        }
    ]
    [final] = lines_of(translator.finish(total_ns=3, load_ns=1))
    assert final["response"] == "" and final["done"] is True and "message" not in final


def test_stream_error_event_ends_the_translation() -> None:
    translator = StreamTranslator(MODEL, clock=clock)
    translator.feed(sse(chunk("Hel")))
    out = translator.feed(
        sse({"error": {"code": 500, "message": "context shift is disabled", "type": "server_error"}})
    )
    assert lines_of(out) == [{"error": "context shift is disabled"}]
    assert translator.failed
    assert translator.feed(sse(chunk("more"))) == []
    assert translator.finish(total_ns=1, load_ns=0) == []


def test_stream_ignores_what_is_not_a_data_chunk() -> None:
    translator = StreamTranslator(MODEL, clock=clock)
    assert translator.feed(b": keep-alive\n\n") == []
    assert translator.feed(b"event: ping\n\n") == []
    assert translator.feed(b"data: not json\n\n") == []
    assert translator.feed(b"data: [1, 2]\n\n") == []
    # A data field split over two lines is one JSON text.
    out = translator.feed(b'data: {"choices": [{"delta":\ndata: {"content": "x"}}]}\r\n\r\n')
    assert lines_of(out)[0]["message"]["content"] == "x"


# -- errors -----------------------------------------------------------------------------------------


def test_render_ollama() -> None:
    status, headers, body = render_ollama(ApiError(404, "model 'x' not found", headers=[(b"x-a", b"1")]))
    assert status == 404
    assert (b"content-type", b"application/json; charset=utf-8") in headers
    assert (b"x-a", b"1") in headers
    assert json.loads(body) == {"error": "model 'x' not found"}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            b'{"error":{"code":400,"message":"n must be 1","type":"invalid_request_error"}}',
            (400, "n must be 1"),
        ),
        (
            500,
            b'{"error":{"code":500,"message":"[json.exception.type_error.302] x","type":"server_error"}}',
            (400, "[json.exception.type_error.302] x"),
        ),
        (
            500,
            b'{"error":{"code":500,"message":"Failed to parse messages: y","type":"server_error"}}',
            (400, "Failed to parse messages: y"),
        ),
        (
            500,
            b'{"error":{"code":500,"message":"CUDA out of memory","type":"server_error"}}',
            (500, "CUDA out of memory"),
        ),
        (503, b'{"error":"Loading model"}', (503, "Loading model")),
        (502, b"bad gateway\n", (502, "bad gateway")),
        (500, b"", (500, "the engine answered 500")),
    ],
)
def test_engine_errors_keep_status_and_message(status: int, body: bytes, expected: tuple[int, str]) -> None:
    error = engine_error(status, body)
    assert (error.status, error.message) == expected


# -- listings and pull progress ---------------------------------------------------------------------


def test_tags_lists_each_tag_and_untagged_models_by_id() -> None:
    tagged = model_object(MODEL_ID, ["docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:360m"])
    untagged = model_object("sha256:" + "9" * 64, [])
    answer = tags_response([tagged, untagged])
    details = {
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "361.82M",
        "quantization_level": "Q4_K_M",
    }
    assert answer == {
        "models": [
            {
                "name": "docker.io/ai/smollm2:latest",
                "model": "docker.io/ai/smollm2:latest",
                "modified_at": "2025-03-24T11:49:41Z",
                "size": 0,
                "digest": MODEL_ID,
                "details": details,
            },
            {
                "name": "docker.io/ai/smollm2:360m",
                "model": "docker.io/ai/smollm2:360m",
                "modified_at": "2025-03-24T11:49:41Z",
                "size": 0,
                "digest": MODEL_ID,
                "details": details,
            },
            {
                "name": untagged["id"],
                "model": untagged["id"],
                "modified_at": "2025-03-24T11:49:41Z",
                "size": 0,
                "digest": untagged["id"],
                "details": details,
            },
        ]
    }


def test_show_has_details_and_model_info() -> None:
    answer = show_response(model_object())
    assert answer["details"]["quantization_level"] == "Q4_K_M"
    assert answer["model_info"] == {"general.architecture": "llama", "llama.context_length": 8192}
    assert answer["modified_at"] == "2025-03-24T11:49:41Z"
    bare = show_response({"id": MODEL_ID, "config": {}})
    assert bare["model_info"] == {}
    assert bare["details"]["families"] == []


@dataclass(frozen=True)
class GpuRow(FakeRow):
    reserved_by_device: dict[str, int] = field(default_factory=dict)


def test_ps_rows() -> None:
    last = datetime(2025, 3, 24, 12, 0, tzinfo=UTC)
    idle = GpuRow(
        "llama.cpp",
        MODEL,
        MODEL_ID,
        EngineMode.COMPLETION,
        last,
        False,
        False,
        300.0,
        1000,
        800,
        reserved_by_device={"ram": 200, "cuda:0": 800},
    )
    busy = FakeRow(
        "llama.cpp",
        "ai/other",
        "sha256:" + "8" * 64,
        EngineMode.COMPLETION,
        None,
        True,
        False,
        300.0,
        500,
        None,
    )
    pinned = FakeRow(
        "llama.cpp",
        "ai/pinned",
        "sha256:" + "7" * 64,
        EngineMode.COMPLETION,
        last,
        False,
        False,
        -1.0,
        5,
        None,
    )
    answer = ps_response([idle, busy, pinned], [model_object(), None, None])
    first, second, third = answer["models"]
    assert first == {
        "name": "docker.io/ai/smollm2:latest",
        "model": "docker.io/ai/smollm2:latest",
        "size": 800,  # measured wins over reserved
        "digest": MODEL_ID,
        "details": first["details"],
        "expires_at": "2025-03-24T12:05:00Z",
        "size_vram": 800,
    }
    assert first["details"]["family"] == "llama"
    assert second == {
        "name": "ai/other",
        "model": "ai/other",
        "size": 500,
        "digest": busy.model_id,
        "expires_at": "0001-01-01T00:00:00Z",
    }
    assert third["expires_at"] == "0001-01-01T00:00:00Z"  # never unloads


def test_pull_status_lines() -> None:
    layer = "sha256:" + "abcdef012345" + "6" * 52
    assert pull_status(ProgressEvent.transfer(Mode.PULL, 300, layer, 200, 50)) == {
        "status": "pulling abcdef012345",
        "digest": layer,
        "total": 200,
        "completed": 50,
    }
    assert pull_status(ProgressEvent.transfer(Mode.PULL, 300, layer, 200, 0)) == {
        "status": "pulling abcdef012345",
        "digest": layer,
        "total": 200,
    }
    assert pull_status(ProgressEvent.info(Mode.PULL, "Fetching file list...")) == {
        "status": "pulling manifest"
    }
    assert pull_status(ProgressEvent.success(Mode.PULL, "Model pulled successfully")) == {"status": "success"}
    assert pull_status(ProgressEvent(EventType.WARNING, "slow mirror", Mode.PULL)) == {
        "status": "slow mirror"
    }
    assert pull_status(ProgressEvent(EventType.ERROR, "Error: boom", Mode.PULL)) == {"error": "Error: boom"}
    odd = ProgressEvent(EventType.PROGRESS, "x", Mode.PULL, 5, LayerProgress("md5:12", 5, 5))
    assert pull_status(odd)["status"] == "pulling md5:12"


# -- routing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/api/version", RouteKind.OLLAMA_VERSION),
        ("HEAD", "/api/version", RouteKind.OLLAMA_VERSION),
        ("GET", "/api/tags", RouteKind.OLLAMA_TAGS),
        ("GET", "/api/ps", RouteKind.OLLAMA_PS),
        ("POST", "/api/show", RouteKind.OLLAMA_SHOW),
        ("POST", "/api/chat", RouteKind.OLLAMA_CHAT),
        ("POST", "/api/generate", RouteKind.OLLAMA_GENERATE),
        ("POST", "/api/pull", RouteKind.OLLAMA_PULL),
        ("DELETE", "/api/delete", RouteKind.OLLAMA_DELETE),
        ("POST", "/api/tags", RouteKind.METHOD_NOT_ALLOWED),
        ("GET", "/api/chat", RouteKind.METHOD_NOT_ALLOWED),
        ("POST", "/api/embed", RouteKind.NOT_FOUND),
        ("GET", "/api/chat/x", RouteKind.NOT_FOUND),
        ("GET", "/api", RouteKind.NOT_FOUND),
    ],
)
def test_ollama_routes(method: str, path: str, kind: RouteKind) -> None:
    matched = route(method, path)
    assert matched.kind is kind
    if path != "/api":  # not below /api/: the root's plain 404
        assert matched.cors
        assert matched.style is ErrorStyle.OLLAMA


def test_method_not_allowed_names_the_method() -> None:
    assert route("POST", "/api/tags").allow == "GET, HEAD"
    assert route("GET", "/api/delete").allow == "DELETE"


# -- handlers over fakes ----------------------------------------------------------------------------


@dataclass
class RecordingScheduler(FakeScheduler):
    """The fake scheduler, also recording the per-request keep_alive and refusing configure on cue."""

    keep_alives: list[float | None] = field(default_factory=list)
    configure_error: Exception | None = None

    def acquire(  # type: ignore[override]
        self,
        model: str,
        mode: EngineMode = EngineMode.COMPLETION,
        backend: str | None = None,
        *,
        keep_alive: float | None = None,
    ) -> Any:
        self.keep_alives.append(keep_alive)
        return super().acquire(model, mode, backend, keep_alive=keep_alive)

    async def configure(self, request: Any, *, preload: bool = False) -> object:
        if self.configure_error is not None:
            self.calls.append(("configure-refused", request))
            raise self.configure_error
        return await super().configure(request, preload=preload)


@pytest.fixture
def fakes() -> Fakes:
    return Fakes(RecordingScheduler(), FakeBackends(), FakeModels())


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_version_tags_show(served: Served) -> None:
    response = await served.client.get("/api/version")
    assert (response.status_code, response.json()) == (200, {"version": "0.1.0"})
    assert response.headers["content-type"] == "application/json"
    response = await served.client.get("/api/tags")
    assert [m["name"] for m in response.json()["models"]] == ["docker.io/ai/smollm2:latest"]
    response = await served.client.post("/api/show", json={"model": MODEL})
    assert response.json()["details"]["parameter_size"] == "361.82M"
    response = await served.client.post("/api/show", json={"name": "ai/missing"})
    assert (response.status_code, response.json()) == (404, {"error": "model 'ai/missing' not found"})
    response = await served.client.post("/api/show", json={})
    assert (response.status_code, response.json()) == (400, {"error": "model is required"})
    response = await served.client.post("/api/show", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid request: the body is not valid JSON")


async def test_ps_looks_up_each_runner_model(served: Served) -> None:
    last = datetime.now(UTC) - timedelta(seconds=30)
    served.fakes.scheduler.rows = [
        FakeRow("llama.cpp", MODEL, MODEL_ID, EngineMode.COMPLETION, last, False, False, 60.0, 100, None),
        FakeRow(
            "llama.cpp",
            "ai/gone",
            "sha256:" + "5" * 64,
            EngineMode.COMPLETION,
            None,
            True,
            True,
            60.0,
            7,
            None,
        ),
    ]
    response = await served.client.get("/api/ps")
    first, second = response.json()["models"]
    assert first["name"] == "docker.io/ai/smollm2:latest"
    assert first["expires_at"] == ollama_time(last + timedelta(seconds=60))
    assert (second["name"], second["size"], "details" in second) == ("ai/gone", 7, False)


async def test_wrong_method_and_unknown_path(served: Served) -> None:
    response = await served.client.post("/api/tags")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"error": "method POST not allowed: use GET, HEAD"}
    response = await served.client.post("/api/embed", json={})
    assert (response.status_code, response.json()) == (404, {"error": "not found"})


async def test_cors_applies(served: Served) -> None:
    response = await served.client.get("/api/tags", headers={"Origin": "http://localhost:3000"})
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    response = await served.client.get("/api/tags", headers={"Origin": "http://evil.example"})
    assert (response.status_code, response.text) == (403, "Origin not allowed\n")
    response = await served.client.options("/api/chat", headers={"Origin": "http://localhost"})
    assert response.status_code == 204
    assert response.headers["access-control-allow-methods"] == "GET, POST, DELETE"


async def test_delete_unloads_then_deletes(served: Served) -> None:
    response = await served.client.request("DELETE", "/api/delete", json={"model": MODEL})
    assert (response.status_code, response.json()) == (200, {})
    scheduler_calls = [c for c in served.fakes.scheduler.calls if c[0] == "unload"]
    assert scheduler_calls == [("unload", False, None, (MODEL,))]
    assert served.fakes.models.calls[-1] == ("delete", MODEL, False)
    response = await served.client.request("DELETE", "/api/delete", json={"model": "ai/missing"})
    assert response.status_code == 404
    assert "ai/missing" in response.json()["error"]
    response = await served.client.request("DELETE", "/api/delete", json={"model": ["x"]})
    assert response.status_code == 400


async def test_pull_streams_translated_progress(served: Served) -> None:
    response = await served.client.post("/api/pull", json={"model": MODEL})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    layer = "sha256:" + "3" * 64
    assert lines == [
        {"status": "pulling 333333333333", "digest": layer, "total": 300, "completed": 100},
        {"status": "pulling 333333333333", "digest": layer, "total": 300, "completed": 200},
        {"status": "pulling 333333333333", "digest": layer, "total": 300, "completed": 300},
        {"status": "success"},
    ]
    assert served.fakes.models.calls[-1] == ("pull", MODEL, None)


async def test_pull_without_stream_and_failures(served: Served) -> None:
    response = await served.client.post("/api/pull", json={"name": MODEL, "stream": False})
    assert (response.status_code, response.json()) == (200, {"status": "success"})
    served.fakes.models.fail_pull_before = RemoteNotFound("manifest unknown", status=404)
    response = await served.client.post("/api/pull", json={"name": "ai/nope"})
    assert response.status_code == 404
    assert response.json() == {"error": "Failed to pull model: manifest unknown"}
    served.fakes.models.fail_pull_before = None
    served.fakes.models.fail_pull_after = RuntimeError("disk full")
    response = await served.client.post("/api/pull", json={"name": MODEL})
    assert response.status_code == 200  # progress had started
    last = json.loads(response.text.splitlines()[-1])
    assert last == {"error": "Failed to pull model: internal error: RuntimeError: disk full"}
    response = await served.client.post("/api/pull", json={"name": MODEL, "insecure": "yes"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid request: 'insecure' must be a boolean"},
    )


async def test_chat_single_answer_over_a_scripted_engine(fakes: Fakes, tmp_path: Path) -> None:
    def answer(request: EngineRequest) -> list[bytes]:
        return json_answer(COMPLETION)

    async with scripted_engine(tmp_path, answer) as engine, serve_fakes(fakes, tmp_path) as served:
        fakes.scheduler.socket_path = engine.path
        response = await served.client.post(
            "/api/chat", json=chat_body(stream=False, keep_alive="2m", options={"num_predict": 5})
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["model"] == MODEL
        assert body["message"] == {"role": "assistant", "content": "Hello!", "thinking": "greet back"}
        assert (body["done"], body["done_reason"], body["eval_count"]) == (True, "stop", 10)
        assert body["total_duration"] >= body["load_duration"] >= 0
        [sent] = engine.requests
        assert (sent.method, sent.target) == ("POST", "/v1/chat/completions")
        assert sent.headers["host"] == "localhost"
        assert sent.json() == {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        }
    assert fakes.scheduler.keep_alives == [120.0]  # type: ignore[attr-defined]
    assert fakes.scheduler.calls[-1] == ("acquire", MODEL, EngineMode.COMPLETION, None)
    assert fakes.scheduler.released == 1


async def test_chat_stream_over_a_scripted_engine(fakes: Fakes, tmp_path: Path) -> None:
    events = [
        chunk("Hel"),
        chunk("lo"),
        chunk(finish="stop"),
        chunk(usage={"completion_tokens": 2, "prompt_tokens": 5, "total_tokens": 7}),
        "data: [DONE]\n\n",
    ]
    async with (
        scripted_engine(tmp_path, lambda request: sse_answer(events)) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        async with served.client.stream("POST", "/api/chat", json=chat_body()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.headers["transfer-encoding"] == "chunked"
            lines = [json.loads(line) async for line in response.aiter_lines()]
        assert engine.requests[0].json()["stream_options"] == {"include_usage": True}
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert (lines[-1]["eval_count"], lines[-1]["prompt_eval_count"]) == (2, 5)


async def test_generate_stream_with_tool_fragments_and_single(fakes: Fakes, tmp_path: Path) -> None:
    async with (
        scripted_engine(
            tmp_path, lambda request: sse_answer([chunk("A"), chunk("B"), "data: [DONE]\n\n"])
        ) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        response = await served.client.post("/api/generate", json={"model": MODEL, "prompt": "x"})
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert [line["response"] for line in lines] == ["A", "B", ""]
        assert engine.requests[0].json()["messages"] == [{"role": "user", "content": "x"}]
        engine.answer = lambda request: sse_answer([*TOOL_CALL_EVENTS, "data: [DONE]\n\n"])
        response = await served.client.post("/api/chat", json=chat_body())
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert len(lines) == 2
        assert lines[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
        engine.answer = lambda request: json_answer(COMPLETION)
        response = await served.client.post(
            "/api/generate", json={"model": MODEL, "prompt": "x", "stream": False}
        )
        assert (response.json()["response"], response.json()["thinking"]) == ("Hello!", "greet back")


async def test_engine_errors_become_ollama_errors(fakes: Fakes, tmp_path: Path) -> None:
    replies = iter(
        [
            json_answer(
                {"error": {"code": 400, "message": "n must be 1", "type": "invalid_request_error"}},
                400,
                "Bad",
            ),
            json_answer(
                {"error": {"code": 500, "message": "[json.exception.x] bad", "type": "server_error"}},
                500,
                "E",
            ),
            sse_answer([chunk("Hel"), {"error": {"code": 500, "message": "kv cache full"}}]),
        ]
    )
    async with (
        scripted_engine(tmp_path, lambda request: next(replies)) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        response = await served.client.post("/api/chat", json=chat_body(stream=False))
        assert (response.status_code, response.json()) == (400, {"error": "n must be 1"})
        response = await served.client.post("/api/chat", json=chat_body())
        assert (response.status_code, response.json()) == (400, {"error": "[json.exception.x] bad"})
        response = await served.client.post("/api/chat", json=chat_body())
        assert response.status_code == 200  # the stream had started: the error is its last line
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines == [lines[0], {"error": "kv cache full"}]
        assert lines[0]["message"]["content"] == "Hel"
    assert fakes.scheduler.released == 3
    assert all(not lease.broken for lease in fakes.scheduler.leases)


async def test_engine_that_is_gone_is_502(fakes: Fakes, tmp_path: Path) -> None:
    async with serve_fakes(fakes, tmp_path) as served:
        fakes.scheduler.socket_path = tmp_path / "no-engine.sock"
        response = await served.client.post("/api/chat", json=chat_body())
        assert response.status_code == 502
        assert "not reachable" in response.json()["error"]
        assert fakes.scheduler.leases[-1].broken


async def test_engine_breaking_mid_stream_drops_the_client(fakes: Fakes, tmp_path: Path) -> None:
    async with (
        scripted_engine(tmp_path, lambda request: sse_answer([chunk("Hel")], end=False)) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        with pytest.raises(httpx.RemoteProtocolError):  # dropped: never mistaken for a whole answer
            await served.client.post("/api/chat", json=chat_body())
        with trio.fail_after(5):
            await fakes.scheduler.released_event.wait()
    [reason] = fakes.scheduler.leases[-1].broken
    assert "mid-response" in reason


async def test_unknown_model_and_bad_bodies(served: Served) -> None:
    response = await served.client.post("/api/chat", json=chat_body(model="ai/missing"))
    assert response.status_code == 404
    assert "ai/missing" in response.json()["error"]
    common = [b"", b"{", b"[]", b'{"model": 1}', b"\xff\xfe"]
    cases = [
        (path, body) for path in ("/api/chat", "/api/generate", "/api/show", "/api/pull") for body in common
    ]
    cases += [("/api/chat", b'{"model": "ai/smollm2", "messages": 1}')]
    cases += [("/api/generate", b'{"model": "ai/smollm2", "prompt": 1}')]
    for path, body in cases:
        response = await served.client.post(path, content=body)
        assert response.status_code == 400, (path, body, response.text)
        assert isinstance(response.json()["error"], str)


async def test_body_over_the_limit_is_413(fakes: Fakes, tmp_path: Path) -> None:
    async with serve_fakes(fakes, tmp_path, body_limit=1000) as served:
        response = await served.client.post("/api/chat", json=chat_body(pad="x" * 2000))
        assert response.status_code == 413
        assert "exceeds 1000 bytes" in response.json()["error"]


async def test_empty_requests_load_and_unload(served: Served) -> None:
    response = await served.client.post("/api/generate", json={"model": MODEL})
    body = response.json()
    assert (body["done"], body["done_reason"], body["response"]) == (True, "load", "")
    assert served.fakes.scheduler.calls[-1] == ("acquire", MODEL, EngineMode.COMPLETION, None)
    assert served.fakes.scheduler.released == 1  # loaded, not held
    response = await served.client.post("/api/chat", json={"model": MODEL, "keep_alive": 0})
    assert response.json()["done_reason"] == "unload"
    assert response.json()["message"] == {"role": "assistant", "content": ""}
    assert served.fakes.scheduler.calls[-1] == ("unload", False, None, (MODEL,))
    assert len([c for c in served.fakes.scheduler.calls if c[0] == "acquire"]) == 1


async def test_num_ctx_is_configured_once_keeping_other_settings(fakes: Fakes, tmp_path: Path) -> None:
    stored = ModelConfig(
        backend="llama.cpp",
        model_id=MODEL_ID,
        model=MODEL,
        mode=EngineMode.COMPLETION,
        context_size=2048,
        runtime_flags=("--threads", "4"),
        keep_alive=600.0,
    )
    fakes.scheduler.configs_ = [stored]
    async with (
        scripted_engine(tmp_path, lambda request: json_answer(COMPLETION)) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        response = await served.client.post(
            "/api/chat", json=chat_body(stream=False, options={"num_ctx": 8192})
        )
        assert response.status_code == 200
        [(_, request, preload)] = [c for c in fakes.scheduler.calls if c[0] == "configure"]
        assert (request.model, request.context_size, request.mode) == (MODEL, 8192, EngineMode.COMPLETION)
        assert (request.runtime_flags, request.keep_alive, request.backend) == (
            ("--threads", "4"),
            600.0,
            "llama.cpp",
        )
        assert preload is False
        assert "num_ctx" not in json.dumps(engine.requests[-1].json())
        # Already the stored size: nothing to configure.
        fakes.scheduler.configs_ = [
            ModelConfig("llama.cpp", MODEL_ID, MODEL, EngineMode.COMPLETION, context_size=8192)
        ]
        await served.client.post("/api/chat", json=chat_body(stream=False, options={"num_ctx": 8192}))
        assert len([c for c in fakes.scheduler.calls if c[0] == "configure"]) == 1
        # A busy runner keeps its settings; the request is still answered.
        fakes.scheduler.configure_error = RunnerInUse(MODEL)  # type: ignore[attr-defined]
        response = await served.client.post(
            "/api/chat", json=chat_body(stream=False, options={"num_ctx": 1024})
        )
        assert response.status_code == 200
        assert [c[0] for c in fakes.scheduler.calls].count("configure-refused") == 1


async def test_client_leaving_mid_stream_releases_the_runner(fakes: Fakes, tmp_path: Path) -> None:
    endless = [chunk(f"t{i}") for i in range(2000)]
    async with (
        scripted_engine(tmp_path, lambda request: sse_answer(endless)) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        async with served.client.stream("POST", "/api/chat", json=chat_body()) as response:
            seen = 0
            async for _ in response.aiter_lines():
                seen += 1
                if seen == 3:
                    break
        with trio.fail_after(5):
            await fakes.scheduler.released_event.wait()
    assert fakes.scheduler.released == 1
