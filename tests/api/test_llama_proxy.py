"""The proxy against real llama-server processes, driven by the official OpenAI SDK."""

from __future__ import annotations

import json
import math
from pathlib import Path

import openai
import pytest
import testmodels
import trio
from modelrunner.engines import Mode

# The fixtures (`runner_pool`, `llama_api`) come from the tests.api.llama_fixtures plugin.
from tests.api.llama_fixtures import CHAT, EMBED, TOOL, WEATHER_TOOL, LlamaApi
from tests.api.runners import http_get_unix

pytestmark = pytest.mark.integration


async def test_models_list(llama_api: LlamaApi) -> None:
    models = await llama_api.sdk.models.list()
    assert sorted(m.id for m in models.data) == sorted(f"docker.io/{n}:latest" for n in (CHAT, TOOL, EMBED))
    assert all(m.owned_by == "docker" for m in models.data)
    model = await llama_api.sdk.models.retrieve(CHAT)
    assert model.id == f"docker.io/{CHAT}:latest"


async def test_chat_returns_the_scripted_reply(llama_api: LlamaApi) -> None:
    completion = await llama_api.sdk.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == testmodels.CHAT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == CHAT  # rewritten from the engine's alias/path to the requested name
    assert completion.usage is not None
    assert completion.usage.completion_tokens == testmodels.CHAT_REPLY_COMPLETION_TOKENS


async def test_model_is_rewritten_to_the_name_asked_for(llama_api: LlamaApi) -> None:
    # The pool's runner alias is ai/tiny-chat; a client asking by another accepted name sees that name.
    llama_api.pool.models["tiny-chat"] = llama_api.pool.models[CHAT]
    completion = await llama_api.sdk.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "tiny-chat"


async def test_streaming_chat_reassembles(llama_api: LlamaApi) -> None:
    stream = await llama_api.sdk.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas: list[str] = []
    finish = None
    chunks = 0
    async for chunk in stream:
        chunks += 1
        assert chunk.model == CHAT
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(deltas) == testmodels.CHAT_REPLY
    assert len(deltas) > 3  # really streamed, token by token
    assert finish == "stop"
    assert chunks >= len(deltas) + 1


async def test_tool_call(llama_api: LlamaApi) -> None:
    completion = await llama_api.sdk.chat.completions.create(
        model=TOOL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == testmodels.TOOL_CALL_NAME
    assert json.loads(call.function.arguments) == testmodels.TOOL_CALL_ARGUMENTS
    assert call.id


async def test_tool_call_streamed(llama_api: LlamaApi) -> None:
    stream = await llama_api.sdk.chat.completions.create(
        model=TOOL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name = ""
    arguments = ""
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                if call.function and call.function.name:
                    name += call.function.name
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
            finish = choice.finish_reason or finish
    assert name == testmodels.TOOL_CALL_NAME
    assert json.loads(arguments) == testmodels.TOOL_CALL_ARGUMENTS
    assert finish == "tool_calls"


async def test_response_format_json_schema(llama_api: LlamaApi) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"type": "string", "enum": ["red", "green"]}},
        "required": ["ok", "colour"],
        "additionalProperties": False,
    }
    completion = await llama_api.sdk.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "answer in JSON"}],
        max_tokens=200,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    )
    content = completion.choices[0].message.content or ""
    value = json.loads(content)  # grammar-constrained: valid JSON, whatever the model wanted to say
    assert set(value) == {"ok", "colour"}
    assert isinstance(value["ok"], bool)
    assert value["colour"] in ("red", "green")


async def test_embeddings_dimension_and_determinism(llama_api: LlamaApi) -> None:
    texts = ["the cat sat on the mat", "stock markets fell sharply"]
    first = await llama_api.sdk.embeddings.create(model=EMBED, input=texts)
    second = await llama_api.sdk.embeddings.create(model=EMBED, input=texts)
    assert first.model == EMBED
    assert [d.index for d in first.data] == [0, 1]
    vectors = [d.embedding for d in first.data]
    assert all(len(v) == testmodels.EMBEDDING_DIM for v in vectors)
    assert vectors == [d.embedding for d in second.data]
    assert vectors[0] != vectors[1]
    assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, rel_tol=1e-3)  # L2-normalised


async def test_completions_respect_max_tokens(llama_api: LlamaApi) -> None:
    completion = await llama_api.sdk.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert completion.model == CHAT


async def test_sdk_error_types(llama_api: LlamaApi) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await llama_api.sdk.chat.completions.create(
            model="ai/not-pulled", messages=[{"role": "user", "content": "x"}]
        )
    assert "not found" in str(not_found.value)
    with pytest.raises(openai.BadRequestError) as bad:
        await llama_api.sdk.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}])
    assert "model is required" in str(bad.value)
    with pytest.raises(openai.BadRequestError):  # engine's own 400 passes through
        await llama_api.sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "x"}], n=0
        )
    with pytest.raises(openai.NotFoundError):
        await llama_api.sdk.models.retrieve("ai/not-pulled")


async def test_engine_500s_for_bad_input_become_400(llama_api: LlamaApi) -> None:
    too_long = " ".join(["word"] * (testmodels.EMBEDDING_CONTEXT_LENGTH * 3))
    with pytest.raises(openai.BadRequestError) as info:
        await llama_api.sdk.embeddings.create(model=EMBED, input=too_long)
    assert "too large" in str(info.value)
    response = await llama_api.http.post("/v1/embeddings", json={"model": EMBED, "input": 5})
    assert response.status_code == 400
    response = await llama_api.http.post("/v1/chat/completions", json={"model": CHAT, "messages": "hi"})
    assert response.status_code == 400


async def test_malformed_and_wrong_types_never_500(llama_api: LlamaApi) -> None:
    bodies = [
        b"{",
        b"null",
        b'{"model": "ai/tiny-chat", "messages": [{"role": 5}]}',
        b'{"model": "ai/tiny-chat", "messages": [], "max_tokens": "x"}',
        b'{"model": "ai/tiny-chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        b'{"model": "ai/tiny-chat", "prompt": {"a": 1}}',
    ]
    for body in bodies:
        for path in ("/v1/chat/completions", "/v1/completions"):
            with trio.fail_after(20):
                response = await llama_api.http.post(path, content=body)
            assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)


async def test_engine_cors_header_is_replaced(llama_api: LlamaApi) -> None:
    response = await llama_api.http.post(
        "/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "x"}]},
        headers={"Origin": "http://localhost:8080"},
    )
    assert response.status_code == 200
    assert response.headers.get_list("access-control-allow-origin") == ["http://localhost:8080"]
    response = await llama_api.http.post(
        "/v1/chat/completions", json={"model": CHAT, "messages": [{"role": "user", "content": "x"}]}
    )
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["server"] == "llama.cpp"


async def test_keep_alive_pool_is_reused(llama_api: LlamaApi) -> None:
    for _ in range(30):
        await llama_api.sdk.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    pool = llama_api.server.app.pools.get(llama_api.pool.socket_for(CHAT))
    assert pool.opened <= 2
    assert pool.idle_count >= 1


async def test_concurrent_requests(llama_api: LlamaApi) -> None:
    replies: list[str] = []

    async def one() -> None:
        completion = await llama_api.sdk.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}]
        )
        replies.append(completion.choices[0].message.content or "")

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(one)
    assert replies == [testmodels.CHAT_REPLY] * 16
    # The proxy learnt the engine's slots (-np 4) and never held more than one connection beyond
    # them, so one of llama-server's parallel + 2 HTTP threads stays free for health and metrics.
    pool = llama_api.server.app.pools.get(llama_api.pool.socket_for(CHAT))
    assert pool.max_connections == 5
    assert pool.open_count <= 5


async def test_client_disconnect_stops_generation(llama_api: LlamaApi) -> None:
    body = {
        "model": CHAT,
        "prompt": "Once upon a time",
        "max_tokens": 100000,
        "stream": True,
        "ignore_eos": True,
    }
    socket_path = llama_api.pool.socket_for(CHAT)
    async with llama_api.http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = 0
        async for _ in response.aiter_bytes():
            received += 1
            if received >= 5:
                break
    # The proxy closes the engine connection; llama-server then stops the task.
    with trio.fail_after(10):
        while True:
            _, metrics = await trio.to_thread.run_sync(http_get_unix, socket_path, "/metrics")
            if b"llamacpp:requests_processing 0" in metrics:
                break
            await trio.sleep(0.05)


async def test_preload_only_starts_the_runner(llama_api: LlamaApi) -> None:
    response = await llama_api.http.post(
        "/engines/llama.cpp/v1/embeddings", json={"model": EMBED}, headers={"X-Preload-Only": "true"}
    )
    assert (response.status_code, response.content) == (200, b"")
    assert (EMBED, Mode.EMBEDDING, "llama.cpp") in llama_api.pool.acquired


async def test_dead_engine_is_502_and_reported(llama_api: LlamaApi) -> None:
    await llama_api.sdk.embeddings.create(model=EMBED, input="warm up")
    llama_api.pool.kill(EMBED, Mode.EMBEDDING)  # still handed out: the "scheduler" has not noticed
    before = len(llama_api.pool.broken)
    response = await llama_api.http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "server_error"
    assert len(llama_api.pool.broken) == before + 1
    result = await llama_api.sdk.embeddings.create(model=EMBED, input="x")  # a fresh runner serves
    assert len(result.data[0].embedding) == testmodels.EMBEDDING_DIM


async def test_metrics_reexports_engine_metrics(llama_api: LlamaApi, tmp_path: Path) -> None:
    await llama_api.sdk.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    response = await llama_api.http.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert f'llamacpp_tokens_predicted_total{{backend="llama.cpp",mode="completion",model="{CHAT}"}}' in text
    assert "llamacpp:" not in text
    assert "# TYPE llamacpp_n_tokens_max gauge" in text
    assert "modelrunner_api_inference_requests_total" in text
    metrics_file = tmp_path / "metrics.txt"
    metrics_file.write_bytes(response.content)
    result = await trio.run_process(
        ["promtool", "check", "metrics"],
        stdin=response.content,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
