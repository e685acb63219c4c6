"""The llama.cpp backend for real: containerd + runc + the sandbox + llama-server b11312.

Each test gets its own containerd namespace (wiped afterwards) and checks that it leaves no
containers, tasks, snapshots or leases behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest
import trio
from modelrunner.engines import BackendBusy, EngineStartError, MemoryEstimate, Mode, RunnerConfig
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.engines.status import BackendState, BackendStatus
from modelrunner.shim.client import Containerd

from tests.engines.conftest import BundleFactory
from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.engine import EngineBuild
from tests.fixtures.engines import make_environment

pytestmark = pytest.mark.integration

RESERVATION = MemoryEstimate(ram=512 << 20)
MIB = 1 << 20


async def post_json(socket_path: object, path: str, body: dict[str, object]) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine", timeout=60) as client:
        return await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def runner_counts(containerd: ContainerdInstance, namespace: str) -> tuple[int, int, int]:
    """Containers, tasks and leases (the image's snapshots and content may stay)."""
    counts = containerd.counts(namespace)
    return counts.containers, counts.tasks, counts.leases


async def test_chat_model_answers_in_the_sandbox(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, test_models: Any, containerd: ContainerdInstance
) -> None:
    import testmodels

    model = make_bundle(test_models.chat, name="ai/tiny-chat:latest")
    runner = await llamacpp.start_runner(model, Mode.COMPLETION, RunnerConfig(context_size=2048), RESERVATION)
    namespace = llamacpp.environment.containerd.namespace
    try:
        assert runner_counts(containerd, namespace) == (1, 1, 1)
        response = await post_json(runner.socket_path, "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
        assert body["model"] == "ai/tiny-chat:latest"  # --alias: clients see the name they asked for
        # The sandbox: the engine runs as the image's unprivileged user, the model is read-only.
        status = await trio.Path(f"/proc/{runner.pid}/status").read_text()
        assert "\nUid:\t65532\t" in status
        mountinfo = (await trio.Path(f"/proc/{runner.pid}/mountinfo").read_text()).splitlines()
        models_mount = next(line for line in mountinfo if line.split()[4] == "/models")
        assert " ro," in models_mount or models_mount.split()[5].startswith("ro")
        assert runner.engine_report is not None and runner.engine_report.ram > 0
        assert (await runner.measured_memory() or 0) > 0
        assert "--ctx-size" in runner.argv and runner.argv[runner.argv.index("--ctx-size") + 1] == "2048"
        # The scheduler may lower the reservation (and so the cgroup limit) to the measured use.
        limit_file = trio.Path(f"/sys/fs/cgroup/memory{runner.cgroups_path}/memory.limit_in_bytes")
        before = int(await limit_file.read_text())
        await runner.set_memory_limit(64 << 20)
        after = int(await limit_file.read_text())
        assert after < before
        assert after == (64 << 20) + (256 << 20)  # sandbox's margin: at least 256 MiB
        assert runner.reservation.ram == 64 << 20
    finally:
        await runner.stop()
    assert not runner.socket_path.exists()
    assert runner.runner_dir is not None and not runner.runner_dir.exists()
    assert runner_counts(containerd, namespace) == (0, 0, 0)
    assert llamacpp.runners() == []


async def test_embedding_model_answers_embeddings(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, test_models: Any
) -> None:
    import testmodels

    model = make_bundle(test_models.embed, name="ai/tiny-embed:latest")
    runner = await llamacpp.start_runner(model, Mode.EMBEDDING, RunnerConfig(), RESERVATION)
    try:
        assert "--embeddings" in runner.argv
        response = await post_json(runner.socket_path, "/v1/embeddings",
                                   {"input": ["a cat sits on the mat", "a kitten sleeps on the rug"]})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert len(data) == 2
        assert all(len(item["embedding"]) == testmodels.EMBEDDING_DIM for item in data)
    finally:
        await runner.stop()


def long_chat_prompt(min_tokens: int) -> str:
    """A user message whose chat prompt has about ``min_tokens`` tokens."""
    import testmodels

    words = ["the", "weather", "in", "paris", "is", "mild", "today", "and", "the", "tests", "expect", "a",
             "reply"]
    text: list[str] = []
    while testmodels.chat_prompt_tokens([{"role": "user", "content": " ".join(text)}]) < min_tokens:
        text.extend(words)
    return " ".join(text)


def long_embedding_input(max_tokens: int) -> str:
    import testmodels

    words = ["cats", "and", "kittens", "sleep", "on", "the", "warm", "mat", "while", "stocks", "fall"]
    text: list[str] = []
    while len(testmodels.embedding_tokens(" ".join([*text, *words]))) <= max_tokens:
        text.extend(words)
    return " ".join(text)


@pytest.mark.parametrize("which", ["chat", "chat_tool", "embed", "chat_large"])
async def test_estimate_matches_measured_memory(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, test_models: Any, which: str
) -> None:
    """Estimate (before start) vs measured (cgroup peak or VmHWM, whichever is larger, after a
    request that fills the context, so every buffer the engine reserved has been used): within
    25 %. The numbers are printed for the closing note (run with -s)."""
    mode = Mode.EMBEDDING if which == "embed" else Mode.COMPLETION
    model = make_bundle(getattr(test_models, which), name=f"ai/{which}:latest")
    # One micro-batch (512) fills the context: every reserved buffer gets used, and the request
    # stays short on a busy 2-core machine.
    context = 512
    config = RunnerConfig(context_size=context)
    estimate = llamacpp.estimate_memory(model, mode, config)
    breakdown = llamacpp.memory_breakdown(model, mode, config)
    runner = await llamacpp.start_runner(model, mode, config, estimate)
    try:
        if mode is Mode.EMBEDDING:
            body: dict[str, object] = {"input": long_embedding_input(context - 8)}
            response = await post_json(runner.socket_path, "/v1/embeddings", body)
        else:
            prompt = long_chat_prompt(context - 100)
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
            response = await post_json(runner.socket_path, "/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] >= context * 3 // 4
        await trio.sleep(0.2)
        memory = runner.memory()
    finally:
        await runner.stop()
    measured = memory.in_use_peak
    assert measured is not None
    report = runner.engine_report
    assert report is not None
    print(
        f"\nMEMORY {which}: estimate {estimate.total() / MIB:.1f} MiB "
        f"(weights {breakdown.weights / MIB:.1f}, kv {breakdown.kv_cache / MIB:.1f}, "
        f"compute {breakdown.compute / MIB:.1f}, output {breakdown.output / MIB:.2f}, "
        f"overhead {breakdown.overhead / MIB:.1f}); engine report {report.total() / MIB:.1f} MiB; "
        f"measured {measured / MIB:.1f} MiB (cgroup peak {(memory.peak or 0) / MIB:.1f}, "
        f"VmHWM {(memory.rss_peak or 0) / MIB:.1f}, anon {(memory.anon or 0) / MIB:.1f}); "
        f"error {100 * (estimate.total() - measured) / measured:+.1f} %"
    )
    assert abs(estimate.total() - measured) <= 0.25 * measured
    # The engine's own buffer report agrees with the estimate's parts it covers.
    assert abs(report.total() - estimate.total()) <= 0.25 * estimate.total()


def write_unknown_architecture_model(path: Path) -> Path:
    """A well-formed GGUF that llama.cpp refuses to load: an architecture it does not know."""
    writer = gguf.GGUFWriter(path, "tinyfake")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(1)
    writer.add_context_length(256)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    import numpy as np

    writer.add_tensor("token_embd.weight", np.zeros((2, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def test_a_model_that_fails_to_load_gives_a_translated_error(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, short_tmp: Path, containerd: ContainerdInstance
) -> None:
    model = make_bundle(write_unknown_architecture_model(short_tmp / "broken.gguf"))
    namespace = llamacpp.environment.containerd.namespace
    with pytest.raises(EngineStartError) as info:
        await llamacpp.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
    message = str(info.value)
    assert message.startswith("llama.cpp failed: failed to load model: ")
    assert "unknown model architecture: 'tinyfake'" in message
    assert "\n\nVerbose output:\n" in message
    assert info.value.exit_code is not None and info.value.exit_code != 0
    assert runner_counts(containerd, namespace) == (0, 0, 0)


async def test_a_file_that_is_not_gguf_is_refused_before_anything_starts(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, short_tmp: Path, containerd: ContainerdInstance
) -> None:
    junk = short_tmp / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    model = make_bundle(junk)
    with pytest.raises(EngineStartError, match="cannot read the model"):
        await llamacpp.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
    assert runner_counts(containerd, llamacpp.environment.containerd.namespace) == (0, 0, 0)


async def test_cancelling_a_load_tears_the_task_down(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, test_models: Any, containerd: ContainerdInstance
) -> None:
    await llamacpp.install()
    model = make_bundle(test_models.chat_large)
    namespace = llamacpp.environment.containerd.namespace
    runners_dir = llamacpp.environment.state_dir / "runners"

    async def cancel_once_the_runner_exists(scope: trio.CancelScope) -> None:
        # Cancel mid-load at a point that does not depend on how fast the engine loads: the
        # runner's directory appears just before its containerd task is created.
        while not (runners_dir.exists() and any(runners_dir.iterdir())):  # noqa: ASYNC110 (filesystem)
            await trio.sleep(0.001)
        scope.cancel()

    loaded = None
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_once_the_runner_exists, scope)
            loaded = await llamacpp.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
    assert loaded is None and scope.cancelled_caught
    assert runner_counts(containerd, namespace) == (0, 0, 0)
    assert list((llamacpp.environment.state_dir / "runners").iterdir()) == []


async def test_load_timeout_is_a_clear_error(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild, make_bundle: BundleFactory,
    test_models: Any, containerd: ContainerdInstance,
) -> None:
    # No engine process can bind its socket and load a model within a millisecond of its task
    # starting, however fast the machine.
    environment = make_environment(engine_client, short_tmp / "state", llamacpp_engine, load_timeout=0.001)
    async with open_llamacpp_backend(environment) as backend:
        await backend.install()
        model = make_bundle(test_models.chat)
        expected = r"took too long to initialize \(no /health 200 within 0\.001 s\)"
        with pytest.raises(EngineStartError, match=expected):
            await backend.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
    assert runner_counts(containerd, engine_client.namespace) == (0, 0, 0)


async def test_engine_that_dies_is_reported_and_its_socket_removed(
    llamacpp: LlamaCppBackend, make_bundle: BundleFactory, test_models: Any
) -> None:
    import signal

    model = make_bundle(test_models.chat)
    runner = await llamacpp.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
    assert runner.socket_path.exists()
    await runner.task.kill(signal.SIGKILL)
    with trio.fail_after(10):
        info = await runner.wait_exit()
    assert info.code == 137
    assert info.message.startswith("llama.cpp terminated unexpectedly (exit code 137)")
    # llama-server leaves its socket file behind; the runner removes it so nothing binds to a stale one.
    assert runner.socket_path.exists()
    await runner.stop()
    assert not runner.socket_path.exists()


async def test_status_install_and_uninstall(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild, make_bundle: BundleFactory,
    test_models: Any,
) -> None:
    environment = make_environment(engine_client, short_tmp / "state", llamacpp_engine)
    async with open_llamacpp_backend(environment) as backend:
        assert backend.status() == "Not Installed"
        lines: list[str] = []
        await backend.install(lines.append)
        assert lines == ["Installing llama.cpp backend...", "llama.cpp backend installed successfully"]
        status = BackendStatus.parse(backend.status())
        assert status.state is BackendState.RUNNING
        assert backend.image is not None
        assert status.details == f"llama.cpp b11312-cpu ({backend.image.digest})"
        runner = await backend.start_runner(make_bundle(test_models.chat), Mode.COMPLETION, RunnerConfig(),
                                            RESERVATION)
        with pytest.raises(BackendBusy, match="1 runner"):
            await backend.uninstall()
        await runner.stop()
        await backend.uninstall()
        assert backend.status() == "Not Installed"
    # A new backend on the same namespace reads the state back from containerd.
    async with open_llamacpp_backend(environment) as again:
        assert again.status() == "Not Installed"
        await again.install()
    async with open_llamacpp_backend(environment) as third:
        assert third.status().startswith("Running: llama.cpp b11312-cpu (sha256:")


async def test_installing_from_a_missing_tarball_is_an_error_status(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild, make_bundle: BundleFactory,
    test_models: Any,
) -> None:
    from dataclasses import replace

    from modelrunner.engines import BackendNotInstalled

    environment = make_environment(engine_client, short_tmp / "state", llamacpp_engine)
    missing = replace(environment.llamacpp_image, tarball=short_tmp / "nope.oci.tar")
    async with open_llamacpp_backend(replace(environment, llamacpp_image=missing)) as backend:
        model = make_bundle(test_models.chat)
        with pytest.raises(BackendNotInstalled, match=r"nope\.oci\.tar"):
            await backend.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
        status = backend.status()
        assert status.startswith("Error: installing docker.io/modelrunner/llama.cpp:b11312-cpu from ")


async def test_runners_are_adopted_after_a_restart(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild, make_bundle: BundleFactory,
    test_models: Any, containerd: ContainerdInstance,
) -> None:
    import signal

    environment = make_environment(engine_client, short_tmp / "state", llamacpp_engine)
    model = make_bundle(test_models.chat, name="ai/adopt-me:latest")
    async with open_llamacpp_backend(environment, stop_runners_on_exit=False) as first:
        keep = await first.start_runner(model, Mode.COMPLETION, RunnerConfig(), RESERVATION)
        dead = await first.start_runner(model, Mode.EMBEDDING, RunnerConfig(), RESERVATION)
        await dead.task.kill(signal.SIGKILL)
        await dead.task.wait()
    # "Restart": a new backend finds the healthy runner and removes the dead one.
    async with open_llamacpp_backend(environment) as second:
        adopted = await second.adopt_runners()
        assert [r.runner_id for r in adopted] == [keep.runner_id]
        runner = adopted[0]
        assert (runner.model_id, runner.model_name, runner.mode) == (model.id, "ai/adopt-me:latest",
                                                                     Mode.COMPLETION)
        assert runner.reservation.total() == RESERVATION.total()
        response = await post_json(runner.socket_path, "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
        assert runner_counts(containerd, engine_client.namespace) == (1, 1, 1)
    # Leaving the second backend stopped the adopted runner.
    assert runner_counts(containerd, engine_client.namespace) == (0, 0, 0)
