"""chat-large.gguf (about 100 MB, f16) served by the real llama-server: loads, same scripted reply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import testmodels

from tests.engine_bare.llama_server import BareLlamaServer, chat, running_llama_server, stream_chat

pytestmark = pytest.mark.integration

ALIAS = "tiny-chat-large"


@pytest.fixture(scope="module")
def server(llama_server_binary: Path, test_models: testmodels.TestModelSet) -> Iterator[BareLlamaServer]:
    with running_llama_server(llama_server_binary, test_models.chat_large, alias=ALIAS) as srv:
        yield srv


def test_loads_with_the_declared_shape(server: BareLlamaServer, test_models: testmodels.TestModelSet) -> None:
    [model] = server.client.get("/v1/models").json()["data"]
    assert model["id"] == ALIAS
    meta = model["meta"]
    assert meta["n_embd"] == testmodels.LARGE_CHAT_SHAPE["n_embd"]
    assert meta["ftype"] == "F16"
    assert 45_000_000 < meta["n_params"] < 60_000_000
    # the tensor data is nearly the whole file
    assert (
        0.95 * test_models.chat_large.stat().st_size < meta["size"] <= test_models.chat_large.stat().st_size
    )


def test_same_scripted_reply(server: BareLlamaServer) -> None:
    messages = [{"role": "user", "content": "Please write a long essay about memory accounting."}]
    body = chat(server, messages)
    assert body["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == testmodels.chat_prompt_tokens(messages)
    assert body["usage"]["completion_tokens"] == testmodels.CHAT_REPLY_COMPLETION_TOKENS


def test_stream(server: BareLlamaServer) -> None:
    _, events = stream_chat(server, {"messages": [{"role": "user", "content": "Hi"}]})
    assert events[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in (json.loads(e) for e in events[:-1])
        if c["choices"]
    )
    assert text == testmodels.CHAT_REPLY


def test_reply_does_not_depend_on_sampling(server: BareLlamaServer) -> None:
    body = chat(server, [{"role": "user", "content": "Hi"}], logprobs=True, top_logprobs=2)
    for step in body["choices"][0]["logprobs"]["content"]:
        assert step["top_logprobs"][1]["logprob"] < -30, step
