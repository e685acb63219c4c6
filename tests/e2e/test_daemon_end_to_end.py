"""The whole product as a user meets it: `modelrunner serve` with its embedded containerd, the CLI,
the official openai SDK, the Unix socket, and a restart that re-adopts running engines."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import openai
import pytest
import testmodels
from modelrunner.engines.sched import DEFAULT_SLICE_NS, SCHED_BATCH, current_policy, current_slice_ns

from tests.e2e.daemon import Daemon

pytestmark = pytest.mark.integration


def test_cli_package_list_run_ps_unload(daemon: Daemon, packaged: dict[str, str]) -> None:
    cli = daemon.cli()
    listed = cli("ls", "-q")
    assert listed.returncode == 0
    assert {model_id.split(":")[1][:12] for model_id in packaged.values()} <= set(listed.stdout.split())

    reply = cli("run", "ai/e2e-chat", "Who are you?")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout.strip() == testmodels.CHAT_REPLY

    ps = cli("ps")
    assert "e2e-chat" in ps.stdout and "llama.cpp" in ps.stdout and "completion" in ps.stdout
    # The engine is a containerd task in the daemon's own containerd, visible to ctr.
    assert len(daemon.ctr_rows("tasks", "ls", "-q")) == 1

    assert cli("unload", "--all").returncode == 0
    assert "e2e-chat" not in cli("ps").stdout
    assert daemon.ctr_rows("tasks", "ls", "-q") == []


def test_the_api_loop_runs_with_a_short_slice_and_engines_as_batch_work(
    daemon: Daemon, packaged: dict[str, str]
) -> None:
    cli = daemon.cli()
    assert cli("run", "ai/e2e-chat", "hi").returncode == 0
    assert daemon.process is not None
    main_thread = daemon.process.pid
    assert current_slice_ns(main_thread) == DEFAULT_SLICE_NS
    others = [int(t) for t in os.listdir(f"/proc/{main_thread}/task") if int(t) != main_thread]
    assert others and all(current_slice_ns(tid) != DEFAULT_SLICE_NS for tid in others)
    # The engine (started by containerd's shim) and containerd itself keep the normal slice.
    engine_pids = [int(row.split()[1]) for row in daemon.ctr_rows("tasks", "ls")[1:]]
    assert engine_pids
    for pid in engine_pids:
        assert current_slice_ns(pid) not in (None, DEFAULT_SLICE_NS)
        # ...and run as batch work, every thread of them, so they do not preempt the API loop.
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        assert len(threads) > 2 and {current_policy(tid) for tid in threads} == {SCHED_BATCH}


def test_status_json_reports_the_containerd_in_use(daemon: Daemon) -> None:
    result = daemon.cli()("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["running"] is True
    assert str(daemon.containerd_socket) in json.dumps(status)
    version = httpx.get(f"{daemon.url}/version").json()
    assert version["containerd"]["address"] == str(daemon.containerd_socket)
    assert version["containerd"]["embedded"] is True


def test_openai_sdk_chat_stream_tools_embeddings(daemon: Daemon, packaged: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/engines/v1", api_key="unused", max_retries=0)
    # As DMR: the OpenAI id is the first stored tag in its canonical form.
    listed = {model.id for model in client.models.list()}
    assert {f"docker.io/ai/e2e-{name}:latest" for name in ("chat", "tool", "embed")} <= listed

    chat = client.chat.completions.create(
        model="ai/e2e-chat", messages=[{"role": "user", "content": "Hi there"}]
    )
    assert chat.choices[0].message.content == testmodels.CHAT_REPLY
    assert chat.choices[0].finish_reason == "stop"
    assert chat.model == "ai/e2e-chat"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == testmodels.CHAT_REPLY_COMPLETION_TOKENS

    stream = client.chat.completions.create(
        model="ai/e2e-chat", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == testmodels.CHAT_REPLY
    assert len(deltas) > 1

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    tool_reply = client.chat.completions.create(
        model="ai/e2e-tool",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
    )
    (call,) = tool_reply.choices[0].message.tool_calls or []
    assert call.function.name == testmodels.TOOL_CALL_NAME  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == testmodels.TOOL_CALL_ARGUMENTS  # type: ignore[union-attr]

    first = client.embeddings.create(model="ai/e2e-embed", input=["a cat sits on the mat"])
    second = client.embeddings.create(model="ai/e2e-embed", input=["a cat sits on the mat"])
    assert len(first.data[0].embedding) == testmodels.EMBEDDING_DIM
    assert first.data[0].embedding == second.data[0].embedding

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ai/not-there", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}])


def test_openai_sdk_responses_through_the_daemon(daemon: Daemon, packaged: dict[str, str]) -> None:
    # The Responses layer on the sandboxed engine, reached through DMR's root alias.
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0)
    first = client.responses.create(model="ai/e2e-chat", input="Hi there")
    assert first.output_text == testmodels.CHAT_REPLY
    assert first.model == "ai/e2e-chat"
    events = list(
        client.responses.create(model="ai/e2e-chat", input="Hi", previous_response_id=first.id, stream=True)
    )
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == testmodels.CHAT_REPLY
    assert events[-1].type == "response.completed"
    assert client.responses.retrieve(events[-1].response.id).output_text == testmodels.CHAT_REPLY


def test_metrics_reexport_engine_and_scheduler_metrics(daemon: Daemon, packaged: dict[str, str]) -> None:
    assert daemon.cli()("run", "ai/e2e-chat", "hi").returncode == 0
    text = httpx.get(f"{daemon.url}/metrics").text
    engine_lines = [line for line in text.splitlines() if line.startswith("llamacpp_")]
    assert engine_lines, text[:2000]
    assert any('model="' in line and 'backend="llama.cpp"' in line for line in engine_lines)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_unix_socket_serves_the_same_api(daemon: Daemon, packaged: dict[str, str]) -> None:
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://localhost") as http:
        models = http.get("/models").json()
        assert {m["id"] for m in models} >= set(packaged.values())
        reply = http.post(
            "/engines/llama.cpp/v1/chat/completions",
            json={"model": "ai/e2e-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY


def test_kill_9_restart_readopts_engine_and_leaks_nothing(daemon: Daemon, packaged: dict[str, str]) -> None:
    cli = daemon.cli()
    assert cli("unload", "--all").returncode == 0
    assert cli("run", "ai/e2e-chat", "hello").stdout.strip() == testmodels.CHAT_REPLY
    (task_before,) = daemon.ctr_rows("tasks", "ls", "-q")

    daemon.stop(signal.SIGKILL)
    daemon.start()

    # The running engine was adopted, not reloaded: same task, and it answers at once.
    assert daemon.ctr_rows("tasks", "ls", "-q") == [task_before]
    assert "e2e-chat" in cli("ps").stdout
    assert cli("run", "ai/e2e-chat", "again").stdout.strip() == testmodels.CHAT_REPLY
    assert daemon.ctr_rows("tasks", "ls", "-q") == [task_before]

    assert cli("unload", "--all").returncode == 0
    assert daemon.ctr_rows("tasks", "ls", "-q") == []
    assert daemon.ctr_rows("containers", "ls", "-q") == []
    assert [row for row in daemon.ctr_rows("snapshots", "ls") if "View" in row] == []
