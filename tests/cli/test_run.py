"""`modelrunner run`: one-shot prompts, preload, and the interactive chat on a real pseudo-terminal."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.cli.cli_runner import CLI, PtySession
from tests.cli.fake_daemon import FakeDaemon, RecordedRequest, Reply

pytestmark = pytest.mark.integration

CHAT = "/engines/v1/chat/completions"
MODEL = {"id": "sha256:" + "5a" * 32, "tags": ["docker.io/ai/smollm2:latest"], "config": {"format": "gguf"}}


def _delta(content: str = "", reasoning: str = "") -> dict[str, object]:
    delta: dict[str, str] = {}
    if content:
        delta["content"] = content
    if reasoning:
        delta["reasoning_content"] = reasoning
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


def echo_chat(pause: float = 0.0, words: int = 1) -> object:
    """A chat endpoint that answers "You said: <last user message>" in a few SSE chunks."""

    def handle(request: RecordedRequest) -> Reply:
        if request.headers.get("x-preload-only") == "true":
            return Reply(200)
        body = request.json()
        last = body["messages"][-1]["content"]
        chunks = [_delta(reasoning="thinking..."), _delta("You said: "), _delta(last)]
        chunks += [_delta(f" w{i}") for i in range(words)]
        return Reply.sse(
            [*chunks, {"choices": [{"delta": {}, "finish_reason": "stop"}]}, "[DONE]"], pause=pause
        )

    return handle


@pytest.fixture
def chat_daemon(fake_daemon: FakeDaemon) -> FakeDaemon:
    fake_daemon.on("GET", "/models/smollm2", Reply.json(MODEL))
    fake_daemon.on("POST", CHAT, echo_chat())  # type: ignore[arg-type]
    fake_daemon.on("POST", "/engines/_configure", Reply(202))
    return fake_daemon


def _chat_bodies(daemon: FakeDaemon) -> list[dict[str, object]]:
    return [r.json() for r in daemon.requests_to("POST", CHAT) if "x-preload-only" not in r.headers]


# --- one-shot -------------------------------------------------------------------------------------------


def test_one_shot_prompt_streams_reply(cli: CLI, chat_daemon: FakeDaemon) -> None:
    result = cli("run", "smollm2", "Say", "hi")
    assert result.returncode == 0, result.stderr
    # Piped output is the answer alone: no reasoning text, no prompts, a final newline.
    assert result.stdout == "You said: Say hi w0\n"
    assert [r.path for r in chat_daemon.requests] == ["/models/smollm2", CHAT]
    (body,) = _chat_bodies(chat_daemon)
    assert body == {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi"}], "stream": True}
    assert chat_daemon.requests[1].headers["accept"] == "text/event-stream"


def test_prompt_from_stdin(cli: CLI, chat_daemon: FakeDaemon) -> None:
    result = cli("run", "smollm2", input="Summarize:\nline one\nline two\n")
    assert result.returncode == 0, result.stderr
    assert _chat_bodies(chat_daemon)[0]["messages"] == [
        {"role": "user", "content": "Summarize:\nline one\nline two"}
    ]


def test_empty_stdin_is_a_usage_error(cli: CLI, chat_daemon: FakeDaemon) -> None:
    result = cli("run", "smollm2", input="")
    assert result.returncode == 2
    assert result.stderr.startswith("modelrunner: error: no prompt")


def test_missing_model_is_pulled_first(cli: CLI, fake_daemon: FakeDaemon) -> None:
    pulled: list[bool] = []

    def get_model(request: RecordedRequest) -> Reply:
        return Reply.json(MODEL) if pulled else Reply.text("model not found\n", 404)

    def pull(request: RecordedRequest) -> Reply:
        pulled.append(True)
        return Reply.ndjson([{"type": "success", "message": "Model pulled successfully"}])

    fake_daemon.on("GET", "/models/smollm2", get_model)
    fake_daemon.on("POST", "/models/create", pull)
    fake_daemon.on("POST", CHAT, echo_chat())  # type: ignore[arg-type]
    result = cli("run", "smollm2", "hello")
    assert result.returncode == 0, result.stderr
    assert "Unable to find model 'smollm2' locally" in result.stderr
    assert result.stdout.splitlines() == ["Model pulled successfully", "You said: hello w0"]
    assert [r.path for r in fake_daemon.requests] == ["/models/smollm2", "/models/create", CHAT]


def test_detach_preloads(cli: CLI, chat_daemon: FakeDaemon) -> None:
    result = cli("run", "-d", "smollm2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Model smollm2 is loaded."
    (request,) = chat_daemon.requests_to("POST", CHAT)
    assert request.headers["x-preload-only"] == "true"
    assert request.json() == {"model": "smollm2", "messages": []}


def test_load_failure_is_one_line(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models/smollm2", Reply.json(MODEL))
    fake_daemon.on(
        "POST",
        CHAT,
        Reply.text(
            "unable to load runner: llama.cpp terminated unexpectedly: out of memory\n\nVerbose output:\n...",
            500,
        ),
    )
    result = cli("run", "smollm2", "hi")
    assert result.returncode == 1
    assert (
        result.stderr == "modelrunner: error: unable to load runner: llama.cpp terminated unexpectedly: "
        "out of memory\n"
    )


def test_error_inside_the_stream(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models/smollm2", Reply.json(MODEL))
    fake_daemon.on(
        "POST", CHAT, Reply.sse([_delta("Partial"), {"error": {"message": "context size exceeded"}}])
    )
    result = cli("run", "smollm2", "hi")
    assert result.returncode == 1
    assert result.stdout == "Partial\n"
    assert result.stderr == "modelrunner: error: context size exceeded\n"


def test_non_streaming_answer_is_accepted(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models/smollm2", Reply.json(MODEL))
    fake_daemon.on(
        "POST", CHAT, Reply.json({"choices": [{"message": {"role": "assistant", "content": "Whole."}}]})
    )
    result = cli("run", "smollm2", "hi")
    assert result.returncode == 0 and result.stdout == "Whole.\n"


# --- interactive, through a pty --------------------------------------------------------------------------


@pytest.fixture
def chat(cli: CLI, chat_daemon: FakeDaemon) -> Iterator[PtySession]:
    session = cli.spawn_pty("run", "smollm2")
    try:
        session.expect("Chatting with smollm2")
        session.expect(">>> ")
        yield session
    finally:
        session.close()


def test_interactive_chat(chat: PtySession, chat_daemon: FakeDaemon) -> None:
    # Preloaded before the first prompt, so the first reply does not wait for a model load.
    preload = chat_daemon.requests_to("POST", CHAT)
    assert len(preload) == 1 and preload[0].headers["x-preload-only"] == "true"

    chat.sendline("Hello there")
    reply = chat.expect(">>> ")
    assert "thinking..." in reply  # reasoning is shown on a terminal (dimmed)
    assert "You said: Hello there w0" in reply

    chat.sendline('"""First line')
    chat.expect("... ")
    chat.sendline("second line")
    chat.expect("... ")
    chat.sendline('third line"""')
    assert "third line w0" in chat.expect(">>> ")

    chat.sendline("/set system Be brief.")
    chat.expect("Set the system message.")
    chat.expect(">>> ")
    chat.sendline("/set num_ctx 4096")
    chat.expect("Set the context size to 4096 tokens.")
    chat.expect(">>> ")
    chat.sendline("Again")
    chat.expect("You said: Again")
    chat.expect(">>> ")

    chat.sendline("/?")
    chat.expect("/set num_ctx <n>")
    chat.expect(">>> ")
    chat.sendline("/nonsense")
    chat.expect("unknown command '/nonsense'")
    chat.expect(">>> ")
    chat.sendline("/bye")
    assert chat.wait() == 0

    bodies = _chat_bodies(chat_daemon)
    assert [b["messages"][-1]["content"] for b in bodies] == [  # type: ignore[index]
        "Hello there",
        "First line\nsecond line\nthird line",
        "Again",
    ]
    # The last request carries the system message and the whole conversation.
    assert bodies[2]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "You said: Hello there w0"},
        {"role": "user", "content": "First line\nsecond line\nthird line"},
        {"role": "assistant", "content": "You said: First line\nsecond line\nthird line w0"},
        {"role": "user", "content": "Again"},
    ]
    (configure,) = chat_daemon.requests_to("POST", "/engines/_configure")
    assert configure.json() == {"model": "smollm2", "context-size": 4096}


def test_ctrl_c_stops_a_reply_and_ctrl_d_leaves(cli: CLI, chat_daemon: FakeDaemon) -> None:
    chat_daemon.on("POST", CHAT, echo_chat(pause=0.2, words=200))  # type: ignore[arg-type]
    session = cli.spawn_pty("run", "smollm2")
    try:
        session.expect(">>> ")
        session.sendline("Tell me everything")
        session.expect("You said: Tell me everything")
        session.interrupt()
        session.expect("(stopped)")
        session.expect(">>> ")
        # Give readline time to start waiting for input: a SIGINT that lands between the prompt being
        # drawn and readline's select() is only noticed at the next keystroke (a CPython race no
        # person typing can hit).
        time.sleep(0.5)
        session.interrupt()  # at the prompt: a hint, not an exit
        session.expect("Use Ctrl-D or /bye to leave.")
        session.expect(">>> ")
        session.sendline("Short")
        session.expect("You said: Short")
        session.interrupt()
        session.expect(">>> ")
        session.eof()
        assert session.wait() == 0
    finally:
        session.close()
    bodies = _chat_bodies(chat_daemon)
    # The interrupted exchange is not part of the history sent with the next message.
    assert bodies[1]["messages"] == [{"role": "user", "content": "Short"}]


def test_failed_reply_keeps_the_chat_open(cli: CLI, chat_daemon: FakeDaemon) -> None:
    answers = iter([Reply.text("model is busy\n", 503)])

    def flaky(request: RecordedRequest) -> Reply:
        if request.headers.get("x-preload-only") == "true":
            return Reply(200)
        return next(answers, None) or echo_chat()(request)  # type: ignore[operator]

    chat_daemon.on("POST", CHAT, flaky)
    session = cli.spawn_pty("run", "smollm2")
    try:
        session.expect(">>> ")
        session.sendline("first")
        session.expect("modelrunner: error: model is busy")
        session.expect(">>> ")
        session.sendline("second")
        session.expect("You said: second")
        session.sendline("/exit")
        assert session.wait() == 0
    finally:
        session.close()
    assert json.loads(json.dumps(_chat_bodies(chat_daemon)[-1]["messages"])) == [
        {"role": "user", "content": "second"}
    ]
