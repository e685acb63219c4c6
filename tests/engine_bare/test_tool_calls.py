"""chat-tool.gguf served by the real llama-server: a real OpenAI ``tool_calls`` response."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testmodels

from tests.engine_bare.llama_server import (
    WEATHER_TOOL,
    BareLlamaServer,
    chat,
    running_llama_server,
    stream_chat,
)

pytestmark = pytest.mark.integration

ALIAS = "tiny-chat-tool"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(llama_server_binary: Path, test_models: testmodels.TestModelSet) -> Iterator[BareLlamaServer]:
    with running_llama_server(llama_server_binary, test_models.chat_tool, alias=ALIAS) as srv:
        yield srv


def assert_weather_call(call: dict[str, Any]) -> None:
    assert call["type"] == "function"
    assert call["function"]["name"] == testmodels.TOOL_CALL_NAME == "get_weather"
    assert json.loads(call["function"]["arguments"]) == testmodels.TOOL_CALL_ARGUMENTS == {"city": "Paris"}
    assert isinstance(call["id"], str) and call["id"]


def test_tools_in_request_give_tool_calls(server: BareLlamaServer) -> None:
    body = chat(server, ASK, tools=[WEATHER_TOOL])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert not choice["message"]["content"]
    [call] = choice["message"]["tool_calls"]
    assert_weather_call(call)
    assert body["usage"]["completion_tokens"] == testmodels.TOOL_CALL_REPLY_COMPLETION_TOKENS


def test_streamed_tool_call(server: BareLlamaServer) -> None:
    _, events = stream_chat(server, {"messages": ASK, "tools": [WEATHER_TOOL]})
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0] for e in events[:-1] if json.loads(e)["choices"]]
    fragments = [tc for d in deltas for tc in d["delta"].get("tool_calls") or []]
    assert len(fragments) > 1, "arguments should arrive in pieces"
    assert {f["index"] for f in fragments} == {0}
    head = fragments[0]
    call = {
        "id": head["id"],
        "type": head["type"],
        "function": {
            "name": "".join(f["function"].get("name") or "" for f in fragments),
            "arguments": "".join(f["function"].get("arguments") or "" for f in fragments),
        },
    }
    assert_weather_call(call)
    assert [d["finish_reason"] for d in deltas if d["finish_reason"]] == ["tool_calls"]
    assert not "".join(d["delta"].get("content") or "" for d in deltas)


def test_without_tools_the_raw_call_is_content(server: BareLlamaServer) -> None:
    body = chat(server, ASK)
    assert body["choices"][0]["message"]["content"] == testmodels.TOOL_CALL_REPLY
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == testmodels.chat_prompt_tokens(ASK)
    assert body["usage"]["completion_tokens"] == testmodels.TOOL_CALL_REPLY_COMPLETION_TOKENS


def test_conversation_with_a_tool_result_renders(server: BareLlamaServer) -> None:
    """The template's assistant-tool-call and tool-result branches render; the scripted model
    calls the tool again (it ignores context), and the prompt grows by the rendered history."""
    history: list[dict[str, Any]] = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": json.dumps({"weather": "sunny", "celsius": 21}),
        },
    ]
    rendered = server.client.post("/apply-template", json={"messages": history, "tools": [WEATHER_TOOL]})
    assert rendered.status_code == 200, rendered.text
    prompt = rendered.json()["prompt"]
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        in prompt
    )
    assert (
        '<|im_start|>user\n<tool_response>\n{"weather": "sunny", "celsius": 21}\n</tool_response><|im_end|>'
        in prompt
    )
    assert prompt.endswith("<|im_start|>assistant\n")

    body = chat(server, history, tools=[WEATHER_TOOL])
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert_weather_call(call)
    first = chat(server, ASK, tools=[WEATHER_TOOL])
    assert body["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
