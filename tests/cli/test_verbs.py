"""The real `modelrunner` command against a fake DMR-shaped daemon: requests, output, exit codes."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.cli.cli_runner import CLI, COMMAND
from tests.cli.fake_daemon import FakeDaemon, RecordedRequest, Reply, free_port

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SMOLLM_ID = "sha256:" + "5a" * 32
TINY_ID = "sha256:" + "7c" * 32
ORPHAN_ID = "sha256:" + "e0" * 32
MODELS = [
    {
        "id": SMOLLM_ID,
        "tags": ["docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:135M-Q4_0"],
        "created": int((NOW - timedelta(days=3, hours=1)).timestamp()),
        "config": {
            "format": "gguf",
            "quantization": "Q4_0",
            "parameters": "134.52M",
            "architecture": "llama",
            "size": "85.77MiB",
            "gguf": {"general.architecture": "llama", "llama.context_length": "8192"},
        },
    },
    {
        "id": TINY_ID,
        "tags": ["huggingface.co/org/tiny-gguf:Q4_K_M"],
        "created": int((NOW - timedelta(hours=5, minutes=1)).timestamp()),
        "config": {
            "format": "gguf",
            "quantization": "Q4_K_M",
            "parameters": "4.1M",
            "architecture": "qwen2",
            "size": "2.5MiB",
            "context_size": 2048,
        },
    },
    {"id": ORPHAN_ID, "created": 0, "config": {"format": "gguf"}},
]
LAYER_A = "sha256:" + "aaaaaaaaaaaa" + "1" * 52
LAYER_B = "sha256:" + "bbbbbbbbbbbb" + "2" * 52
TRACEBACK = "Traceback (most recent call last)"


def _columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _pull_events(mode: str = "pull") -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    total = 3_000_000
    for current in (0, 1_000_000, 2_000_000):
        events.append(
            {
                "type": "progress",
                "message": f"Downloaded: {current}",
                "total": total,
                "mode": mode,
                "layer": {"id": LAYER_A, "size": 2_000_000, "current": current},
            }
        )
    events.append(
        {
            "type": "progress",
            "total": total,
            "mode": mode,
            "layer": {"id": LAYER_B, "size": 1_000_000, "current": 1_000_000},
        }
    )
    done = "Model pulled successfully" if mode == "pull" else "Model pushed successfully"
    events.append({"type": "success", "message": done, "mode": mode})
    return events


def _assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("modelrunner: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    assert TRACEBACK not in stderr


# --- ls -------------------------------------------------------------------------------------------


def test_ls_table_over_unix_socket(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models", Reply.json(MODELS))
    result = cli("ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert _columns(lines[0]) == [
        "MODEL NAME",
        "PARAMETERS",
        "QUANTIZATION",
        "ARCHITECTURE",
        "MODEL ID",
        "CREATED",
        "CONTEXT",
        "SIZE",
    ]
    rows = [_columns(line) for line in lines[1:]]
    assert rows == [
        ["smollm2", "134.52M", "Q4_0", "llama", "5a5a5a5a5a5a", "3 days ago", "8192", "85.77MiB"],
        ["smollm2:135M-Q4_0", "134.52M", "Q4_0", "llama", "5a5a5a5a5a5a", "3 days ago", "8192", "85.77MiB"],
        [
            "huggingface.co/org/tiny-gguf:Q4_K_M",
            "4.1M",
            "Q4_K_M",
            "qwen2",
            "7c7c7c7c7c7c",
            "5 hours ago",
            "2048",
            "2.5MiB",
        ],
        ["<none>", "e0e0e0e0e0e0"],
    ]
    assert all(line == line.rstrip() for line in lines)
    (request,) = fake_daemon.requests_to("GET", "/models")
    assert request.transport == "unix"
    assert request.headers["user-agent"].startswith("modelrunner-cli/")


def test_list_alias_over_tcp(tcp_cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models", Reply.json(MODELS))
    result = tcp_cli("list", "smol")
    assert result.returncode == 0, result.stderr
    assert [_columns(line)[0] for line in result.stdout.splitlines()[1:]] == ["smollm2", "smollm2:135M-Q4_0"]
    assert fake_daemon.requests_to("GET", "/models")[0].transport == "tcp"


def test_ls_json_quiet_and_openai(cli: CLI, fake_daemon: FakeDaemon) -> None:
    openai = {
        "object": "list",
        "data": [
            {"id": "docker.io/ai/smollm2:latest", "object": "model", "created": 1, "owned_by": "docker"}
        ],
    }
    fake_daemon.on("GET", "/models", Reply.json(MODELS))
    fake_daemon.on("GET", "/engines/v1/models", Reply.json(openai))
    as_json = cli("ls", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == MODELS
    quiet = cli("ls", "-q")
    assert quiet.stdout.split() == ["5a5a5a5a5a5a", "7c7c7c7c7c7c", "e0e0e0e0e0e0"]
    listed = cli("ls", "--openai")
    assert json.loads(listed.stdout) == openai
    both = cli("ls", "--json", "-q")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_ls_empty_store(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models", Reply.json([]))
    result = cli("ls")
    assert result.returncode == 0 and result.stdout.splitlines() == [result.stdout.splitlines()[0]]
    assert result.stdout.startswith("MODEL NAME")


# --- pull / push ------------------------------------------------------------------------------------


def test_pull_progress_without_terminal(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/models/create", Reply.ndjson(_pull_events(), pause=0.01))
    result = cli("pull", "smollm2", env={"HF_TOKEN": "hf_secret"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "aaaaaaaaaaaa: Pull complete 2MB" in lines
    assert "bbbbbbbbbbbb: Pull complete 1MB" in lines
    assert lines[-1] == "Model pulled successfully"
    assert any(line.startswith("Pulled 3MB in ") for line in lines)
    (request,) = fake_daemon.requests_to("POST", "/models/create")
    # The HF token is only for Hugging Face: a Docker Hub pull must not carry it.
    assert request.json() == {"from": "smollm2"}
    assert request.headers["accept"] == "application/json"


def test_pull_hugging_face_sends_token(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "POST", "/models/create", Reply.ndjson([{"type": "success", "message": "Using cached model: 2.5MiB"}])
    )
    result = cli("pull", "hf.co/org/tiny-gguf:Q4_K_M", env={"HF_TOKEN": "hf_secret"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Using cached model: 2.5MiB"
    assert fake_daemon.requests_to("POST", "/models/create")[0].json() == {
        "from": "hf.co/org/tiny-gguf:Q4_K_M",
        "bearer-token": "hf_secret",
    }


def test_pull_html_escaped_text_plain_like_dmr(cli: CLI, fake_daemon: FakeDaemon) -> None:
    import html

    body = "".join(html.escape(json.dumps(e)) + "\n" for e in _pull_events())
    fake_daemon.on("POST", "/models/create", Reply(200, content_type="text/plain", chunks=[body.encode()]))
    result = cli("pull", "smollm2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Model pulled successfully"


def test_pull_error_in_stream(cli: CLI, fake_daemon: FakeDaemon) -> None:
    events = [*_pull_events()[:2], {"type": "error", "message": "Error: blob sha256:aa digest mismatch"}]
    fake_daemon.on("POST", "/models/create", Reply.ndjson(events))
    result = cli("pull", "smollm2")
    assert result.returncode == 1
    _assert_one_error_line(result.stderr, "blob sha256:aa digest mismatch")


def test_pull_not_found(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/models/create", Reply.text("Model not found\n", 404))
    result = cli("pull", "nosuch")
    assert result.returncode == 4
    _assert_one_error_line(result.stderr, "Model not found")


def test_pull_stream_cut_short(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/models/create", Reply.ndjson(_pull_events()[:2]))
    result = cli("pull", "smollm2")
    assert result.returncode == 1
    _assert_one_error_line(result.stderr, "without reporting success")


def test_pull_progress_bars_on_a_terminal(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/models/create", Reply.ndjson(_pull_events(), pause=0.3))
    session = cli.spawn_pty("pull", "smollm2")
    try:
        session.expect("Model pulled successfully")
        assert session.wait() == 0
    finally:
        session.close()
    output = session.output
    # One bar per layer and a total, each with bytes done of total; speed and ETA columns.
    assert "aaaaaaaaaaaa" in output and "bbbbbbbbbbbb" in output and "total" in output
    assert "3.0/3.0 MB" in output and "2.0/2.0 MB" in output
    assert re.search(r"\d+(\.\d+)? [kM]B/s", output), output
    assert "1.0/2.0 MB" in output  # an intermediate frame was drawn, not only the end state


def test_push(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/models/myorg/m:v1/push", Reply.ndjson(_pull_events("push")))
    result = cli("push", "myorg/m:v1")
    assert result.returncode == 0, result.stderr
    assert "aaaaaaaaaaaa: Push complete 2MB" in result.stdout
    assert result.stdout.splitlines()[-1] == "Model pushed successfully"


# --- rm / tag / inspect -----------------------------------------------------------------------------


def test_rm_reports_actions_and_continues_after_a_failure(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "DELETE", "/models/smollm2:135M-Q4_0", Reply.json([{"Untagged": "docker.io/ai/smollm2:135M-Q4_0"}])
    )
    fake_daemon.on(
        "DELETE",
        "/models/myorg/m",
        Reply.json([{"Untagged": "docker.io/myorg/m:latest"}, {"Deleted": SMOLLM_ID}]),
    )
    result = cli("rm", "smollm2:135M-Q4_0", "nosuch", "myorg/m")
    assert result.stdout.splitlines() == [
        "Untagged: docker.io/ai/smollm2:135M-Q4_0",
        "Untagged: docker.io/myorg/m:latest",
        f"Deleted: {SMOLLM_ID}",
    ]
    assert result.returncode == 4
    _assert_one_error_line(result.stderr, "nosuch", "not found")
    assert all("force" not in r.query for r in fake_daemon.requests if r.method == "DELETE")


def test_rm_force_and_conflict(cli: CLI, fake_daemon: FakeDaemon) -> None:
    def delete(request: RecordedRequest) -> Reply:
        if request.query.get("force") == ["true"]:
            return Reply.json([{"Deleted": SMOLLM_ID}])
        return Reply.text(
            f'unable to delete "{SMOLLM_ID[7:19]}" (must be forced) due to multiple tag references\n', 409
        )

    fake_daemon.on("DELETE", f"/models/{SMOLLM_ID[7:19]}", delete)
    refused = cli("rm", SMOLLM_ID[7:19])
    assert refused.returncode == 1
    _assert_one_error_line(refused.stderr, "must be forced")
    forced = cli("rm", "-f", SMOLLM_ID[7:19])
    assert forced.returncode == 0 and forced.stdout.strip() == f"Deleted: {SMOLLM_ID}"


def test_tag(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "POST",
        "/models/smollm2/tag",
        Reply.json(
            {"message": 'Model tagged successfully with "myorg/small:v2"', "target": "myorg/small:v2"}, 201
        ),
    )
    result = cli("tag", "smollm2", "myorg/small:v2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'Model tagged successfully with "myorg/small:v2"'
    (request,) = fake_daemon.requests_to("POST", "/models/smollm2/tag")
    assert request.query == {"repo": ["myorg/small"], "tag": ["v2"]}
    registry = cli("tag", "smollm2", "localhost:5000/org/m")
    assert registry.returncode == 0
    assert fake_daemon.requests[-1].query == {"repo": ["localhost:5000/org/m"], "tag": ["latest"]}


def test_tag_rejects_bad_target_without_asking(cli: CLI, fake_daemon: FakeDaemon) -> None:
    result = cli("tag", "smollm2", "m@sha256:" + "a" * 64)
    assert result.returncode == 2
    _assert_one_error_line(result.stderr, "digest")
    assert fake_daemon.requests == []


def test_inspect_variants(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "GET", "/models/smollm2", lambda r: Reply.json({**MODELS[0], "remote": r.query.get("remote")})
    )
    fake_daemon.on("GET", "/engines/v1/models/smollm2", Reply.json({"id": "docker.io/ai/smollm2:latest"}))
    local = cli("inspect", "smollm2")
    assert local.returncode == 0 and json.loads(local.stdout)["id"] == SMOLLM_ID
    assert json.loads(local.stdout)["remote"] is None
    remote = cli("inspect", "-r", "smollm2")
    assert json.loads(remote.stdout)["remote"] == ["true"]
    openai = cli("inspect", "--openai", "smollm2")
    assert json.loads(openai.stdout) == {"id": "docker.io/ai/smollm2:latest"}
    missing = cli("inspect", "nosuch")
    assert missing.returncode == 4
    _assert_one_error_line(missing.stderr)


# --- ps / df / unload / logs ------------------------------------------------------------------------


def test_ps_and_df(cli: CLI, fake_daemon: FakeDaemon) -> None:
    # Go's RFC 3339 with nanoseconds; measured now, so a slow suite cannot shift "8 minutes".
    used = datetime.now(UTC) - timedelta(minutes=1, seconds=30)
    last_used = used.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
    runners = [
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/smollm2",
            "mode": "completion",
            "last_used": last_used,
            "keep_alive": "10m0s",
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "docker.io/ai/embed:latest",
            "mode": "embedding",
            "last_used": "0001-01-01T00:00:00Z",
            "in_use": True,
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "big",
            "mode": "completion",
            "last_used": "0001-01-01T00:00:00Z",
            "loading": True,
        },
    ]
    fake_daemon.on("GET", "/engines/ps", Reply.json(runners))
    fake_daemon.on(
        "GET",
        "/engines/df",
        Reply.json({"models_disk_usage": 1_234_000_000, "default_backend_disk_usage": 45_600_000}),
    )
    ps = cli("ps")
    assert ps.returncode == 0, ps.stderr
    assert [_columns(line) for line in ps.stdout.splitlines()] == [
        ["MODEL NAME", "BACKEND", "MODE", "UNTIL"],
        ["smollm2", "llama.cpp", "completion", "8 minutes from now"],
        ["embed", "llama.cpp", "embedding", "In use"],
        ["big", "llama.cpp", "completion", "Loading..."],
    ]
    assert json.loads(cli("ps", "--json").stdout) == runners
    df = cli("df")
    assert [_columns(line) for line in df.stdout.splitlines()] == [
        ["TYPE", "SIZE"],
        ["Models", "1.23GB"],
        ["Inference engine", "45.6MB"],
    ]


def test_unload(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/engines/unload", Reply.json({"unloaded_runners": 2}))
    everything = cli("unload", "--all")
    assert everything.returncode == 0 and everything.stdout.strip() == "Unloaded 2 models."
    some = cli("stop", "smollm2", "embed", "--backend", "llama.cpp")
    assert some.returncode == 0
    bodies = [r.json() for r in fake_daemon.requests_to("POST", "/engines/unload")]
    assert bodies == [{"all": True}, {"all": False, "backend": "llama.cpp", "models": ["smollm2", "embed"]}]
    nothing = cli("unload")
    assert nothing.returncode == 2
    _assert_one_error_line(nothing.stderr, "--all")


def test_logs_and_follow(cli: CLI, fake_daemon: FakeDaemon) -> None:
    lines = [b"[2026-01-10T12:00:00Z] daemon started\n", b"[2026-01-10T12:00:01Z] llama-server ready\n"]
    fake_daemon.on("GET", "/logs", Reply(200, content_type="text/plain", chunks=lines, pause=0.05))
    result = cli("logs", "-f", "--no-engines")
    assert result.returncode == 0
    assert result.stdout == "".join(line.decode() for line in lines)
    (request,) = fake_daemon.requests_to("GET", "/logs")
    assert request.query == {"follow": ["true"], "no-engines": ["true"]}


def test_logs_follow_interrupted(fake_daemon: FakeDaemon, cli: CLI) -> None:
    endless = (b"[t] line %d\n" % i for i in range(100000))
    fake_daemon.on("GET", "/logs", Reply(200, content_type="text/plain", chunks=endless, pause=0.05))
    proc = subprocess.Popen(
        [*COMMAND, "logs", "-f"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "[t] line 0\n"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert TRACEBACK not in stderr


def test_logs_into_a_closed_pipe(fake_daemon: FakeDaemon, cli: CLI) -> None:
    many = [b"[t] line %d\n" % i for i in range(20000)]
    fake_daemon.on("GET", "/logs", Reply(200, content_type="text/plain", chunks=many))
    script = f'{shlex.join(COMMAND)} logs | head -n 2; echo "rc=${{PIPESTATUS[0]}}"'
    shell = subprocess.run(["bash", "-c", script], env=cli.env, capture_output=True, text=True, timeout=30)
    assert shell.stdout.splitlines() == ["[t] line 0", "[t] line 1", "rc=141"]
    assert shell.stderr == ""


def test_requests_prints_the_records_and_follows_new_ones(cli: CLI, fake_daemon: FakeDaemon) -> None:
    record = {"id": "r1", "status_code": 200}
    records = [{"count": 1, "model": "sha256:abc", "config": {}, "records": [record]}]
    fake_daemon.on("GET", "/engines/requests", Reply.json(records))
    result = cli("requests", "--model", "ai/smollm2")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == records
    (request,) = fake_daemon.requests_to("GET", "/engines/requests")
    assert request.query == {"model": ["ai/smollm2"]}

    events = [
        b'event: existing_request\ndata: [{"count":1,"records":[{"id":"r1"}]}]\n\n',
        b'event: connected\ndata: {"status": "connected"}\n\n',
        b'event: new_request\ndata: [{"count":1,"records":[{"id":"r2"}]}]\n\n',
    ]
    fake_daemon.on("GET", "/engines/requests", Reply(200, content_type="text/event-stream", chunks=events))
    result = cli("requests", "-f", "--include-existing")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)[0]["records"][0]["id"] for line in result.stdout.splitlines()] == ["r1", "r2"]
    request = fake_daemon.requests_to("GET", "/engines/requests")[-1]
    assert request.query == {"include_existing": ["true"]}
    assert request.headers["accept"] == "text/event-stream"
    assert cli("requests", "--include-existing").returncode == 2


# --- status / version ---------------------------------------------------------------------------------


def test_status_text_and_json(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "GET",
        "/version",
        Reply.json(
            {
                "version": "0.1.0",
                "containerd": {
                    "address": "/var/lib/modelrunner/containerd/containerd.sock",
                    "namespace": "modelrunner",
                    "embedded": True,
                },
            }
        ),
    )
    fake_daemon.on(
        "GET",
        "/engines/status",
        Reply.json(
            {
                "llama.cpp": "Running: llama.cpp b11312-cpu",
                "vllm": "Not Installed: only supported on CUDA hosts",
            }
        ),
    )
    text = cli("status")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"modelrunner is running at unix://{fake_daemon.socket_path} (version 0.1.0)"
    assert (
        "containerd: /var/lib/modelrunner/containerd/containerd.sock (embedded), namespace modelrunner"
        in lines
    )
    table = [_columns(line) for line in lines[lines.index("") + 1 :]]
    assert table == [
        ["BACKEND", "STATUS", "DETAILS"],
        ["llama.cpp", "Running", "llama.cpp b11312-cpu"],
        ["vllm", "Not Installed", "only supported on CUDA hosts"],
    ]
    report = json.loads(cli("status", "--json").stdout)
    assert report["running"] is True
    assert report["containerd"]["address"] == "/var/lib/modelrunner/containerd/containerd.sock"
    assert report["backends"]["llama.cpp"].startswith("Running")
    assert report["endpoint"] == f"unix://{fake_daemon.socket_path}"


def test_status_when_daemon_is_not_running(tmp_path: object) -> None:
    cli = CLI({"MODEL_RUNNER_HOST": f"http://127.0.0.1:{free_port()}"})
    text = cli("status")
    assert text.returncode == 3
    assert text.stdout.startswith("modelrunner is not running at http://127.0.0.1:")
    _assert_one_error_line(text.stderr, "modelrunner serve")
    report = cli("status", "--json")
    assert report.returncode == 3 and json.loads(report.stdout)["running"] is False


def test_version(cli: CLI, fake_daemon: FakeDaemon) -> None:
    result = cli("version")
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["Client: modelrunner 0.1.0", "Server: modelrunner 0.0.0-fake"]
    assert cli("--version").stdout.strip() == "modelrunner 0.1.0"


# --- configure / engines --------------------------------------------------------------------------------


def test_configure(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/engines/_configure", Reply(202))
    fake_daemon.on("POST", "/engines/llama.cpp/_configure", Reply(202))
    fake_daemon.on("GET", "/engines/_configure", lambda r: Reply.json([{"Model": r.query.get("model")}]))
    assert (
        cli("configure", "--context-size", "8192", "--keep-alive", "10m", "--think", "smollm2").returncode
        == 0
    )
    assert (
        cli(
            "config", "--backend", "llama.cpp", "--mode", "embedding", "embed", "--", "--threads", "4"
        ).returncode
        == 0
    )
    bodies = [r.json() for r in fake_daemon.requests if r.method == "POST"]
    assert bodies == [
        {"model": "smollm2", "context-size": 8192, "keep_alive": "10m", "llamacpp": {"reasoning-budget": -1}},
        {"model": "embed", "mode": "embedding", "runtime-flags": ["--threads", "4"]},
    ]
    assert fake_daemon.requests[1].path == "/engines/llama.cpp/_configure"
    show = cli("configure", "show", "smollm2")
    assert json.loads(show.stdout) == [{"Model": ["smollm2"]}]
    nothing = cli("configure", "smollm2")
    assert nothing.returncode == 2
    _assert_one_error_line(nothing.stderr, "nothing to configure")
    rejected = cli("configure", "--context-size", "0", "smollm2")
    assert rejected.returncode == 2
    bad_duration = cli("configure", "--keep-alive", "5 minutes", "smollm2")
    assert bad_duration.returncode == 2
    _assert_one_error_line(bad_duration.stderr, "--keep-alive", "5m")
    assert len([r for r in fake_daemon.requests if r.method == "POST"]) == 2


def test_configure_daemon_rejects_flag(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "POST",
        "/engines/_configure",
        Reply.text('runtime flag "--model" is not allowed for backend "llama.cpp"\n', 500),
    )
    result = cli("configure", "smollm2", "--", "--model", "x")
    assert result.returncode == 1
    _assert_one_error_line(result.stderr, 'runtime flag "--model" is not allowed')


def test_install_and_uninstall_engine(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("POST", "/engines/install-backend", Reply(200))
    fake_daemon.on("POST", "/engines/uninstall-backend", Reply(200))
    assert cli("install-engine").stdout.strip() == "llama.cpp is installed."
    assert cli("install-engine", "vllm", "--version", "0.9").returncode == 0
    assert cli("uninstall-engine", "vllm").stdout.strip() == "vllm is uninstalled."
    assert [r.json() for r in fake_daemon.requests if r.method == "POST"] == [
        {"backend": "llama.cpp"},
        {"backend": "vllm", "version": "0.9"},
        {"backend": "vllm"},
    ]
    fake_daemon.on("POST", "/engines/install-backend", Reply.text("backend not found\n", 404))
    unknown = cli("install-engine", "nosuch")
    assert unknown.returncode == 4
    _assert_one_error_line(unknown.stderr, "backend not found")


# --- errors -----------------------------------------------------------------------------------------------


def test_daemon_not_running_unix_socket(tmp_path: object) -> None:
    cli = CLI({"MODEL_RUNNER_SOCK": "/tmp/modelrunner-test-no-such.sock"})
    result = cli("ls")
    assert result.returncode == 3
    _assert_one_error_line(
        result.stderr, "not running", "/tmp/modelrunner-test-no-such.sock", "modelrunner serve", "systemctl"
    )


def test_daemon_not_running_tcp() -> None:
    result = CLI({"MODEL_RUNNER_HOST": f"127.0.0.1:{free_port()}"})("ps")
    assert result.returncode == 3
    _assert_one_error_line(result.stderr, "not running", "connection refused", "modelrunner serve")


def test_socket_nobody_listens_on(tmp_path: object) -> None:
    import socket
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as workdir:
        path = f"{workdir}/dead.sock"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)  # bound, never listening: connect() is refused
            result = CLI({"MODEL_RUNNER_HOST": f"unix://{path}"})("ls")
    assert result.returncode == 3
    _assert_one_error_line(result.stderr, "not running", path)


def test_bad_host_setting() -> None:
    result = CLI({"MODEL_RUNNER_HOST": "ftp://example"})("ls")
    assert result.returncode == 2
    _assert_one_error_line(result.stderr, "MODEL_RUNNER_HOST")


def test_daemon_error_is_one_line_and_debug_shows_all(cli: CLI, fake_daemon: FakeDaemon) -> None:
    body = "unable to load runner: llama.cpp failed: out of memory\n\nVerbose output:\nggml_alloc: failed\n"
    fake_daemon.on("GET", "/engines/ps", Reply.text(body, 500))
    plain = cli("ps")
    assert plain.returncode == 1
    _assert_one_error_line(plain.stderr, "unable to load runner: llama.cpp failed: out of memory")
    debug = cli("ps", "--debug")
    assert debug.returncode == 1
    assert TRACEBACK in debug.stderr and "ggml_alloc: failed" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("modelrunner: error: unable to load runner")


def test_daemon_answers_garbage(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models", Reply.text("<html>proxy error</html>"))
    fake_daemon.on("GET", "/engines/ps", Reply.json({"not": "a list"}))
    assert cli("ls").returncode == 1
    _assert_one_error_line(cli("ls").stderr, "not JSON")
    _assert_one_error_line(cli("ps").stderr, "not a JSON array")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["frobnicate"], "invalid choice"),
        (["pull"], "required: MODEL"),
        (["rm"], "required: MODEL"),
        (["ls", "--bogus"], "modelrunner ls --help"),
        (["pull", ""], "must not be empty"),
        (["run", "m", "-d", "hello"], "do not pass a prompt"),
        (["serve", "--port", "70000"], "not a port number"),
        (["serve", "--memory", "lots"], "not a size"),
    ],
)
def test_usage_errors(cli: CLI, fake_daemon: FakeDaemon, args: list[str], fragment: str) -> None:
    fake_daemon.on("GET", "/models/m", Reply.json(MODELS[0]))
    result = cli(*args)
    assert result.returncode == 2, result
    _assert_one_error_line(result.stderr, fragment)


def test_serve_env_defaults_are_validated() -> None:
    result = CLI({"MODEL_RUNNER_PORT": "twelve"})("serve")
    assert result.returncode == 2
    _assert_one_error_line(result.stderr, "MODEL_RUNNER_PORT")


def test_slow_stream_keeps_going(cli: CLI, fake_daemon: FakeDaemon) -> None:
    # A pull whose progress lines are seconds apart must not hit a read timeout.
    fake_daemon.on("POST", "/models/create", Reply.ndjson(_pull_events()[-2:], pause=1.5))
    started = time.monotonic()
    result = cli("pull", "smollm2")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.5


def test_ls_on_a_narrow_terminal_never_cuts_cells(cli: CLI, fake_daemon: FakeDaemon) -> None:
    fake_daemon.on("GET", "/models", Reply.json(MODELS))
    session = cli.spawn_pty("ls", columns=60)
    try:
        assert session.wait() == 0
    finally:
        session.close()
    assert "…" not in session.output
    assert "huggingface.co/org/tiny-gguf:Q4_K_M" in session.output and "7c7c7c7c7c7c" in session.output
