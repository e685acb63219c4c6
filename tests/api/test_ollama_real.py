"""The Ollama and Anthropic layers against real llama-server runners, driven by the official `ollama`
and `anthropic` Python clients (and plain HTTP where a client hides the wire)."""

from __future__ import annotations

import json

import anthropic
import ollama
import pytest
import testmodels
import trio

# The fixtures (`runner_pool`, `llama_api`) come from the tests.api.llama_fixtures plugin.
from tests.api.llama_fixtures import CHAT, TOOL, WEATHER_TOOL, LlamaApi

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


def ollama_client(api: LlamaApi) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=api.server.base_url, timeout=30)


def anthropic_client(api: LlamaApi) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=api.server.base_url + "/anthropic", api_key="unused", max_retries=0, timeout=30
    )


# -- Ollama: inference ------------------------------------------------------------------------------


async def test_chat_returns_the_scripted_reply_with_counters(llama_api: LlamaApi) -> None:
    response = await ollama_client(llama_api).chat(model=CHAT, messages=HI)
    assert response.model == CHAT
    assert response.message.role == "assistant"
    assert response.message.content == testmodels.CHAT_REPLY
    assert response.done is True
    assert response.done_reason == "stop"
    assert response.eval_count == testmodels.CHAT_REPLY_COMPLETION_TOKENS
    assert response.prompt_eval_count and response.prompt_eval_count > 0
    assert response.total_duration and response.load_duration is not None
    assert response.total_duration >= response.load_duration
    assert response.eval_duration and response.eval_duration > 0
    assert response.created_at and response.created_at.endswith("Z")


async def test_chat_stream_reassembles_to_the_reply(llama_api: LlamaApi) -> None:
    parts: list[str] = []
    finals = []
    lines = 0
    async for part in await ollama_client(llama_api).chat(model=CHAT, messages=HI, stream=True):
        lines += 1
        assert part.model == CHAT
        if part.done:
            finals.append(part)
        else:
            parts.append(part.message.content or "")
    assert "".join(parts) == testmodels.CHAT_REPLY
    assert len(parts) > 3  # token by token, not one buffered answer
    [final] = finals
    assert lines == len(parts) + 1  # the final line is the last one
    assert final.done_reason == "stop"
    assert final.message.content == ""
    assert final.eval_count == testmodels.CHAT_REPLY_COMPLETION_TOKENS
    assert final.prompt_eval_count and final.prompt_eval_count > 0
    assert final.total_duration and final.total_duration > 0


async def test_chat_stream_wire_format(llama_api: LlamaApi) -> None:
    # Stream is the default; every line is one JSON object, the content type DMR's.
    async with llama_api.http.stream("POST", "/api/chat", json={"model": CHAT, "messages": HI}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        lines = [line async for line in response.aiter_lines()]
    objects = [json.loads(line) for line in lines]
    assert all(set(o) >= {"model", "created_at", "message", "done"} for o in objects)
    assert [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
    assert "".join(o["message"]["content"] for o in objects) == testmodels.CHAT_REPLY


async def test_chat_tool_call_arguments_are_an_object(llama_api: LlamaApi) -> None:
    response = await ollama_client(llama_api).chat(
        model=TOOL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
    )
    [call] = response.message.tool_calls or []
    assert call.function.name == testmodels.TOOL_CALL_NAME
    assert call.function.arguments == testmodels.TOOL_CALL_ARGUMENTS
    assert response.done_reason == "stop"
    raw = await llama_api.http.post(
        "/api/chat",
        json={
            "model": TOOL,
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "stream": False,
        },
    )
    [wire_call] = raw.json()["message"]["tool_calls"]
    assert wire_call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}


async def test_chat_tool_call_streamed_as_one_whole_call(llama_api: LlamaApi) -> None:
    calls = []
    async for part in await ollama_client(llama_api).chat(
        model=TOOL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    ):
        calls.extend(part.message.tool_calls or [])
    # The engine streams the arguments in fragments; Ollama clients get one call, arguments parsed.
    [call] = calls
    assert call.function.name == testmodels.TOOL_CALL_NAME
    assert call.function.arguments == testmodels.TOOL_CALL_ARGUMENTS


async def test_tool_result_round_trip(llama_api: LlamaApi) -> None:
    # An assistant tool call (arguments as an object) and the tool's answer go back to the engine.
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    response = await ollama_client(llama_api).chat(model=CHAT, messages=messages, tools=[WEATHER_TOOL])
    assert response.message.content == testmodels.CHAT_REPLY


async def test_generate_and_generate_stream(llama_api: LlamaApi) -> None:
    client = ollama_client(llama_api)
    response = await client.generate(model=CHAT, prompt="hi")
    assert response.response == testmodels.CHAT_REPLY
    assert response.done and response.done_reason == "stop"
    assert response.eval_count == testmodels.CHAT_REPLY_COMPLETION_TOKENS
    pieces: list[str] = []
    done = []
    async for part in await client.generate(model=CHAT, prompt="hi", system="be brief", stream=True):
        (done if part.done else pieces).append(part.response or "")
    assert "".join(pieces) == testmodels.CHAT_REPLY
    assert len(done) == 1


async def test_options_reach_the_engine(llama_api: LlamaApi) -> None:
    response = await ollama_client(llama_api).chat(
        model=CHAT, messages=HI, options={"num_predict": 3, "temperature": 0.0, "seed": 1, "stop": ["zzz"]}
    )
    assert response.done_reason == "length"
    assert response.eval_count == 3
    assert testmodels.CHAT_REPLY.startswith(response.message.content or "<none>")


async def test_format_json_schema_constrains_the_answer(llama_api: LlamaApi) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = await ollama_client(llama_api).chat(
        model=CHAT, messages=HI, format=schema, options={"num_predict": 100}
    )
    value = json.loads(response.message.content or "")
    assert set(value) == {"ok"} and isinstance(value["ok"], bool)


async def test_think_is_accepted(llama_api: LlamaApi) -> None:
    # The tiny model has no thinking section; the flag must still pass through to a normal answer.
    response = await ollama_client(llama_api).chat(model=CHAT, messages=HI, think=False)
    assert response.message.content == testmodels.CHAT_REPLY
    assert not response.message.thinking


async def test_empty_request_loads_and_keep_alive_zero_unloads(llama_api: LlamaApi) -> None:
    client = ollama_client(llama_api)
    loaded = await client.generate(model=CHAT)
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    unloaded = await client.generate(model=CHAT, keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert llama_api.pool.unload_calls[-1] == (False, None, (CHAT,))


async def test_num_ctx_configures_the_runner(llama_api: LlamaApi) -> None:
    response = await ollama_client(llama_api).chat(model=CHAT, messages=HI, options={"num_ctx": 4096})
    assert response.message.content == testmodels.CHAT_REPLY
    [request] = [r for r in llama_api.pool.configured if r.model == CHAT][-1:]
    assert request.context_size == 4096


async def test_errors_are_ollama_shaped(llama_api: LlamaApi) -> None:
    client = ollama_client(llama_api)
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="ai/not-pulled", messages=HI)
    assert missing.value.status_code == 404
    assert "not-pulled" in missing.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        async for _ in await client.chat(model="ai/not-pulled", messages=HI, stream=True):
            pass
    assert streamed.value.status_code == 404
    # The engine's own refusal keeps its status and message, streamed or not.
    image = [{"role": "user", "content": "x", "images": ["iVBORw0KGgo="]}]
    for stream in (False, True):
        response = await llama_api.http.post(
            "/api/chat", json={"model": CHAT, "messages": image, "stream": stream}
        )
        assert response.status_code == 400
        assert response.json()["error"].startswith("image input is not supported")
    # A wrong option type is refused before the engine.
    response = await llama_api.http.post(
        "/api/chat", json={"model": CHAT, "messages": HI, "stream": False, "options": {"top_k": 1.5}}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid options: 'top_k' must be an integer, not 1.5"}


async def test_malformed_requests_never_500(llama_api: LlamaApi) -> None:
    common = [
        b"{",
        b"[]",
        b'{"model": 5}',
        b'{"model": "ai/tiny-chat", "options": {"temperature": "hot"}}',
        b'{"model": "ai/tiny-chat", "options": {"num_ctx": "big"}}',
        b'{"model": "ai/tiny-chat", "keep_alive": "soon"}',
        b'{"model": "ai/tiny-chat", "format": 7}',
        b'{"model": "ai/tiny-chat", "think": 1}',
        b'{"model": "ai/tiny-chat", "stream": "yes"}',
    ]
    chat = [
        b'{"model": "ai/tiny-chat", "messages": "hi"}',
        b'{"model": "ai/tiny-chat", "messages": [{"role": "user", "content": 5}]}',
        b'{"model": "ai/tiny-chat", "messages": [{"role": "user", "images": "x"}]}',
        b'{"model": "ai/tiny-chat", "messages": [{"content": "x"}]}',
        b'{"model": "ai/tiny-chat", "messages": [{"role": "user", "content": "x"}], "tools": {}}',
        # Accepted by the translation, refused by this text-only engine.
        b'{"model": "ai/tiny-chat", "messages": [{"role": "user", "content": "x", "images": ["iVBORw0K"]}]}',
    ]
    generate = [b'{"model": "ai/tiny-chat", "prompt": 5}', b'{"model": "ai/tiny-chat", "system": []}']
    cases = [("/api/chat", b) for b in common + chat] + [("/api/generate", b) for b in common + generate]
    for path, body in cases:
        with trio.fail_after(20):
            response = await llama_api.http.post(path, content=body)
        assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
        assert isinstance(response.json()["error"], str)


# -- Ollama: models ---------------------------------------------------------------------------------


async def test_list_show_and_ps(llama_api: LlamaApi) -> None:
    client = ollama_client(llama_api)
    listed = await client.list()
    assert {m.model for m in listed.models} == {f"docker.io/{n}:latest" for n in llama_api.pool.models}
    assert all(m.details and m.details.format == "gguf" for m in listed.models)
    shown = await client.show(CHAT)
    assert shown.details and shown.details.family == "llama"
    assert shown.modelinfo == {"general.architecture": "llama", "llama.context_length": 8192}
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("ai/not-pulled")
    assert missing.value.status_code == 404
    await client.chat(model=CHAT, messages=HI)
    running = await client.ps()
    names = {m.name for m in running.models}
    assert f"docker.io/{CHAT}:latest" in names
    [chat] = [m for m in running.models if m.name == f"docker.io/{CHAT}:latest"]
    assert chat.digest == llama_api.pool.models[CHAT].model_id
    assert chat.expires_at is not None and chat.expires_at.year > 2000  # idle: last use + 5 min
    assert chat.size and chat.size > 0
    version = await llama_api.http.get("/api/version")
    assert version.json() == {"version": "0.1.0"}


async def test_pull_and_delete_through_the_client(llama_api: LlamaApi) -> None:
    client = ollama_client(llama_api)
    statuses = [p.status async for p in await client.pull(CHAT, stream=True)]
    assert statuses[0] == "pulling 333333333333"
    assert statuses[-1] == "success"
    assert (await client.pull(CHAT)).status == "success"
    deleted = await client.delete(TOOL)
    assert deleted.status == "success"
    assert ("delete", TOOL, False) in llama_api.models.calls
    assert llama_api.pool.unload_calls[-1] == (False, None, (TOOL,))


# -- Anthropic --------------------------------------------------------------------------------------


async def test_anthropic_messages(llama_api: LlamaApi) -> None:
    client = anthropic_client(llama_api)
    message = await client.messages.create(model=CHAT, max_tokens=64, messages=HI)
    assert message.model == CHAT
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == testmodels.CHAT_REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == testmodels.CHAT_REPLY_COMPLETION_TOKENS


async def test_anthropic_messages_stream(llama_api: LlamaApi) -> None:
    client = anthropic_client(llama_api)
    types: list[str] = []
    text = ""
    stream = await client.messages.create(model=CHAT, max_tokens=64, messages=HI, stream=True)
    async for event in stream:
        types.append(event.type)
        if event.type == "message_start":
            assert event.message.model == CHAT  # rewritten from the engine's alias
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    assert text == testmodels.CHAT_REPLY
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_delta") > 3
    async with client.messages.stream(model=CHAT, max_tokens=64, messages=HI) as helper:
        final = await helper.get_final_message()
    assert final.content[0].text == testmodels.CHAT_REPLY  # type: ignore[union-attr]


async def test_anthropic_count_tokens_and_tool_use(llama_api: LlamaApi) -> None:
    client = anthropic_client(llama_api)
    counted = await client.messages.count_tokens(model=CHAT, messages=HI)
    assert counted.input_tokens > 0
    tool = {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
    }
    message = await client.messages.create(
        model=TOOL,
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
    )
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", testmodels.TOOL_CALL_ARGUMENTS)
    assert message.stop_reason == "tool_use"


async def test_anthropic_errors(llama_api: LlamaApi) -> None:
    client = anthropic_client(llama_api)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="ai/not-pulled", max_tokens=8, messages=HI)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Model not found: ai/not-pulled"},
    }
    # llama-server refuses a request without messages with a 500; it is the client's fault.
    response = await llama_api.http.post("/anthropic/v1/messages", json={"model": CHAT, "max_tokens": 8})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "messages" in body["error"]["message"]
    for raw in (b"{", b'{"messages": []}', b'{"model": 3}', b"[1]"):
        response = await llama_api.http.post("/anthropic/v1/messages", content=raw)
        assert response.status_code == 400, raw
        assert response.json()["error"]["type"] == "invalid_request_error"


# -- GET /engines/requests records every layer's requests -----------------------------------------------


async def test_requests_record_openai_ollama_and_anthropic_answers(llama_api: LlamaApi) -> None:
    stream = await llama_api.sdk.chat.completions.create(model=CHAT, messages=HI, stream=True)
    async for _ in stream:
        pass
    async for _ in await ollama_client(llama_api).chat(model=CHAT, messages=HI, stream=True):
        pass
    await anthropic_client(llama_api).messages.create(model=CHAT, max_tokens=32, messages=HI)
    response = await llama_api.http.get("/engines/requests", params={"model": CHAT})
    [group] = response.json()
    openai_record, ollama_record, anthropic_record = group["records"][-3:]
    assert openai_record["url"] == "/engines/v1/chat/completions" and "origin" not in openai_record
    final = json.loads(openai_record["response"])
    assert final["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
    assert final["model"] == CHAT
    assert ollama_record["origin"] == "ollama/completion"
    assert json.loads(ollama_record["response"])["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
    assert anthropic_record["origin"] == "anthropic/messages"
    assert anthropic_record["url"] == "/engines/v1/messages"
    message = json.loads(anthropic_record["response"])
    assert message["content"][0]["text"] == testmodels.CHAT_REPLY
    assert all(r["status_code"] == 200 for r in (openai_record, ollama_record, anthropic_record))
