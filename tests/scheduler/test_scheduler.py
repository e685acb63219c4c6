"""Scheduler behaviour over fake backends (trio tasks with controllable load time, memory and death).

Every test runs on trio's MockClock with autojump, so minutes of keep-alive pass instantly and
timings are exact.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from modelrunner.engines import EngineStartError, MemoryEstimate, Mode, UnknownBackend
from modelrunner.scheduler import (
    ModelNotFound,
    ModelTooLarge,
    QueueFull,
    QueueTimeout,
    RunnerState,
    SchedulerClosed,
)

from tests.scheduler.fakes import FakeBackend, FakeResolver, GiB, running_scheduler


def three_models(backend: FakeBackend, resolver: FakeResolver, size: int = 3 * GiB) -> list[str]:
    names = []
    for n in range(1, 4):
        spec = resolver.add(f"ai/model{n}", n)
        backend.estimates[spec.id] = MemoryEstimate(ram=size)
        names.append(spec.name)
    return names


async def hold(scheduler, model, seconds=0.0, mode=Mode.COMPLETION, into=None):
    async with scheduler.acquire(model, mode) as lease:
        if into is not None:
            into.append((trio.current_time(), lease))
        await trio.sleep(seconds)


# -- routing, single flight -------------------------------------------------------------------------


async def test_first_request_loads_and_later_ones_go_straight_through(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=2.0), FakeResolver()
    spec = resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        start = trio.current_time()
        async with scheduler.acquire("ai/smol") as lease:
            assert trio.current_time() - start == pytest.approx(2.0)
            assert lease.model_id == spec.id and lease.backend == "fake" and lease.mode is Mode.COMPLETION
            assert lease.socket_path == backend.started[0].socket_path
            assert not lease.died
        start = trio.current_time()
        async with scheduler.acquire("ai/smol"):
            assert trio.current_time() == start  # no load, no wait
        assert len(backend.started) == 1


async def test_single_flight_twenty_first_requests_start_one_runner(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=3.0), FakeResolver()
    resolver.add("ai/smol", 1)
    got = []
    async with running_scheduler(backend, resolver) as scheduler:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(hold, scheduler, "ai/smol", 0.5, Mode.COMPLETION, got)
            await trio.testing.wait_all_tasks_blocked()
            assert scheduler.statistics().queued_requests == 20
            assert [r.loading for r in scheduler.ps()] == [True]
        assert len(got) == 20
        assert len(backend.started) == 1
        assert {lease.runner_id for _, lease in got} == {backend.started[0].runner_id}
        assert all(t == pytest.approx(3.0) for t, _ in got)


async def test_modes_are_separate_runners(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=0.5), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.preload("ai/smol", Mode.COMPLETION)
        await scheduler.preload("ai/smol", Mode.EMBEDDING)
        assert sorted(r.mode for r in scheduler.ps()) == [Mode.COMPLETION, Mode.EMBEDDING]
        assert len(backend.started) == 2


async def test_unknown_model_and_backend_fail_at_once(autojump_clock):
    backend, resolver = FakeBackend(), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        with pytest.raises(ModelNotFound):
            async with scheduler.acquire("ai/missing"):
                pass
        with pytest.raises(UnknownBackend):
            async with scheduler.acquire("ai/smol", backend="vllm"):
                pass
        assert backend.started == []


# -- memory ledger and admission ----------------------------------------------------------------------


async def test_model_that_can_never_fit_fails_at_once_naming_both_numbers(autojump_clock):
    backend, resolver = FakeBackend(), FakeResolver()
    spec = resolver.add("ai/huge", 1)
    backend.estimates[spec.id] = MemoryEstimate(ram=10 * GiB)
    async with running_scheduler(backend, resolver, memory_budget={"ram": 4 * GiB}) as scheduler:
        with pytest.raises(ModelTooLarge) as caught:
            async with scheduler.acquire("ai/huge"):
                pass
        message = str(caught.value)
        assert "ai/huge" in message and str(10 * GiB) in message and str(4 * GiB) in message
        assert caught.value.status_hint == 507
        assert backend.started == []


async def test_gpu_devices_have_their_own_budget(autojump_clock):
    backend, resolver = FakeBackend(), FakeResolver()
    small = resolver.add("ai/gpu-small", 1)
    big = resolver.add("ai/gpu-big", 2)
    backend.estimates[small.id] = MemoryEstimate(ram=1 * GiB, vram={"cuda:0": 6 * GiB})
    backend.estimates[big.id] = MemoryEstimate(ram=1 * GiB, vram={"cuda:1": 6 * GiB})
    budget = {"ram": 8 * GiB, "cuda:0": 8 * GiB}
    async with running_scheduler(backend, resolver, memory_budget=budget) as scheduler:
        await scheduler.preload("ai/gpu-small")
        assert scheduler.statistics().ledger.reserved["cuda:0"] == 6 * GiB
        with pytest.raises(ModelTooLarge, match="cuda:1"):
            await scheduler.preload("ai/gpu-big")


async def test_second_model_evicts_idle_first_after_min_residency(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0, stop_seconds=0.5), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    settings = {"min_residency": 10.0, "residency_idle_grace": 3.0}
    async with running_scheduler(backend, resolver, **settings) as scheduler:
        await scheduler.preload(a)  # ready at t=1
        start = trio.current_time()
        await scheduler.preload(b)
        # a is idle: protected for the idle grace (3 s after last use), then stopped (0.5 s), then
        # b loads (1 s). Never both at once.
        assert trio.current_time() - start == pytest.approx(3.0 + 0.5 + 1.0)
        assert [r.model_name for r in scheduler.ps()] == [b]
        assert backend.peak_engines == 1
        assert scheduler.statistics().unloads == {"evicted": 1}
        assert scheduler.statistics().ledger.peak_reserved["ram"] <= 4 * GiB


async def test_lru_idle_runner_is_evicted_first(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a, b, c = three_models(backend, resolver, size=2 * GiB)
    async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
        await scheduler.preload(a)
        await scheduler.preload(b)
        await trio.sleep(5)
        await scheduler.preload(a)  # a is now the most recently used
        await scheduler.preload(c)
        assert sorted(r.model_name for r in scheduler.ps()) == [a, c]


async def test_in_use_runner_is_never_evicted_and_waiting_request_is_woken_on_release(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0, stop_seconds=0.2), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    got = []
    async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, scheduler, a, 30.0, Mode.COMPLETION, got)
            await trio.sleep(2)
            nursery.start_soon(hold, scheduler, b, 0.0, Mode.COMPLETION, got)
            await trio.sleep(20)
            # b waits: a is busy (draining: it takes no new requests but finishes its own).
            assert len(got) == 1 and backend.live == {backend.started[0]}
            assert scheduler.statistics().queued_requests == 1
            assert [r.state for r in scheduler.ps()] == [RunnerState.DRAINING]
        # a's request ended at t=31; a stopped (0.2 s), b loaded (1 s).
        assert got[1][0] == pytest.approx(31.0 + 0.2 + 1.0)
        assert backend.peak_engines == 1


async def test_requests_for_loaded_model_are_not_stuck_behind_another_models_load(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    got = []
    settings = {"min_residency": 60.0, "residency_idle_grace": 60.0}
    async with running_scheduler(backend, resolver, **settings) as scheduler:
        await scheduler.preload(a)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, scheduler, b, 0.0, Mode.COMPLETION, got)  # must wait for memory
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(5):
                start = trio.current_time()
                async with scheduler.acquire(a):
                    assert trio.current_time() == start
                await trio.sleep(1)
            assert got == []  # b still queued: a is within its minimum residency
        assert got[0][1].model_name == b


async def test_small_model_backfills_without_taking_memory_the_head_waits_for(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0, stop_seconds=0.1), FakeResolver()
    big = resolver.add("ai/big", 1)
    mid = resolver.add("ai/mid", 2)
    tiny = resolver.add("ai/tiny", 3)
    backend.estimates[big.id] = MemoryEstimate(ram=4 * GiB)
    backend.estimates[mid.id] = MemoryEstimate(ram=2 * GiB)
    backend.estimates[tiny.id] = MemoryEstimate(ram=1 * GiB)
    got: list = []
    async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, scheduler, "ai/mid", 10.0, Mode.COMPLETION, got)  # 2 of 4 GiB
            await trio.sleep(2)
            nursery.start_soon(hold, scheduler, "ai/big", 0.0, Mode.COMPLETION, got)  # needs all 4: waits
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hold, scheduler, "ai/tiny", 0.0, Mode.COMPLETION, got)
            await trio.testing.wait_all_tasks_blocked()
            # tiny would fit in the 2 free GiB, but big (ahead of it) is waiting for them.
            assert [lease.model_name for _, lease in got] == ["ai/mid"]
        order = [lease.model_name for _, lease in got]
        assert order.index("ai/big") < order.index("ai/tiny")
        assert scheduler.statistics().ledger.peak_reserved["ram"] <= 4 * GiB


async def test_independent_small_model_starts_while_big_one_waits(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    for n, (name, size) in enumerate((("ai/a", 2), ("ai/big", 3), ("ai/b", 1)), start=1):
        backend.estimates[resolver.add(name, n).id] = MemoryEstimate(ram=size * GiB)
    budget = {"ram": 5 * GiB}
    got: list = []
    async with running_scheduler(backend, resolver, memory_budget=budget, min_residency=0.0) as scheduler:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, scheduler, "ai/a", 10.0, Mode.COMPLETION, got)  # 2 of 5
            await trio.sleep(2)
            nursery.start_soon(hold, scheduler, "ai/big", 10.0, Mode.COMPLETION, got)  # 3 free: starts
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(hold, scheduler, "ai/b", 0.0, Mode.COMPLETION, got)  # 0 free: waits
            await trio.sleep(3)
            assert sorted(lease.model_name for _, lease in got) == ["ai/a", "ai/big"]
        assert len(got) == 3


# -- bounded queue ----------------------------------------------------------------------------------


async def test_queue_bound_rejects_with_retry_after(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=5.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, max_queued=3) as scheduler:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(hold, scheduler, "ai/smol")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(QueueFull) as caught:
                async with scheduler.acquire("ai/smol"):
                    pass
            assert caught.value.status_hint == 503
            assert caught.value.retry_after >= 1 and int(caught.value.retry_after_header) >= 1
        metrics = scheduler.metrics()
        labels = {"reason": "queue_full"}
        assert metrics.get_sample_value("modelrunner_admission_rejections_total", labels) == 1


async def test_max_wait_times_out_with_retry_after(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    async with (
        running_scheduler(backend, resolver, max_wait=5.0, min_residency=0.0) as scheduler,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(hold, scheduler, a, 100.0)
        await trio.sleep(2)
        start = trio.current_time()
        with pytest.raises(QueueTimeout) as caught:
            async with scheduler.acquire(b):
                pass
        assert trio.current_time() - start == pytest.approx(5.0)
        assert caught.value.retry_after >= 1
        assert scheduler.statistics().queued_requests == 0
        # The drain it caused is undone: a takes requests again.
        assert [r.state for r in scheduler.ps()] == [RunnerState.READY]
        nursery.cancel_scope.cancel()


async def test_cancelled_waiter_leaves_queue_at_once_and_no_load_starts(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
        async with trio.open_nursery() as outer:
            outer.start_soon(hold, scheduler, a, 100.0)
            await trio.sleep(2)
            with trio.move_on_after(3):  # the client disconnects
                async with scheduler.acquire(b):
                    pytest.fail("must not get a lease")
            assert scheduler.statistics().queued_requests == 0
            assert scheduler.statistics().pending_loads == 0
            assert [r.state for r in scheduler.ps()] == [RunnerState.READY]
            outer.cancel_scope.cancel()
        assert [r.model_name for r in backend.started] == [a]


async def test_client_leaving_a_loading_runner_does_not_cancel_the_load(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=5.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        with trio.move_on_after(1):
            async with scheduler.acquire("ai/smol"):
                pass
        assert scheduler.statistics().queued_requests == 0
        await trio.sleep(5)
        assert [r.state for r in scheduler.ps()] == [RunnerState.READY]


# -- anti-thrash --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_residency", "max_loads"), [(0.0, None), (2.0, 6)])
async def test_min_residency_batches_competing_traffic(autojump_clock, min_residency, max_loads):
    backend, resolver = FakeBackend(load_seconds=0.5, stop_seconds=0.1), FakeResolver()
    a, b, _ = three_models(backend, resolver)

    # Two clients, each sending 30 back-to-back 0.1 s requests for its own model, with memory for
    # one model: without a minimum residency every request swaps.
    async def client(model: str) -> None:
        for _ in range(30):
            await hold(scheduler, model, seconds=0.1)

    async with (
        running_scheduler(backend, resolver, min_residency=min_residency) as scheduler,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(client, a)
        nursery.start_soon(client, b)
    assert backend.peak_engines == 1
    if max_loads is None:
        assert len(backend.started) >= 30  # thrash: about one load per request
    else:
        assert len(backend.started) <= max_loads


async def test_residency_is_bounded_so_a_busy_model_cannot_starve_another(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=0.5, stop_seconds=0.1), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    got: list = []

    async def busy_client() -> None:
        while True:
            await hold(scheduler, a, seconds=0.2)

    async with (
        running_scheduler(backend, resolver, min_residency=2.0) as scheduler,
        trio.open_nursery() as nursery,
    ):
        for _ in range(3):
            nursery.start_soon(busy_client)
        await trio.sleep(1)
        await hold(scheduler, b, into=got)
        nursery.cancel_scope.cancel()
    # b got in after a's residency (2 s from a's ready time at 0.5 s), the drain of in-flight
    # requests (<= 0.2 s), a's stop (0.1 s) and b's load (0.5 s).
    assert got[0][0] <= 0.5 + 2.0 + 0.2 + 0.1 + 0.5 + 1e-9


# -- keep-alive and idle unload ----------------------------------------------------------------------


async def test_default_keep_alive_unloads_idle_runner_and_frees_the_ledger(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, default_keep_alive=300.0) as scheduler:
        await scheduler.preload("ai/smol")
        assert scheduler.statistics().ledger.reserved["ram"] == 1 * GiB
        await trio.sleep(299)
        assert len(scheduler.ps()) == 1
        await trio.sleep(2)
        assert scheduler.ps() == []
        assert scheduler.statistics().ledger.reserved["ram"] == 0
        assert scheduler.statistics().unloads == {"idle": 1}


async def test_each_release_restarts_the_idle_countdown(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, default_keep_alive=300.0) as scheduler:
        await scheduler.preload("ai/smol")
        loaded = trio.current_time()
        await trio.sleep(200)
        for _ in range(3):
            await hold(scheduler, "ai/smol", 1.0)
        released = trio.current_time()
        await trio.sleep(loaded + 301 - trio.current_time())
        assert len(scheduler.ps()) == 1  # the first countdown was replaced, not kept
        await trio.sleep(released + 299 - trio.current_time())
        assert len(scheduler.ps()) == 1
        await trio.sleep(2)
        assert scheduler.ps() == []


async def test_a_shorter_keep_alive_on_a_request_wakes_the_idle_timer(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, default_keep_alive=300.0) as scheduler:
        await scheduler.preload("ai/smol")
        await trio.sleep(10)  # the timer now sleeps until the 300 s countdown ends
        async with scheduler.acquire("ai/smol", keep_alive=5.0):
            pass
        released = trio.current_time()
        await trio.sleep(4.9)
        assert len(scheduler.ps()) == 1
        await trio.sleep(0.2)
        assert scheduler.ps() == []
        assert trio.current_time() - released < 5.2


async def test_keep_alive_zero_unloads_right_after_use(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, default_keep_alive=0.0) as scheduler:
        async with scheduler.acquire("ai/smol"):
            await trio.sleep(10)
            assert len(scheduler.ps()) == 1  # in use: stays
        await trio.sleep(0.5)
        assert scheduler.ps() == [] and backend.live == set()


async def test_keep_alive_forever_never_unloads(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    settings = {"default_keep_alive": -1, "measure_interval": 3600}
    async with running_scheduler(backend, resolver, **settings) as scheduler:
        await scheduler.preload("ai/smol")
        await trio.sleep(7 * 24 * 3600)  # measure_interval keeps the clock jumps few
        [row] = scheduler.ps()
        assert row.keep_alive == -1 and row.keep_alive_text == "-1"


async def test_per_request_keep_alive_overrides(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, default_keep_alive=300.0) as scheduler:
        async with scheduler.acquire("ai/smol", keep_alive=1.0):
            pass
        assert scheduler.ps()[0].keep_alive_text == "1s"
        await trio.sleep(1.5)
        assert scheduler.ps() == []


# -- dead runners -----------------------------------------------------------------------------------------


async def test_engine_death_ends_leases_frees_memory_and_next_request_starts_fresh(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        async with scheduler.acquire("ai/smol") as lease:
            runner = backend.started[0]
            runner.crash(137, oom=True, message="Killed")
            with trio.fail_after(0.001):  # noticed without any clock time passing
                info = await lease.wait_died()
            assert info.oom_killed and info.code == 137
            assert lease.died
            error = lease.died_error()
            assert "OOM" in str(error) and error.status_hint == 502
            # Its memory is back at once, though the lease is still held.
            assert scheduler.statistics().ledger.reserved["ram"] == 0
            assert scheduler.ps() == []
            async with scheduler.acquire("ai/smol") as fresh:
                assert fresh.runner_id != lease.runner_id
        assert scheduler.statistics().unloads["oom"] == 1
        assert len(backend.started) == 2


async def test_mark_broken_stops_the_runner_and_next_request_gets_a_new_one(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        async with scheduler.acquire("ai/smol") as lease:
            lease.mark_broken("upstream closed the connection mid-stream")
            assert lease.died
            info = await lease.wait_died()
            assert "mid-stream" in info.message or info.code == 0
        async with scheduler.acquire("ai/smol") as fresh:
            assert fresh.runner_id != lease.runner_id
        assert backend.started[0].stop_calls  # stopped and cleaned up, not leaked
        assert scheduler.statistics().unloads["broken"] == 1


async def test_failed_load_reaches_every_waiter_and_next_request_retries(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    spec = resolver.add("ai/broken", 1)
    backend.fail_loads[spec.id] = 1
    errors: list[BaseException] = []

    async def request() -> None:
        try:
            await scheduler.preload("ai/broken")
        except EngineStartError as exc:
            errors.append(exc)

    async with running_scheduler(backend, resolver) as scheduler:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(request)
        assert len(errors) == 5 and len({id(e) for e in errors}) == 5
        assert all("failed to load model" in str(e) for e in errors)
        assert scheduler.statistics().ledger.reserved["ram"] == 0
        await scheduler.preload("ai/broken")  # the next one loads
        assert len(backend.started) == 2
        assert scheduler.statistics().load_failures == 1


# -- read models, unload, shutdown ---------------------------------------------------------------------


async def test_ps_df_status_and_metrics(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0, measured=lambda e: e.ram // 2), FakeResolver()
    resolver.add("ai/smol", 1)
    resolver.disk_bytes = 1234
    async with running_scheduler(backend, resolver, measure_interval=1.0) as scheduler:
        async with scheduler.acquire("ai/smol"):
            [row] = scheduler.ps()
            assert row.in_use and row.last_used is None and not row.loading
        await trio.sleep(2)
        [row] = scheduler.ps()
        assert row.backend_name == "fake" and row.model_name == "ai/smol" and row.mode is Mode.COMPLETION
        assert not row.in_use and row.last_used is not None
        assert row.keep_alive_text == "5m0s"
        assert row.memory_reserved == 1 * GiB and row.memory_measured == GiB // 2
        assert scheduler.df().models_disk_usage == 1234
        assert scheduler.status() == {"fake": "Running: fake 1.0"}
        registry = scheduler.metrics()
        assert registry.get_sample_value(
            "modelrunner_runner_loads_total", {"backend": "fake", "mode": "completion", "result": "ok"}
        ) == 1
        assert registry.get_sample_value("modelrunner_memory_reserved_bytes", {"device": "ram"}) == GiB
        assert registry.get_sample_value("modelrunner_queue_depth") == 0


async def test_unload_spares_in_use_runners(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a, b, c = three_models(backend, resolver, size=1 * GiB)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.preload(a)
        await scheduler.preload(b)
        async with scheduler.acquire(c):
            assert await scheduler.unload(models=[a]) == 1
            assert sorted(r.model_name for r in scheduler.ps()) == [b, c]
            assert await scheduler.unload(all=True) == 1
            assert [r.model_name for r in scheduler.ps()] == [c]
        assert await scheduler.unload(backend="fake") == 1
        assert scheduler.ps() == []
        assert await scheduler.unload() == 0


async def test_shutdown_fails_queued_requests_and_stops_runners(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a, b, _ = three_models(backend, resolver)
    errors: list[BaseException] = []

    async def queued() -> None:
        try:
            await hold(scheduler, b)
        except SchedulerClosed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
            nursery.start_soon(hold, scheduler, a, 1000.0)
            await trio.sleep(2)
            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(errors) == 1
    assert backend.live == set()
    with pytest.raises(SchedulerClosed):
        async with scheduler.acquire(a):
            pass


async def test_ledger_never_exceeds_budget_under_random_mixed_load(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=0.3, stop_seconds=0.05), FakeResolver()
    sizes = [1, 2, 3, 1, 2]
    for n, size in enumerate(sizes, start=1):
        backend.estimates[resolver.add(f"ai/m{n}", n).id] = MemoryEstimate(ram=size * GiB)
    import random

    rng = random.Random(7)
    plan = [[(f"ai/m{rng.randint(1, 5)}", rng.random() * 0.3) for _ in range(25)] for _ in range(8)]
    done = []

    async def client(requests) -> None:
        for model, seconds in requests:
            async with scheduler.acquire(model) as lease:
                runner = next(r for r in backend.started if r.runner_id == lease.runner_id)
                await trio.sleep(seconds)
                assert runner.alive and not lease.died  # never stopped under an in-flight request
            done.append(model)

    settings = {"memory_budget": {"ram": 4 * GiB}, "min_residency": 0.5}
    async with running_scheduler(backend, resolver, **settings) as scheduler:
        async with trio.open_nursery() as nursery:
            for requests in plan:
                nursery.start_soon(client, requests)
        stats = scheduler.statistics()
    assert len(done) == 200
    assert stats.ledger.peak_reserved["ram"] <= 4 * GiB
    assert backend.peak_ram <= 4 * GiB
    assert not math.isinf(trio.current_time())
