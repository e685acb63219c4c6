"""OpenAI's Responses API over real llama-server processes, driven by the official OpenAI SDK.

The daemon translates each Responses request into a chat completion for the engine and the answer
(or its SSE stream) back, keeps responses for `retrieve`, `input_items`, `delete` and
`previous_response_id`, and answers errors in OpenAI's shape so the SDK raises its typed errors.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import testmodels

# The fixtures (`runner_pool`, `llama_api`) come from the tests.api.llama_fixtures plugin.
from tests.api.llama_fixtures import CHAT, TOOL, LlamaApi

pytestmark = pytest.mark.integration

WEATHER_FUNCTION = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_create_returns_the_scripted_reply(llama_api: LlamaApi) -> None:
    response = await llama_api.sdk.responses.create(model=CHAT, input="hi")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == CHAT
    assert response.output_text == testmodels.CHAT_REPLY
    assert response.usage is not None
    assert response.usage.output_tokens == testmodels.CHAT_REPLY_COMPLETION_TOKENS
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


async def test_streamed_deltas_reassemble_and_end_completed(llama_api: LlamaApi) -> None:
    stream = await llama_api.sdk.responses.create(
        model=CHAT, input=[{"role": "user", "content": "hello"}], stream=True
    )
    kinds: list[str] = []
    deltas: list[str] = []
    sequence: list[int] = []
    final: Any = None
    async for event in stream:
        kinds.append(event.type)
        sequence.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert {"response.output_item.added", "response.content_part.added", "response.output_text.done"} <= set(
        kinds
    )
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)
    assert "".join(deltas) == testmodels.CHAT_REPLY
    assert len(deltas) > 3  # streamed token by token, not buffered
    assert final is not None and final.output_text == testmodels.CHAT_REPLY
    # A streamed response is stored like any other.
    stored = await llama_api.sdk.responses.retrieve(final.id)
    assert stored.output_text == testmodels.CHAT_REPLY


async def test_retrieve_input_items_and_delete(llama_api: LlamaApi) -> None:
    created = await llama_api.sdk.responses.create(
        model=CHAT, input=[{"role": "user", "content": "remember me"}], instructions="Be brief."
    )
    fetched = await llama_api.sdk.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.output_text == testmodels.CHAT_REPLY
    items = await llama_api.sdk.responses.input_items.list(created.id)
    texts = [
        part.text
        for item in items.data
        if item.type == "message"
        for part in item.content
        if hasattr(part, "text")
    ]
    assert texts == ["remember me"]
    await llama_api.sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await llama_api.sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await llama_api.sdk.responses.delete(created.id)


async def test_previous_response_id_sends_the_conversation(llama_api: LlamaApi) -> None:
    first = await llama_api.sdk.responses.create(model=CHAT, input="my name is Ada", instructions="Be kind.")
    second = await llama_api.sdk.responses.create(
        model=CHAT, input="what is my name?", previous_response_id=first.id
    )
    assert second.output_text == testmodels.CHAT_REPLY
    assert second.previous_response_id == first.id
    # What the engine got for the second turn: the first turn, its answer, then the new input.
    # Instructions are not carried over to a follow-up (OpenAI's rule): each request sends its own.
    records = (await llama_api.http.get("/engines/requests", params={"model": CHAT})).json()
    sent = [json.loads(record["request"]) for group in records for record in group["records"]]
    assert [(m["role"], m.get("content")) for m in sent[0]["messages"]] == [
        ("system", "Be kind."),
        ("user", "my name is Ada"),
    ]
    assert [(m["role"], m.get("content")) for m in sent[-1]["messages"]] == [
        ("user", "my name is Ada"),
        ("assistant", testmodels.CHAT_REPLY),
        ("user", "what is my name?"),
    ]
    assert all(record["origin"] == "openai/responses" for group in records for record in group["records"])


async def test_store_false_is_not_kept(llama_api: LlamaApi) -> None:
    response = await llama_api.sdk.responses.create(model=CHAT, input="hi", store=False)
    assert response.output_text == testmodels.CHAT_REPLY
    with pytest.raises(openai.NotFoundError):
        await llama_api.sdk.responses.retrieve(response.id)


async def test_function_call_and_its_output(llama_api: LlamaApi) -> None:
    response = await llama_api.sdk.responses.create(
        model=TOOL, input="Weather in Paris?", tools=[WEATHER_FUNCTION]  # type: ignore[list-item]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == testmodels.TOOL_CALL_NAME
    assert json.loads(call.arguments) == testmodels.TOOL_CALL_ARGUMENTS
    assert call.call_id
    # The tool's result goes back as a function_call_output item of the next turn.
    follow_up = await llama_api.sdk.responses.create(
        model=TOOL,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}],
        tools=[WEATHER_FUNCTION],  # type: ignore[list-item]
    )
    assert follow_up.status == "completed"
    records = (await llama_api.http.get("/engines/requests", params={"model": TOOL})).json()
    messages = json.loads(records[0]["records"][-1]["request"])["messages"]
    assert messages[-2]["role"] == "assistant" and messages[-2]["tool_calls"][0]["id"] == call.call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp": 21}'}


async def test_function_call_streamed(llama_api: LlamaApi) -> None:
    stream = await llama_api.sdk.responses.create(
        model=TOOL,
        input="Weather in Paris?",
        tools=[WEATHER_FUNCTION],  # type: ignore[list-item]
        stream=True,
    )
    arguments = ""
    done: Any = None
    async for event in stream:
        if event.type == "response.function_call_arguments.delta":
            arguments += event.delta
        if event.type == "response.output_item.done" and event.item.type == "function_call":
            done = event.item
    assert done is not None and done.name == testmodels.TOOL_CALL_NAME
    assert json.loads(arguments) == json.loads(done.arguments) == testmodels.TOOL_CALL_ARGUMENTS


async def test_json_schema_text_format_constrains_the_output(llama_api: LlamaApi) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = await llama_api.sdk.responses.create(
        model=CHAT,
        input="answer in JSON",
        max_output_tokens=100,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    assert isinstance(json.loads(response.output_text)["ok"], bool)


async def test_errors_have_the_sdk_types(llama_api: LlamaApi) -> None:
    with pytest.raises(openai.NotFoundError):
        await llama_api.sdk.responses.create(model="ai/not-pulled", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        await llama_api.sdk.responses.create(model="", input="x")
    assert "model is required" in str(bad.value)
    with pytest.raises(openai.BadRequestError) as background:
        await llama_api.sdk.responses.create(model=CHAT, input="x", background=True)
    assert "background" in str(background.value)
    with pytest.raises(openai.BadRequestError) as gone:  # 400, as DMR: the request names it
        await llama_api.sdk.responses.create(model=CHAT, input="x", previous_response_id="resp_gone")
    assert "resp_gone" in str(gone.value)
    for body in (b"{", b"[]", b'{"model": "ai/tiny-chat", "input": 5}'):
        response = await llama_api.http.post("/v1/responses", content=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["message"]


async def test_every_prefix_answers(llama_api: LlamaApi) -> None:
    for prefix in ("/responses", "/v1/responses", "/engines/responses", "/engines/v1/responses"):
        response = await llama_api.http.post(prefix, json={"model": CHAT, "input": "hi"})
        assert response.status_code == 200, (prefix, response.text)
        created = response.json()
        fetched = await llama_api.http.get(f"{prefix}/{created['id']}")
        assert fetched.json()["id"] == created["id"]
    wrong = await llama_api.http.put("/v1/responses", json={})
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
