"""The request recorder behind `GET /engines/requests` (pure parts and its followers)."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from modelrunner.api._recorder import (
    RequestRecorder,
    reassemble_anthropic_stream,
    reassemble_openai_stream,
    record_object,
    truncate_media,
)

from tests.api.conftest import MODEL_ID, Fakes, Served, serve_fakes
from tests.api.scripted_engine import EngineRequest, chunk, json_answer, scripted_engine, sse_answer

CHAT = b'{"model":"ai/smol","messages":[{"role":"user","content":"hi"}]}'


def _sse(*chunks: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_keeps_the_last_ten_per_model_with_distinct_ids() -> None:
    recorder = RequestRecorder()
    for i in range(12):
        record = recorder.begin(model_id="sha256:a", model="ai/a", method="POST", url="/v1/x", body=b"%d" % i)
        recorder.finish(record, 200, b"{}")
    recorder.finish(
        recorder.begin(model_id="sha256:b", model="ai/b", method="POST", url="/v1/x", body=b""), 200
    )
    [(model_id, records)] = recorder.records("sha256:a")
    assert model_id == "sha256:a"
    assert [r.request for r in records] == [b"%d" % i for i in range(2, 12)]
    assert len({r.id for r in records}) == 10
    assert all(r.id.startswith("sha256:a_") for r in records)
    assert sorted(key for key, _ in recorder.records()) == ["sha256:a", "sha256:b"]
    assert recorder.records("sha256:nope") == []


def test_record_object_has_dmr_fields_and_omits_empty_ones() -> None:
    recorder = RequestRecorder()
    record = recorder.begin(
        model_id="sha256:a",
        model="ai/a",
        method="POST",
        url="/engines/v1/chat/completions",
        body=CHAT,
        user_agent="OpenAI/Python 2.0",
    )
    assert record_object(record)["status_code"] == 0  # in flight
    assert "response" not in record_object(record)
    recorder.finish(record, 200, b'{"choices":[]}')
    obj = record_object(record)
    assert obj == {
        "id": record.id,
        "model": "ai/a",
        "method": "POST",
        "url": "/engines/v1/chat/completions",
        "request": CHAT.decode(),
        "response": '{"choices":[]}',
        "timestamp": record.timestamp,
        "status_code": 200,
        "user_agent": "OpenAI/Python 2.0",
    }


def test_errors_are_recorded_as_json_and_a_missing_answer_as_408() -> None:
    recorder = RequestRecorder()
    plain = recorder.begin(model_id="m", model="m", method="POST", url="/v1/x", body=b"{}")
    recorder.finish(plain, 404, b"model not found\n")
    assert record_object(plain)["error"] == '{"error": "model not found\\n"}'
    assert "response" not in record_object(plain)
    shaped = recorder.begin(model_id="m", model="m", method="POST", url="/v1/x", body=b"{}")
    recorder.finish(shaped, 400, b'{"error":{"message":"bad"}}')
    assert record_object(shaped)["error"] == '{"error":{"message":"bad"}}'
    gone = recorder.begin(model_id="m", model="m", method="POST", url="/v1/x", body=b"{}")
    recorder.finish(gone, 0)
    assert record_object(gone)["status_code"] == 408


def test_openai_stream_is_reassembled_into_one_completion() -> None:
    body = _sse(
        {
            "id": "c1",
            "model": "ai/a",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
        },
        {
            "id": "c1",
            "model": "ai/a",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"reasoning_content": "think", "content": "lo"}}],
        },
        {
            "id": "c1",
            "model": "ai/a",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            "usage": {"total_tokens": 5},
        },
    ).decode()
    response, error = reassemble_openai_stream(body)
    assert error is None
    final = json.loads(response)
    assert final["object"] == "chat.completion" and final["usage"] == {"total_tokens": 5}
    assert final["choices"] == [
        {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": "Hello", "reasoning_content": "think"},
        }
    ]
    assert reassemble_openai_stream("no events here") == ("no events here", None)


def test_an_error_line_in_a_stream_becomes_a_streaming_error() -> None:
    body = (
        'data: {"choices":[]}\n\nerror: {"code": 500, "message": "context full", "type": "server_error"}\n\n'
    )
    response, error = reassemble_openai_stream(body)
    assert response == body
    assert error is not None
    assert (error["status_code"], error["message"], error["type"]) == (500, "context full", "server_error")
    _, garbled = reassemble_openai_stream("error: {not json\n")
    assert garbled == {"status_code": 400, "message": "unparseable streaming error", "details": "{not json"}


def test_anthropic_stream_is_reassembled_into_one_message() -> None:
    events = [
        (
            "message_start",
            {"type": "message_start", "message": {"id": "m1", "role": "assistant", "stop_reason": None}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi "}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "there"}},
        ),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
        ),
    ]
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    response, error = reassemble_anthropic_stream(body)
    assert error is None
    assert json.loads(response) == {
        "id": "m1",
        "role": "assistant",
        "stop_reason": "end_turn",
        "usage": {"output_tokens": 2},
        "content": [{"type": "text", "text": "Hi there"}],
    }


def test_answers_are_kept_by_reference_and_cut_past_the_limit() -> None:
    recorder = RequestRecorder(max_answer_bytes=1000)
    record = recorder.begin(model_id="m", model="ai/a", method="POST", url="/v1/chat/completions", body=CHAT)
    chunks = [
        b'data: {"model":"alias","choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"model":"alias","choices":[{"delta":{"content":"b"}}]}\n\n',
    ]
    for piece in chunks:
        record.add(piece)
    assert record.parts[0] is chunks[0]
    recorder.finish(record, 200)
    final = json.loads(record_object(record)["response"])
    assert final["choices"][0]["message"]["content"] == "ab" and final["model"] == "ai/a"
    big = recorder.begin(model_id="m", model="ai/a", method="POST", url="/v1/chat/completions", body=CHAT)
    for _ in range(30):
        big.add(chunks[0])
    recorder.finish(big, 200)
    assert big.parts == [] and big.cut
    assert "larger than the recorder keeps" in record_object(big)["response"]


def test_base64_media_is_cut_and_other_bodies_are_kept_as_they_are() -> None:
    image = "data:image/png;base64," + "A" * 5000
    audio = "B" * 300
    body = json.dumps(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                        {"type": "text", "text": "what is this?"},
                    ],
                }
            ],
        }
    ).encode()
    cut = json.loads(truncate_media(body))
    parts = cut["messages"][0]["content"]
    assert parts[0]["image_url"]["url"] == "data:image/png;base64," + "A" * 100 + "...[truncated 4900 chars]"
    assert parts[1]["input_audio"]["data"] == "B" * 100 + "...[truncated 200 chars]"
    assert parts[2]["text"] == "what is this?"
    assert truncate_media(CHAT) is CHAT
    assert truncate_media(b"not json") == b"not json"
    recorder = RequestRecorder()
    record = recorder.begin(model_id="m", model="m", method="POST", url="/v1/chat/completions", body=body)
    assert len(record.request) < 600


async def test_followers_get_finished_records_and_slow_ones_miss_some() -> None:
    recorder = RequestRecorder()
    with recorder.follow() as records:
        assert recorder.followers == 1
        first = recorder.begin(model_id="m", model="ai/a", method="POST", url="/v1/x", body=b"{}")
        recorder.finish(first, 200, b"{}")
        with trio.fail_after(1):
            assert await records.receive() is first
        for _ in range(150):
            recorder.finish(
                recorder.begin(model_id="m", model="ai/a", method="POST", url="/v1/x", body=b""), 200
            )
        received = 0
        while True:
            try:
                records.receive_nowait()
            except trio.WouldBlock:
                break
            received += 1
        assert received == 100  # the buffer; the rest were dropped, not queued without bound
    assert recorder.followers == 0


# -- GET /engines/requests over the fakes and a scripted engine ---------------------------------------


async def _chat(served: Served, **extra: object) -> None:
    body = {"model": "ai/smollm2", "messages": [{"role": "user", "content": "hi"}], **extra}
    response = await served.client.post(
        "/engines/v1/chat/completions", json=body, headers={"User-Agent": "test-agent/1"}
    )
    assert response.status_code == 200


async def test_requests_route_lists_what_the_proxy_answered(fakes: Fakes, tmp_path: Path) -> None:
    def answer(request: EngineRequest) -> list[bytes]:
        if request.json().get("stream"):
            return sse_answer([chunk("Hel"), chunk("lo", finish="stop"), "data: [DONE]\n\n"])
        return json_answer({"model": "engine-alias", "choices": [{"message": {"content": "Hello"}}]})

    async with scripted_engine(tmp_path, answer) as engine, serve_fakes(fakes, tmp_path) as served:
        fakes.scheduler.socket_path = engine.path
        assert (await served.client.get("/engines/requests")).json() == []
        await _chat(served)
        await _chat(served, stream=True)
        [group] = (await served.client.get("/engines/requests")).json()
        assert (group["count"], group["model"], group["config"]) == (2, MODEL_ID, {})
        plain, streamed = group["records"]
        assert plain["url"] == "/engines/v1/chat/completions" and plain["method"] == "POST"
        assert plain["status_code"] == 200 and plain["user_agent"] == "test-agent/1"
        assert json.loads(plain["request"])["messages"] == [{"role": "user", "content": "hi"}]
        assert json.loads(plain["response"])["model"] == "ai/smollm2"  # as the client saw it
        final = json.loads(streamed["response"])
        assert final["object"] == "chat.completion" and final["model"] == "ai/smollm2"
        assert final["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
        by_model = (await served.client.get("/engines/requests", params={"model": "ai/smollm2"})).json()
        assert [r["id"] for r in by_model[0]["records"]] == [plain["id"], streamed["id"]]
        assert (await served.client.get("/engines/requests", params={"model": "ai/other"})).json() == []


async def test_an_engine_failure_is_recorded_as_the_error_the_client_got(
    fakes: Fakes, tmp_path: Path
) -> None:
    async with (
        scripted_engine(tmp_path, lambda request: [b""]) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        body = {"model": "ai/smollm2", "messages": []}
        assert (await served.client.post("/v1/chat/completions", json=body)).status_code == 502
        [group] = (await served.client.get("/engines/requests")).json()
        [record] = group["records"]
        assert record["status_code"] == 502
        assert "engine" in json.loads(record["error"])["error"] and "response" not in record


async def test_following_requests_streams_each_one_as_it_finishes(fakes: Fakes, tmp_path: Path) -> None:
    answer = json_answer({"model": "engine-alias", "choices": []})
    async with (
        scripted_engine(tmp_path, lambda request: answer) as engine,
        serve_fakes(fakes, tmp_path) as served,
    ):
        fakes.scheduler.socket_path = engine.path
        await _chat(served)  # recorded before anyone follows
        headers = {"Accept": "text/event-stream"}
        params = {"include_existing": "true", "model": "ai/smollm2"}
        async with served.client.stream(
            "GET", "/engines/requests", headers=headers, params=params
        ) as response:
            assert response.headers["content-type"] == "text/event-stream"
            lines = response.aiter_lines()
            events: list[tuple[str, object]] = []
            with trio.fail_after(10):
                while len(events) < 3:
                    line = await anext(lines)
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: "):
                        events.append((name, json.loads(line[len("data: ") :])))
                        if name == "connected":
                            await _chat(served)  # finishes while followed
        (first, existing), (second, connected), (third, new) = events
        assert (first, second, third) == ("existing_request", "connected", "new_request")
        assert connected == {"status": "connected"}
        assert isinstance(existing, list) and existing[0]["count"] == 1
        assert isinstance(new, list) and new[0]["model"] == "ai/smollm2"
        assert new[0]["records"][0]["status_code"] == 200
        assert new[0]["records"][0]["id"] != existing[0]["records"][0]["id"]
