"""chat.gguf served by the real llama-server: the scripted reply, exact usage, streaming, tokenizer."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

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

ALIAS = "tiny-chat"


@pytest.fixture(scope="module")
def server(llama_server_binary: Path, test_models: testmodels.TestModelSet) -> Iterator[BareLlamaServer]:
    with running_llama_server(llama_server_binary, test_models.chat, alias=ALIAS) as srv:
        yield srv


def test_health(server: BareLlamaServer) -> None:
    response = server.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_models_lists_the_alias(server: BareLlamaServer, test_models: testmodels.TestModelSet) -> None:
    data = server.client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [ALIAS]
    assert data[0]["meta"]["n_embd"] == 64
    assert data[0]["meta"]["size"] <= test_models.chat.stat().st_size


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hello! I am a tiny test model."},
            {"role": "user", "content": "Tell me a long story about the sea, please."},
        ],
    ],
    ids=["user", "system+user", "multi-turn"],
)
def test_chat_returns_the_scripted_reply_with_exact_usage(
    server: BareLlamaServer, messages: list[dict[str, str]]
) -> None:
    body = chat(server, messages)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == testmodels.CHAT_REPLY
    assert choice["finish_reason"] == "stop"
    assert body["model"] == ALIAS
    prompt_tokens = testmodels.chat_prompt_tokens(messages)
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == testmodels.CHAT_REPLY_COMPLETION_TOKENS == 10
    assert body["usage"]["total_tokens"] == prompt_tokens + testmodels.CHAT_REPLY_COMPLETION_TOKENS


def test_reply_does_not_depend_on_sampling(server: BareLlamaServer) -> None:
    """Every scripted token wins by a wide margin: the runner-up is at least e^30 less likely, so
    even hot sampling with any seed follows the script."""
    messages = [{"role": "user", "content": "Write a poem."}]
    body = chat(server, messages, logprobs=True, top_logprobs=2)
    steps = body["choices"][0]["logprobs"]["content"]
    assert [s["token"] for s in steps[:-1]] == testmodels.scripted_reply_tokens(testmodels.CHAT_REPLY)
    for step in steps:
        chosen, runner_up = step["top_logprobs"]
        assert chosen["logprob"] > -1e-6, step
        assert runner_up["logprob"] < -30, step
    for seed in (1, 2, 3):
        hot = chat(server, messages, temperature=2.0, top_k=0, top_p=1.0, seed=seed)
        assert hot["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY


def test_stream_reassembles_to_the_reply(server: BareLlamaServer) -> None:
    messages = [{"role": "user", "content": "Stream please"}]
    request = {"messages": messages, "stream_options": {"include_usage": True}}
    headers, events = stream_chat(server, request)
    assert headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0].get("role") == "assistant"
    pieces = [d["content"] for d in deltas if d.get("content")]
    assert pieces == testmodels.scripted_reply_tokens(testmodels.CHAT_REPLY)
    assert "".join(pieces) == testmodels.CHAT_REPLY
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["stop"]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage[-1]["completion_tokens"] == testmodels.CHAT_REPLY_COMPLETION_TOKENS
    assert usage[-1]["prompt_tokens"] == testmodels.chat_prompt_tokens(messages)


def test_max_tokens_cuts_the_reply(server: BareLlamaServer) -> None:
    body = chat(server, [{"role": "user", "content": "Hi"}], max_tokens=3)
    expected = "".join(testmodels.scripted_reply_tokens(testmodels.CHAT_REPLY)[:3])
    assert expected == "Hello! I"
    assert body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_tools_do_not_change_a_plain_chat_model(server: BareLlamaServer) -> None:
    body = chat(server, [{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
    message = body["choices"][0]["message"]
    assert message["content"] == testmodels.CHAT_REPLY
    assert not message.get("tool_calls")
    assert body["choices"][0]["finish_reason"] == "stop"


def test_raw_completion_is_printable_gibberish_until_max_tokens(server: BareLlamaServer) -> None:
    response = server.client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 24})
    assert response.status_code == 200, response.text
    body = response.json()
    text = body["choices"][0]["text"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 24
    assert text and text.isascii() and text.isprintable()
    assert testmodels.CHAT_REPLY not in text


@pytest.mark.parametrize(
    "text",
    [
        "Hello world! The weather in Paris is sunny.",
        "It's 2026; don't you think JSON like {\"a\": [1, 22, 333]} is fine?\n\n  indented\ttabs  ",
        testmodels.render_chat_prompt([{"role": "user", "content": "What's up?"}]),
        testmodels.TOOL_CALL_REPLY,
    ],
    ids=["prose", "punctuation-digits-whitespace", "chat-prompt", "tool-call"],
)
def test_python_tokenizer_matches_llama_cpp(server: BareLlamaServer, text: str) -> None:
    response = server.client.post("/tokenize", json={"content": text, "with_pieces": True})
    assert response.status_code == 200, response.text
    pieces = [t["piece"] for t in response.json()["tokens"]]
    assert pieces == testmodels.tokenize_chat_text(text)
    assert "".join(pieces) == text


def test_apply_template_matches_python_renderer(server: BareLlamaServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    response = server.client.post("/apply-template", json={"messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == testmodels.render_chat_prompt(messages)


def test_custom_reply_including_non_ascii(llama_server_binary: Path, tmp_path: Path) -> None:
    reply = "Grüß Gott! 👋 Ça va? a a a a."
    model = testmodels.write_chat_model(tmp_path / "custom.gguf", reply=reply, name="custom")
    with running_llama_server(llama_server_binary, model, alias="custom") as srv:
        body = chat(srv, [{"role": "user", "content": "Hi"}])
    assert body["choices"][0]["message"]["content"] == reply
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == testmodels.completion_tokens_for(reply)


def test_server_closes_the_connection_after_a_stream(server: BareLlamaServer) -> None:
    """Pins an engine quirk the API proxy must handle: after a streamed response llama-server
    closes the connection even though it advertised keep-alive, so a pooled connection must not be
    reused after a stream (a plain response keeps it open)."""
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(server.socket))
        conn.sendall(request)
        received = b""
        while not (b"data: [DONE]" in received and received.endswith(b"\r\n0\r\n\r\n")):
            data = conn.recv(65536)
            assert data, f"closed before the stream ended: {received[-300:]!r}"
            received += data
        assert b"Keep-Alive: timeout=5, max=100" in received
        conn.settimeout(2)
        assert conn.recv(1) == b"", "the server kept the connection open after the stream"

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(server.socket))
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: engine\r\n\r\n")
        reply = b""
        while b'{"status":"ok"}' not in reply:
            data = conn.recv(65536)
            assert data
            reply += data
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.recv(1)  # still open: plain responses honour keep-alive


def test_raw_completion_ending_in_a_reply_token_continues_the_script(server: BareLlamaServer) -> None:
    prompt = "Wow!"
    assert testmodels.tokenize_chat_text(prompt)[-1] == "!"  # the reply's second token
    response = server.client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 24})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["text"] == " I am a tiny test model."
    assert choice["finish_reason"] == "stop"
