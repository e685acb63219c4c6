"""The Responses API translation (`api/_responses.py`): requests to chat completions, answers and
streams back, and the store. Pure; every object and event is checked against the official SDK's
types, which is what clients parse them with."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelrunner.api._errors import ApiError
from modelrunner.api._responses import (
    RESPONSE_ID_PREFIX,
    CreateRequest,
    ResponseStore,
    StreamTranslator,
    deleted_object,
    input_items_page,
    new_item_id,
    new_response_id,
    output_messages,
    parse_create_request,
    previous_response_not_found,
    response_not_found,
    response_object,
)
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.api.scripted_engine import TOOL_CALL_EVENTS, chunk, sse

MODEL = "ai/smollm2"
CREATED = 1_742_819_381
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

def text_stream(*pieces: str, finish: str = "stop") -> list[dict[str, Any] | str]:
    """A llama-server text answer: the role chunk, one chunk per piece, the finish reason, usage."""
    return [
        chunk(None)
        | {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
        *[chunk(piece) for piece in pieces],
        chunk(finish=finish),
        chunk(usage={"completion_tokens": len(pieces), "prompt_tokens": 9, "total_tokens": 9 + len(pieces)}),
        "[DONE]",
    ]


def request(**fields: Any) -> CreateRequest:
    return parse_create_request({"model": MODEL, "input": "Hello", **fields})


def chat_of(req: CreateRequest, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(req.chat_body(history or []))
    return body


def completion(
    message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": "engine-alias",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def events_of(data: list[bytes]) -> list[dict[str, Any]]:
    """Each SSE event's JSON, after checking its framing and that the SDK parses it."""
    out = []
    for piece in data:
        assert piece.endswith(b"\n\n") and piece.count(b"\n") == 3, piece
        name_line, data_line, _, _ = piece.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        payload = json.loads(data_line[len(b"data: ") :])
        assert payload["type"] == name_line[len(b"event: ") :].decode()
        STREAM_EVENT.validate_python(payload)
        out.append(payload)
    return out


def run_stream(
    engine_events: list[dict[str, Any] | str], req: CreateRequest | None = None
) -> tuple[StreamTranslator, list[dict[str, Any]], list[int]]:
    """Feed a whole engine stream; return the translator, every event out, and how many events
    each engine event gave."""
    translator = StreamTranslator(req or request(stream=True), response_id="resp_test", created_at=CREATED)
    out = translator.start()
    counts = []
    for event in engine_events:
        produced = translator.feed(sse(event))
        counts.append(len(produced))
        out.extend(produced)
    out.extend(translator.finish())
    return translator, events_of(out), counts


def sdk_stream_result(events: list[dict[str, Any]]) -> Any:
    """What the SDK's own stream accumulator (`client.responses.stream`) makes of the events; it
    raises on any inconsistency between added, delta and done events."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for payload in events:
        for handled in state.handle_event(STREAM_EVENT.validate_python(payload)):
            if handled.type in ("response.completed", "response.incomplete", "response.failed"):
                final = handled.response
    return final


# -- ids ---------------------------------------------------------------------------------------------


def test_ids_look_like_dmr_ones() -> None:
    assert re.fullmatch(r"resp_[a-z0-9]{24}", new_response_id())
    assert new_response_id().startswith(RESPONSE_ID_PREFIX)
    assert re.fullmatch(r"fc_[a-z0-9]{24}", new_item_id("fc"))
    assert new_response_id() != new_response_id()


# -- requests ----------------------------------------------------------------------------------------


def test_string_input_and_defaults() -> None:
    req = request()
    assert (req.model, req.stream, req.store, req.previous_response_id, req.instructions) == (
        MODEL,
        False,
        True,
        None,
        None,
    )
    assert req.input_messages == [{"role": "user", "content": "Hello"}]
    [item] = req.input_items
    assert item["type"] == "message" and item["role"] == "user" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "Hello"}]
    assert chat_of(req) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": False,
    }


def test_message_list_with_parts_images_and_roles() -> None:
    req = parse_create_request(
        {
            "model": MODEL,
            "input": [
                {"role": "developer", "content": "Be brief."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "Hel"},
                        {"type": "output_text", "text": "lo"},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,iVBOR", "detail": "low"},
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
                },
            ],
        }
    )
    assert req.input_messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "low"}},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    # The input items keep the Responses shapes (and the developer role) and parse as the SDK's list.
    assert [item["role"] for item in req.input_items] == ["developer", "user", "assistant", "user", "user"]
    assert req.input_items[3]["content"][1] == {
        "type": "input_image",
        "image_url": "data:image/png;base64,iVBOR",
        "detail": "low",
        "file_id": None,
    }
    ResponseItemList.model_validate(input_items_page(req.input_items))


def test_function_call_round_trip_becomes_tool_messages() -> None:
    req = parse_create_request(
        {
            "model": MODEL,
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "message", "role": "assistant", "content": "Let me check."},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call",
                    "id": "fc_2",
                    "call_id": "c2",
                    "name": "get_weather",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},  # replayed output: skipped
            ],
        }
    )
    assert req.input_messages == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "tool", "content": "rain", "tool_call_id": "c2"},
    ]
    kinds = [(item["type"], item.get("call_id")) for item in req.input_items]
    assert kinds == [
        ("message", None),
        ("message", None),
        ("function_call", "c1"),
        ("function_call", "c2"),
        ("function_call_output", "c1"),
        ("function_call_output", "c2"),
    ]
    assert req.input_items[3]["id"] == "fc_2"
    ResponseItemList.model_validate(input_items_page(req.input_items))


def test_function_call_without_a_preceding_assistant_message() -> None:
    req = request(input=[{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}])
    assert req.input_messages == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    ]


def test_instructions_come_first_then_history_then_input() -> None:
    req = request(instructions="You are terse.", input=[{"role": "user", "content": "Again"}])
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert chat_of(req, history)["messages"] == [
        {"role": "system", "content": "You are terse."},
        *history,
        {"role": "user", "content": "Again"},
    ]


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"include": ["reasoning.encrypted_content"]}, "include", "include is not supported"),
        (
            {"stream_options": {"include_obfuscation": False}},
            "stream_options",
            "stream_options is not supported",
        ),
        ({"top_logprobs": 0}, "top_logprobs", "top_logprobs is not supported"),
        ({"truncation": "auto"}, "truncation", 'truncation value "auto" is not supported'),
        ({"background": True}, "background", "background responses are not supported"),
        ({"conversation": "conv_1"}, "conversation", "use previous_response_id instead"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "prompt is not supported"),
        ({"service_tier": "auto"}, "service_tier", "service_tier is not supported"),
        ({"safety_identifier": "user-1"}, "safety_identifier", "safety_identifier is not supported"),
    ],
)
def test_fields_dmr_rejects(fields: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        request(**fields)
    error = caught.value
    assert (error.status, error.param, error.code) == (400, param, "invalid_request")
    assert message in error.message
    assert "Docker Model Runner Responses compatibility layer" in error.message


def test_harmless_values_of_those_fields_are_accepted() -> None:
    req = request(
        include=[],
        truncation="disabled",
        background=False,
        conversation=None,
        service_tier="",
        stream_options=None,
    )
    assert req.input_messages == [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"input": "Hello"}, "model", "model is required"),
        ({"model": "", "input": "Hello"}, "model", "model is required"),
        ({"model": 5}, "model", "'model' must be a string"),
        ({"model": MODEL, "input": 5}, "input", "'input' must be a string or an array"),
        ({"model": MODEL, "input": [5]}, "input[0]", "'input[0]' must be an object"),
        ({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "must be one of"),
        (
            {"model": MODEL, "input": [{"role": "user", "content": 5}]},
            "input[0].content",
            "a string or an array",
        ),
        (
            {
                "model": MODEL,
                "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
            },
            "input[0].content[0].type",
            "input_file content is not supported",
        ),
        (
            {
                "model": MODEL,
                "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],
            },
            "input[0].content[0].image_url",
            "file_id is not supported",
        ),
        (
            {"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]},
            "input[0].type",
            "item_reference",
        ),
        ({"model": MODEL, "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id", "call_id"),
        (
            {"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
            "input[0].output",
            "must be a string",
        ),
        ({"model": MODEL, "stream": "yes"}, "stream", "'stream' must be a boolean"),
        ({"model": MODEL, "store": 1}, "store", "'store' must be a boolean"),
        ({"model": MODEL, "instructions": ["x"]}, "instructions", "'instructions' must be a string"),
        ({"model": MODEL, "temperature": "hot"}, "temperature", "'temperature' must be a number"),
        ({"model": MODEL, "max_output_tokens": 0}, "max_output_tokens", "positive integer"),
        ({"model": MODEL, "tools": {"type": "function"}}, "tools", "'tools' must be an array"),
        (
            {"model": MODEL, "tools": [{"type": "web_search"}]},
            "tools[0]",
            'tool type "web_search" is not supported',
        ),
        ({"model": MODEL, "tools": [{"type": "function"}]}, "tools[0].name", "non-empty string"),
        ({"model": MODEL, "tool_choice": "sometimes"}, "tool_choice", "'tool_choice' must be"),
        (
            {"model": MODEL, "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
            "required",
        ),
        (
            {"model": MODEL, "text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}},
            "text.format.name",
            "only letters, numbers",
        ),
        (
            {"model": MODEL, "text": {"format": {"type": "json_schema", "name": "x", "schema": []}}},
            "text.format.schema",
            "must be a JSON object",
        ),
        (
            {"model": MODEL, "text": {"format": {"type": "yaml"}}},
            "text.format.type",
            'unsupported text.format.type "yaml"',
        ),
        ({"model": MODEL, "metadata": {"a": 1}}, "metadata", "string values"),
        ({"model": MODEL, "reasoning": {"effort": "extreme"}}, "reasoning.effort", "must be one of"),
    ],
)
def test_bad_requests_are_400_naming_the_field(body: object, param: str, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_create_request(body)
    assert (caught.value.status, caught.value.param) == (400, param)
    assert message in caught.value.message


def test_a_body_that_is_not_an_object() -> None:
    with pytest.raises(ApiError, match="must be a JSON object") as caught:
        parse_create_request(["model"])
    assert caught.value.status == 400


def test_chat_body_translates_tools_format_and_sampling() -> None:
    req = request(
        tools=[
            WEATHER,
            {"type": "function", "function": {"name": "chat_shaped", "parameters": {"type": "object"}}},
        ],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
        parallel_tool_calls=False,
        user="u1",
        reasoning={"effort": "low"},
        text={
            "format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}
        },
        metadata={"run": "1"},
    )
    body = chat_of(req)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER["parameters"],
            },
        },
        {"type": "function", "function": {"name": "chat_shaped", "parameters": {"type": "object"}}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True},
    }
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["parallel_tool_calls"]) == (
        0.2,
        0.9,
        64,
        False,
    )
    assert (body["user"], body["reasoning_effort"]) == ("u1", "low")
    assert "stream_options" not in body and body["stream"] is False
    assert "metadata" not in body and "max_output_tokens" not in body and "text" not in body


def test_chat_body_json_object_and_plain_text_formats() -> None:
    assert chat_of(request(text={"format": {"type": "json_object"}}))["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in chat_of(request(text={"format": {"type": "text"}, "verbosity": "low"}))
    assert chat_of(request(tool_choice="required"))["tool_choice"] == "required"


def test_streaming_asks_for_usage() -> None:
    body = chat_of(request(stream=True))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


# -- answers -----------------------------------------------------------------------------------------


def test_text_answer_is_a_valid_response() -> None:
    req = request(tools=[WEATHER], temperature=0.5, metadata={"k": "v"}, instructions="Be kind.")
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    obj = response_object(
        req, completion({"content": "Hi there!"}, usage=usage), response_id="resp_1", created_at=CREATED
    )
    parsed = Response.model_validate(obj)
    assert parsed.output_text == "Hi there!"
    assert (parsed.id, parsed.model, parsed.status, parsed.created_at) == (
        "resp_1",
        MODEL,
        "completed",
        CREATED,
    )
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (12, 3, 15)
    assert parsed.usage.input_tokens_details.cached_tokens == 8
    assert parsed.usage.output_tokens_details.reasoning_tokens == 0
    assert (parsed.instructions, parsed.temperature, parsed.metadata, parsed.store) == (
        "Be kind.",
        0.5,
        {"k": "v"},
        True,
    )
    assert parsed.tools[0].type == "function" and parsed.tools[0].name == "get_weather"
    assert (parsed.tool_choice, parsed.parallel_tool_calls, parsed.incomplete_details) == ("auto", True, None)
    [message] = obj["output"]
    assert (
        message["type"] == "message" and message["status"] == "completed" and message["id"].startswith("msg_")
    )


def test_tool_call_answer() -> None:
    req = request(tools=[WEATHER], tool_choice="required")
    engine_message = {
        "content": None,
        "tool_calls": [
            {
                "id": "call-1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ],
    }
    obj = response_object(
        req, completion(engine_message, "tool_calls"), response_id="resp_2", created_at=CREATED
    )
    parsed = Response.model_validate(obj)
    assert parsed.status == "completed" and parsed.output_text == ""
    calls = [
        (item.type, getattr(item, "name", None), getattr(item, "arguments", None)) for item in parsed.output
    ]
    assert calls == [
        ("function_call", "get_weather", '{"city":"Paris"}'),
        ("function_call", "get_weather", '{"city": "Rome"}'),
    ]
    assert obj["output"][0]["call_id"] == "call-1"
    assert obj["output"][1]["call_id"].startswith("call_")  # the engine gave none
    assert all(item["id"].startswith("fc_") for item in obj["output"])


def test_text_and_tool_call_keep_the_order_they_were_written_in() -> None:
    engine_message = {
        "content": "Checking.",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    obj = response_object(
        request(), completion(engine_message, "tool_calls"), response_id="resp_3", created_at=CREATED
    )
    assert [item["type"] for item in obj["output"]] == ["message", "function_call"]
    assert Response.model_validate(obj).output_text == "Checking."


def test_length_truncated_answer_is_incomplete() -> None:
    obj = response_object(
        request(max_output_tokens=3),
        completion({"content": "Once upon a"}, "length"),
        response_id="r",
        created_at=1,
    )
    parsed = Response.model_validate(obj)
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None and parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output_text == "Once upon a" and obj["output"][-1]["status"] == "incomplete"
    assert parsed.max_output_tokens == 3


def test_reasoning_content_becomes_a_reasoning_item() -> None:
    engine_message = {"content": "42", "reasoning_content": "6 times 7"}
    obj = response_object(request(), completion(engine_message), response_id="r", created_at=1)
    parsed = Response.model_validate(obj)
    assert [item.type for item in parsed.output] == ["reasoning", "message"]
    assert obj["output"][0]["content"] == [{"type": "reasoning_text", "text": "6 times 7"}]
    assert parsed.output_text == "42"


def test_empty_answer_still_has_a_message_and_no_usage_is_none() -> None:
    obj = response_object(
        request(),
        {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]},
        response_id="r",
        created_at=1,
    )
    parsed = Response.model_validate(obj)
    assert [item.type for item in parsed.output] == ["message"] and parsed.output_text == ""
    assert parsed.usage is None


def test_echoed_request_fields_parse() -> None:
    req = request(
        text={
            "format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}},
            "verbosity": "low",
        },
        tool_choice={"type": "function", "name": "get_weather"},
        tools=[WEATHER],
        reasoning={"effort": "high", "summary": "auto"},
        previous_response_id="resp_prev",
        store=False,
        top_p=0.5,
    )
    parsed = Response.model_validate(
        response_object(req, completion({"content": "{}"}), response_id="r", created_at=1)
    )
    assert (
        parsed.text is not None
        and parsed.text.format is not None
        and parsed.text.format.type == "json_schema"
    )
    assert parsed.tool_choice.type == "function"  # type: ignore[union-attr]
    assert (parsed.previous_response_id, parsed.store, parsed.top_p) == ("resp_prev", False, 0.5)
    assert parsed.reasoning is not None and parsed.reasoning.effort == "high"


def test_output_messages_of_a_response() -> None:
    engine_message = {
        "content": "Checking.",
        "reasoning_content": "hmm",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    obj = response_object(request(), completion(engine_message, "tool_calls"), response_id="r", created_at=1)
    assert output_messages(obj) == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    ]
    text_only = response_object(request(), completion({"content": "Hi"}), response_id="r", created_at=1)
    assert output_messages(text_only) == [{"role": "assistant", "content": "Hi"}]


# -- streaming ---------------------------------------------------------------------------------------


def test_stream_of_a_text_answer() -> None:
    translator, events, counts = run_stream(text_stream("Hel", "lo", " world"))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    # Each content chunk gives its delta at once; the role, finish, usage and [DONE] chunks give nothing.
    assert counts == [0, 3, 1, 1, 0, 0, 0]
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    assert "".join(event["delta"] for event in deltas) == "Hello world"
    assert {(event["output_index"], event["content_index"]) for event in deltas} == {(0, 0)}
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]["response"]
    assert final == translator.response
    parsed = Response.model_validate(final)
    assert (parsed.status, parsed.output_text, parsed.id) == ("completed", "Hello world", "resp_test")
    assert parsed.usage is not None and (parsed.usage.input_tokens, parsed.usage.output_tokens) == (9, 3)
    item_id = events[2]["item"]["id"]
    assert all(event["item_id"] == item_id for event in events[3:9])
    assert sdk_stream_result(events).output_text == "Hello world"


def test_stream_of_a_tool_call() -> None:
    translator, events, _ = run_stream([*TOOL_CALL_EVENTS, "[DONE]"], request(stream=True, tools=[WEATHER]))
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 4,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2]["item"]
    assert (added["type"], added["call_id"], added["name"], added["status"]) == (
        "function_call",
        "call-1",
        "get_weather",
        "in_progress",
    )
    deltas = "".join(
        event["delta"] for event in events if event["type"] == "response.function_call_arguments.delta"
    )
    assert deltas == '{"city": "Paris"}' == events[7]["arguments"]
    parsed = Response.model_validate(translator.response)
    [call] = parsed.output
    assert (
        call.type == "function_call" and call.arguments == '{"city": "Paris"}' and call.status == "completed"
    )
    assert parsed.usage is not None and parsed.usage.total_tokens == 273
    sdk_final = sdk_stream_result(events)
    assert sdk_final.output[0].arguments == '{"city": "Paris"}'


def test_stream_of_parallel_calls_after_some_text() -> None:
    engine = [
        chunk("Checking both."),
        chunk(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
        chunk(tool_calls=[{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]),
        chunk(finish="tool_calls"),
    ]
    translator, events, _ = run_stream(engine)
    output = translator.response["output"]
    assert [(item["type"], item.get("call_id"), item.get("arguments")) for item in output] == [
        ("message", None, None),
        ("function_call", "a", '{"x":1}'),
        ("function_call", "b", "{}"),
    ]
    # An item is closed as soon as the next one starts, as OpenAI streams do.
    kinds = [(event["type"], event.get("output_index")) for event in events if "output_item" in event["type"]]
    assert kinds == [
        ("response.output_item.added", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.output_item.done", 2),
    ]
    assert sdk_stream_result(events).output_text == "Checking both."


def test_stream_with_reasoning_then_text() -> None:
    engine = [chunk(reasoning="Let me"), chunk(reasoning=" think."), chunk("42"), chunk(finish="stop")]
    translator, events, _ = run_stream(engine)
    types = [event["type"] for event in events]
    assert types[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert events[6]["text"] == "Let me think."
    parsed = Response.model_validate(translator.response)
    assert [item.type for item in parsed.output] == ["reasoning", "message"]
    assert parsed.output_text == "42"
    assert sdk_stream_result(events).output_text == "42"


def test_stream_cut_short_is_incomplete() -> None:
    translator, events, _ = run_stream(text_stream("Once", " upon", finish="length"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["type"] == "response.output_item.done" and events[-2]["item"]["status"] == "incomplete"
    parsed = Response.model_validate(translator.response)
    assert parsed.status == "incomplete" and parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert sdk_stream_result(events).output_text == "Once upon"


def test_stream_without_any_text_still_answers_with_a_message() -> None:
    translator, events, _ = run_stream([chunk(finish="stop"), "[DONE]"])
    assert [event["type"] for event in events][2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert Response.model_validate(translator.response).output_text == ""


@pytest.mark.parametrize(
    "error_event",
    [
        sse({"error": {"code": 500, "message": "context shift is disabled", "type": "server_error"}}),
        b'error: {"code": 500, "message": "context shift is disabled", "type": "server_error"}\n\n',
        b'event: error\ndata: {"error": {"message": "context shift is disabled"}}\n\n',
    ],
)
def test_engine_error_mid_stream_fails_the_response(error_event: bytes) -> None:
    translator = StreamTranslator(request(stream=True), response_id="resp_e", created_at=CREATED)
    out = translator.start() + translator.feed(sse(chunk("Hel")))
    assert not translator.failed
    failure = translator.feed(error_event)
    assert translator.failed
    error, failed = events_of(failure)
    assert (error["type"], error["code"], error["message"]) == (
        "error",
        "server_error",
        "context shift is disabled",
    )
    assert failed["type"] == "response.failed"
    response = Response.model_validate(failed["response"])
    assert response.status == "failed" and response.error is not None
    assert (response.error.code, response.error.message) == ("server_error", "context shift is disabled")
    assert response.output_text == "Hel"  # what was written stays, marked incomplete
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert translator.feed(sse(chunk("more"))) == []
    assert translator.finish() == []
    assert translator.response["status"] == "failed"
    events = events_of(out + failure)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert sdk_stream_result(events).status == "failed"  # the SDK's accumulator takes it too


def test_handler_can_fail_a_stream_whose_engine_went_away() -> None:
    translator = StreamTranslator(request(stream=True), response_id="resp_f", created_at=CREATED)
    translator.start()
    [_, failed] = events_of(translator.fail("the engine closed the connection"))
    assert failed["response"]["error"]["message"] == "the engine closed the connection"
    assert translator.fail("again") == [] and translator.finish() == []


def test_stream_ignores_what_is_not_a_data_chunk() -> None:
    translator = StreamTranslator(request(stream=True), response_id="r", created_at=CREATED)
    assert translator.feed(b": keep-alive\n\n") == []
    assert translator.feed(b"event: ping\n\n") == []
    assert translator.feed(b"data: not json\n\n") == []
    assert translator.feed(b"data: [1, 2]\n\n") == []
    assert translator.feed(b"data: [DONE]\n\n") == []
    [*_, delta] = events_of(
        translator.feed(b'data: {"choices": [{"delta":\ndata: {"content": "x"}}]}\r\n\r\n')
    )
    assert delta["delta"] == "x" and not translator.failed


def test_non_ascii_text_is_escaped_in_event_data() -> None:
    translator = StreamTranslator(request(stream=True), response_id="r", created_at=CREATED)
    translator.start()
    [*_, delta_bytes] = translator.feed(sse(chunk("caf\u00e9 \u2028")))
    assert delta_bytes.isascii()
    assert json.loads(delta_bytes.split(b"data: ", 1)[1])["delta"] == "caf\u00e9 \u2028"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12))
def test_any_split_of_a_text_reassembles(pieces: list[str]) -> None:
    translator, events, counts = run_stream(text_stream(*pieces))
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    assert deltas == pieces
    assert counts[1] == 3 and counts[2 : len(pieces) + 1] == [1] * (len(pieces) - 1)
    assert Response.model_validate(translator.response).output_text == "".join(pieces)


# -- the store ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored_response(response_id: str, text: str = "Hi") -> dict[str, Any]:
    return response_object(
        request(), completion({"content": text}), response_id=response_id, created_at=CREATED
    )


def test_store_expires_entries_after_the_ttl() -> None:
    clock = FakeClock()
    store = ResponseStore(ttl=60.0, clock=clock)
    store.put(stored_response("resp_a"), [{"role": "user", "content": "Hello"}])
    clock.now += 59.0
    response = store.get("resp_a")
    assert response is not None and response["id"] == "resp_a"
    clock.now += 1.0
    assert store.get("resp_a") is None
    assert store.conversation("resp_a") is None and store.input_items("resp_a") is None
    assert len(store) == 0 and not store.delete("resp_a")


def test_store_keeps_at_most_max_entries_oldest_out_first() -> None:
    clock = FakeClock()
    store = ResponseStore(max_entries=2, clock=clock)
    for name in ("resp_1", "resp_2", "resp_3"):
        store.put(stored_response(name), [])
        clock.now += 1
    assert store.get("resp_1") is None
    assert store.get("resp_2") is not None and store.get("resp_3") is not None
    store.put(stored_response("resp_2"), [])  # put again: now the newest
    store.put(stored_response("resp_4"), [])
    assert (store.get("resp_3"), len(store)) == (None, 2)


def test_store_copies_in_and_out() -> None:
    store = ResponseStore()
    response = stored_response("resp_c")
    history = [{"role": "user", "content": "Hello"}]
    store.put(response, history)
    response["status"] = "failed"
    history.append({"role": "user", "content": "extra"})
    got = store.get("resp_c")
    assert got is not None and got["status"] == "completed"
    got["output"].clear()
    assert store.conversation("resp_c") == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
    ]


def test_conversation_chains_over_two_turns() -> None:
    store = ResponseStore()
    # Turn 1: instructions are not part of the kept history.
    first = parse_create_request({"model": MODEL, "input": "My name is Ada.", "instructions": "Be terse."})
    assert chat_of(first)["messages"][0] == {"role": "system", "content": "Be terse."}
    answer1 = response_object(
        first, completion({"content": "Hi Ada."}), response_id="resp_t1", created_at=CREATED
    )
    store.put(answer1, first.input_messages, input_items=first.input_items)
    # Turn 2 follows it.
    second = parse_create_request(
        {"model": MODEL, "input": "What is my name?", "previous_response_id": "resp_t1"}
    )
    history = store.conversation("resp_t1")
    assert history is not None
    assert chat_of(second, history)["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hi Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    answer2 = response_object(
        second, completion({"content": "Ada."}), response_id="resp_t2", created_at=CREATED
    )
    assert answer2["previous_response_id"] == "resp_t1"
    store.put(answer2, [*history, *second.input_messages], input_items=second.input_items)
    # Turn 3 sees both.
    third = store.conversation("resp_t2")
    assert third is not None
    assert [message["content"] for message in third] == [
        "My name is Ada.",
        "Hi Ada.",
        "What is my name?",
        "Ada.",
    ]
    # Each response lists its own input.
    items = store.input_items("resp_t2")
    assert items is not None and [item["content"][0]["text"] for item in items] == ["What is my name?"]


def test_a_conversation_outlives_the_responses_it_continues() -> None:
    clock = FakeClock()
    store = ResponseStore(ttl=60.0, max_entries=2, clock=clock)
    history: list[dict[str, Any]] = []
    for turn in range(4):
        previous = f"resp_{turn - 1}" if turn else None
        req = parse_create_request({"model": MODEL, "input": f"q{turn}", "previous_response_id": previous})
        history = (store.conversation(previous) if previous else []) or []
        answer = response_object(
            req, completion({"content": f"a{turn}"}), response_id=f"resp_{turn}", created_at=1
        )
        store.put(answer, [*history, *req.input_messages])
        clock.now += 20.0
    assert store.get("resp_0") is None and store.get("resp_1") is None  # evicted, then expired
    conversation = store.conversation("resp_3")
    assert conversation is not None
    assert [message["content"] for message in conversation] == [
        "q0",
        "a0",
        "q1",
        "a1",
        "q2",
        "a2",
        "q3",
        "a3",
    ]


def test_a_history_that_does_not_continue_the_stored_one_is_kept_whole() -> None:
    store = ResponseStore()
    store.put(stored_response("resp_p", "first"), [{"role": "user", "content": "one"}])
    child = stored_response("resp_q", "second") | {"previous_response_id": "resp_p"}
    edited = [{"role": "user", "content": "edited"}, {"role": "user", "content": "two"}]
    store.put(child, edited)
    assert store.conversation("resp_q") == [*edited, {"role": "assistant", "content": "second"}]


def test_delete_and_input_items() -> None:
    store = ResponseStore()
    req = request(input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    store.put(stored_response("resp_d"), req.input_messages, input_items=req.input_items)
    items = store.input_items("resp_d")
    assert items is not None and len(items) == 2
    assert store.delete("resp_d")
    assert not store.delete("resp_d")
    assert store.get("resp_d") is None


def test_input_items_page_orders_and_pages_like_openai() -> None:
    req = request(input=[{"role": "user", "content": text} for text in "abcde"])
    items = req.input_items
    ids = [item["id"] for item in items]

    newest_first = input_items_page(items)
    ResponseItemList.model_validate(newest_first)
    assert [item["id"] for item in newest_first["data"]] == ids[::-1]
    assert (newest_first["first_id"], newest_first["last_id"], newest_first["has_more"]) == (
        ids[-1],
        ids[0],
        False,
    )

    first = input_items_page(items, order="asc", limit=2)
    assert [item["id"] for item in first["data"]] == ids[:2] and first["has_more"] is True
    rest = input_items_page(items, order="asc", limit="10", after=first["last_id"])
    assert [item["id"] for item in rest["data"]] == ids[2:] and rest["has_more"] is False

    empty = input_items_page([])
    assert empty == {"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": False}
    ResponseItemList.model_validate(empty)
    for bad in ({"order": "up"}, {"limit": 0}, {"limit": "many"}, {"after": "msg_unknown"}):
        with pytest.raises(ApiError) as caught:
            input_items_page(items, **bad)
        assert caught.value.status == 400 and caught.value.param == next(iter(bad))


def test_other_answers() -> None:
    assert deleted_object("resp_x") == {"id": "resp_x", "object": "response", "deleted": True}
    missing = response_not_found()
    assert (missing.status, missing.message, missing.code) == (404, "Response not found", "not_found")
    previous = previous_response_not_found("resp_gone")
    assert (previous.status, previous.param) == (400, "previous_response_id")
    assert previous.message == 'previous_response_id "resp_gone" was not found'


# -- through the SDK's own client -------------------------------------------------------------------


def test_the_sdk_client_reads_what_the_translation_produces() -> None:
    """The SDK's real parsing path (HTTP answer -> `Response`, SSE -> events, the `stream()` helper),
    over an in-memory transport that answers with this module's objects."""
    store = ResponseStore()

    def answer(http_request: httpx.Request) -> httpx.Response:
        if http_request.method == "POST":
            req = parse_create_request(json.loads(http_request.content))
            if not req.stream:
                obj = response_object(
                    req, completion({"content": "Hi!"}), response_id="resp_sdk", created_at=CREATED
                )
                store.put(obj, req.input_messages, input_items=req.input_items)
                return httpx.Response(200, json=obj)
            translator = StreamTranslator(req, response_id="resp_sdk_s", created_at=CREATED)
            body = translator.start()
            for event in [chunk("Hel"), chunk("lo"), *TOOL_CALL_EVENTS[1:]]:
                body.extend(translator.feed(sse(event)))
            body.extend(translator.finish())
            return httpx.Response(200, content=b"".join(body), headers={"content-type": "text/event-stream"})
        response_id = http_request.url.path.split("/")[3]
        if http_request.method == "DELETE":
            store.delete(response_id)
            return httpx.Response(200, json=deleted_object(response_id))
        if http_request.url.path.endswith("/input_items"):
            return httpx.Response(200, json=input_items_page(store.input_items(response_id) or []))
        return httpx.Response(200, json=store.get(response_id))

    client = openai.OpenAI(
        api_key="unused",
        base_url="http://modelrunner.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )
    created = client.responses.create(model=MODEL, input="Hello", instructions="Be kind.")
    assert (created.output_text, created.status, created.model) == ("Hi!", "completed", MODEL)
    assert client.responses.retrieve("resp_sdk").output_text == "Hi!"
    listed = client.responses.input_items.list("resp_sdk")
    assert [item.type for item in listed.data] == ["message"]
    assert client.responses.delete("resp_sdk") is None

    events = list(client.responses.create(model=MODEL, input="Hello", tools=[WEATHER], stream=True))
    assert events[-1].type == "response.completed"
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == "Hello"
    with client.responses.stream(model=MODEL, input="Hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello"
    assert [item.type for item in final.output] == ["message", "function_call"]
