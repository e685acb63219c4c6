"""The scheduler against real containerd + runc + llama-server b11312, through engines/' llama.cpp
backend. "Requests" are real HTTP requests to the runner's Unix socket made while holding a lease,
as api/'s proxy makes them. Each test runs in its own containerd namespace and checks that no
container, task or lease is left behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import testmodels
import trio
import trio.testing
from modelrunner.engines import Mode, ModelSpec, RunnerConfig
from modelrunner.engines.llamacpp.backend import LlamaCppBackend
from modelrunner.engines.registry import BackendRegistry
from modelrunner.sandbox.gpus import GpuInventory
from modelrunner.scheduler import (
    ConfigureRequest,
    ModelNotFound,
    QueueFull,
    RunnerLease,
    Scheduler,
    SchedulerSettings,
    open_scheduler,
)

from tests.fixtures.containerd import ContainerdInstance

pytestmark = pytest.mark.integration

MiB = 1 << 20
NO_GPUS = GpuInventory(devices=(), source="none", notes=("test",))
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


class SpecResolver:
    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = {spec.name: spec for spec in specs}

    def resolve(self, ref: str) -> ModelSpec:
        for spec in self.specs.values():
            if ref in (spec.name, spec.id):
                return spec
        raise ModelNotFound(ref)


def one_model_budget(backend: LlamaCppBackend, specs: list[ModelSpec]) -> int:
    """Room for the largest model's estimate plus half the smallest: never for two runners.

    (A tiny model's estimate is about 20 MB; the engine's own report and the cgroup measurement come
    out just below it, so the scheduler's correction keeps the reservation at the estimate.)
    """
    estimates = [backend.estimate_memory(s, Mode.COMPLETION, RunnerConfig()).ram for s in specs]
    return max(estimates) + min(estimates) // 2


@asynccontextmanager
async def scheduler_for(
    backend: LlamaCppBackend, specs: list[ModelSpec], **settings: Any
) -> AsyncIterator[Scheduler]:
    settings.setdefault("memory_budget", {"ram": one_model_budget(backend, specs)})
    settings.setdefault("stop_grace", 2.0)
    settings.setdefault("min_residency", 0.5)
    async with open_scheduler(
        BackendRegistry([backend]), SpecResolver(specs), SchedulerSettings(**settings), gpus=NO_GPUS
    ) as scheduler:
        yield scheduler


async def chat(lease: RunnerLease) -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport(uds=str(lease.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine", timeout=30) as client:
        response = await client.post("/v1/chat/completions", content=json.dumps(CHAT),
                                     headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def running_tasks(containerd: ContainerdInstance, namespace: str) -> int:
    listing = containerd.ctr("tasks", "ls", namespace=namespace).splitlines()[1:]
    return sum(1 for line in listing if line.split()[-1:] == ["RUNNING"])


@contextmanager
def watch_tasks(containerd: ContainerdInstance, namespace: str) -> Iterator[list[int]]:
    """Sample ``ctr tasks ls`` in a thread for as long as the block runs; yields the samples."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(running_tasks(containerd, namespace))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(10)


def leftovers(containerd: ContainerdInstance, namespace: str) -> tuple[int, int, int]:
    counts = containerd.counts(namespace)
    return counts.containers, counts.tasks, counts.leases


async def test_sixty_mixed_requests_on_a_budget_for_one_of_three_models(
    llamacpp: LlamaCppBackend, model_specs: list[ModelSpec], containerd: ContainerdInstance
) -> None:
    namespace = llamacpp.environment.containerd.namespace
    failures: list[BaseException] = []
    answered: list[str] = []
    with watch_tasks(containerd, namespace) as samples:
        async with scheduler_for(llamacpp, model_specs) as scheduler:
            budget = scheduler.statistics().ledger.budget["ram"]

            async def request(n: int) -> None:
                model = model_specs[(n * 7) % 3].name  # interleaved, not grouped
                try:
                    async with scheduler.acquire(model) as lease:
                        body = await chat(lease)
                    assert body["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
                    assert body["model"] == model
                    answered.append(model)
                except BaseException as exc:  # collected, so one failure does not hide the rest
                    failures.append(exc)

            with trio.fail_after(240):
                async with trio.open_nursery() as nursery:
                    for n in range(60):
                        nursery.start_soon(request, n)
            stats = scheduler.statistics()
    assert failures == []
    assert len(answered) == 60
    assert stats.ledger.peak_reserved["ram"] <= budget
    assert samples and max(samples) == 1  # ctr never showed two engines at once
    assert stats.loads_started >= 3
    assert leftovers(containerd, namespace) == (0, 0, 0)


async def test_twenty_simultaneous_first_requests_create_one_task(
    llamacpp: LlamaCppBackend, model_specs: list[ModelSpec], containerd: ContainerdInstance
) -> None:
    namespace = llamacpp.environment.containerd.namespace
    runner_ids: list[str] = []
    async with scheduler_for(llamacpp, model_specs) as scheduler:

        async def request() -> None:
            async with scheduler.acquire(model_specs[0].name) as lease:
                await chat(lease)
                runner_ids.append(lease.runner_id)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(request)
        assert len(runner_ids) == 20 and len(set(runner_ids)) == 1
        assert containerd.counts(namespace).containers == 1
        assert scheduler.statistics().loads_started == 1
    assert leftovers(containerd, namespace) == (0, 0, 0)


async def test_keep_alive_zero_one_second_and_forever(
    llamacpp: LlamaCppBackend, model_specs: list[ModelSpec], containerd: ContainerdInstance
) -> None:
    namespace = llamacpp.environment.containerd.namespace
    zero, one_second, forever = (spec.name for spec in model_specs)
    budget = 3 * one_model_budget(llamacpp, model_specs)
    async with scheduler_for(llamacpp, model_specs, memory_budget={"ram": budget}) as scheduler:
        for model, keep_alive in ((zero, "0"), (one_second, "1s"), (forever, "-1")):
            await scheduler.configure(ConfigureRequest.from_json({"model": model, "keep_alive": keep_alive}))
        for model in (zero, one_second, forever):
            async with scheduler.acquire(model) as lease:
                await chat(lease)
        # keep_alive 0: gone right after its request (the stop itself takes a moment).
        with trio.fail_after(10):
            while zero in {row.model_name for row in scheduler.ps()} or running_tasks(containerd, namespace) > 2:  # noqa: ASYNC110, E501 - polls ctr, an outside view
                await trio.sleep(0.05)
        assert {row.model_name for row in scheduler.ps()} == {one_second, forever}
        with trio.fail_after(10):
            while len(scheduler.ps()) > 1:  # noqa: ASYNC110 - waits on the idle timer it tests
                await trio.sleep(0.05)
        await trio.sleep(2)
        [row] = scheduler.ps()
        assert row.model_name == forever and row.keep_alive_text == "-1"
        assert running_tasks(containerd, namespace) == 1
        # Idle unload returned the others' memory to the ledger.
        assert scheduler.statistics().ledger.reserved["ram"] == row.memory_reserved
        assert scheduler.statistics().unloads == {"idle": 2}
    assert leftovers(containerd, namespace) == (0, 0, 0)


async def test_engine_killed_mid_stream_errors_within_a_second_and_next_request_succeeds(
    llamacpp: LlamaCppBackend, model_specs: list[ModelSpec], containerd: ContainerdInstance
) -> None:
    namespace = llamacpp.environment.containerd.namespace
    model = model_specs[0].name
    async with scheduler_for(llamacpp, model_specs) as scheduler:
        async with scheduler.acquire(model) as lease:
            transport = httpx.AsyncHTTPTransport(uds=str(lease.socket_path))
            body = {"prompt": "Once upon a time", "max_tokens": 900, "stream": True}
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://engine", timeout=30) as client,
                client.stream("POST", "/v1/completions", json=body) as response,
            ):
                assert response.status_code == 200
                lines = response.aiter_lines()
                first = await lines.__anext__()
                assert first.startswith("data: ")
                # Killed from outside the daemon, as an operator's `kill -9` would.
                await trio.to_thread.run_sync(
                    lambda: containerd.ctr("tasks", "kill", "--signal", "SIGKILL", lease.runner_id,
                                           namespace=namespace)
                )
                killed = time.monotonic()
                with pytest.raises(httpx.TransportError):
                    with trio.fail_after(5):
                        async for line in lines:
                            assert line != "data: [DONE]", "the stream completed despite the kill"
                error_after = time.monotonic() - killed
                lease.mark_broken("the engine closed the stream")  # what api's proxy does
            with trio.fail_after(5):
                info = await lease.wait_died()
            assert lease.died and error_after < 1.0
            assert info == lease.exit_info
            message = str(lease.died_error())
            assert model in message
            # Either the exit event or the proxy's report came first; both make a clear message.
            assert "137" in message or "stopped answering in the middle of a request" in message
        async with scheduler.acquire(model) as fresh:
            assert fresh.runner_id != lease.runner_id
            assert (await chat(fresh))["choices"][0]["message"]["content"] == testmodels.CHAT_REPLY
    assert leftovers(containerd, namespace) == (0, 0, 0)


async def test_queue_bound_answers_retry_after_and_leaving_clients_free_their_places(
    llamacpp: LlamaCppBackend, model_specs: list[ModelSpec], containerd: ContainerdInstance
) -> None:
    namespace = llamacpp.environment.containerd.namespace
    busy, waiting = model_specs[0].name, model_specs[1].name
    async with scheduler_for(llamacpp, model_specs, max_queued=4) as scheduler:
        async with scheduler.acquire(busy) as lease, trio.open_nursery() as nursery:
            await chat(lease)
            scopes = [trio.CancelScope() for _ in range(4)]

            async def queued(scope: trio.CancelScope) -> None:
                with scope:
                    async with scheduler.acquire(waiting):
                        pass

            for scope in scopes:
                nursery.start_soon(queued, scope)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert scheduler.statistics().queued_requests == 4
            with pytest.raises(QueueFull) as caught:
                async with scheduler.acquire(waiting):
                    pass
            assert caught.value.status_hint == 503 and int(caught.value.retry_after_header) >= 1
            for scope in scopes[:3]:  # three clients disconnect
                scope.cancel()
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert scheduler.statistics().queued_requests == 1
            scopes[3].cancel()
        assert running_tasks(containerd, namespace) == 1  # the waiting model was never loaded
    assert leftovers(containerd, namespace) == (0, 0, 0)
