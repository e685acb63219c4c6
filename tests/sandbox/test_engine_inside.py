"""The real engine in the exact sandbox: llama-server from the engine image, default-deny spec, a
read-only model bundle, its socket in /run/engine, answering over that socket from the host."""

from __future__ import annotations

import shutil

import httpx
import pytest
import testmodels
import trio
from modelrunner.sandbox import memory_limit_for_reservation
from modelrunner.shim import images

from tests.fixtures.engine import EngineBuild
from tests.sandbox.harness import SandboxHarness

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


async def wait_healthy(client: httpx.AsyncClient) -> httpx.Response:
    while True:
        try:
            response = await client.get("http://engine/health")
        except httpx.TransportError:  # no socket yet, or not accepting yet
            await trio.sleep(0.02)
            continue
        if response.status_code == 200:
            return response
        await trio.sleep(0.02)  # 503 while the model loads


async def test_llama_server_serves_from_inside_the_sandbox(
    sandbox: SandboxHarness, llamacpp_engine: EngineBuild, test_models: testmodels.TestModelSet
) -> None:
    image = await images.import_tarball(sandbox.client, llamacpp_engine.image_tar, llamacpp_engine.image_ref)
    config = image.config
    uid, _, gid = config.user.partition(":")
    request = sandbox.request(
        *config.entrypoint,
        "--model",
        "/models/chat.gguf",
        "--host",
        "/run/engine/engine.sock",
        "--no-webui",
        "--threads",
        "2",
        "--parallel",
        "1",
        "--ctx-size",
        "512",
        env=config.env,
        uid=int(uid),
        gid=int(gid),
        cwd=config.working_dir or "/tmp",
        memory_limit_bytes=memory_limit_for_reservation(256 * MIB),
    )
    bundle_model = trio.Path(request.bundle_dir, "chat.gguf")
    await trio.to_thread.run_sync(shutil.copyfile, test_models.chat, bundle_model)

    socket_path = trio.Path(request.engine_dir, "engine.sock")
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    async with sandbox.running(request, image=image) as task, httpx.AsyncClient(transport=transport) as http:
        with trio.fail_after(60):
            health = await wait_healthy(http)
        assert health.json() == {"status": "ok"}
        reply = await http.post(
            "http://engine/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32, "temperature": 0},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
        assert task.exit_status is None, "the engine is still running"
    log = await trio.Path(request.engine_dir).parent.joinpath("task.log").read_text(errors="replace")
    assert "listening on unix:///run/engine/engine.sock" in log or "engine.sock" in log, log[-2000:]
    # The model file was only read.
    assert await bundle_model.read_bytes() == await trio.Path(test_models.chat).read_bytes()
