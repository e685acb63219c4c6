"""``_configure`` (kept per runner key, persisted), re-adoption after a restart, and the correction of
reservations to measured use; over fake backends on trio's MockClock."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from modelrunner.engines import InvalidRuntimeFlags, MemoryEstimate, Mode
from modelrunner.scheduler import ConfigureRequest, RunnerInUse, RunnerKey, RunnerState

from tests.scheduler.fakes import (
    FakeBackend,
    FakeResolver,
    FakeRunner,
    GiB,
    LimitableFakeRunner,
    MiB,
    running_scheduler,
)


def configure(model: str, **fields: object) -> ConfigureRequest:
    return ConfigureRequest.from_json({"model": model, **fields})


async def test_configure_reaches_the_runner_and_persists_across_restarts(autojump_clock, tmp_path: Path):
    path = tmp_path / "runner-configs.json"
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    spec = resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, config_path=path) as scheduler:
        stored = await scheduler.configure(
            configure("ai/smol", **{"context-size": 8192, "runtime-flags": ["--threads", "2"],
                                    "keep_alive": "10m"})
        )
        assert stored.key == RunnerKey("fake", spec.id, Mode.COMPLETION)
        await scheduler.preload("ai/smol")
        assert backend.configs[-1].context_size == 8192
        assert backend.configs[-1].runtime_flags == ("--threads", "2")
        assert scheduler.ps()[0].keep_alive_text == "10m0s"
        # The estimate saw the context size (the fake charges 1 KiB per token of context).
        assert scheduler.ps()[0].memory_reserved == GiB + 8192 * 1024
    assert path.exists()
    async with running_scheduler(backend, resolver, config_path=path) as scheduler:
        [again] = scheduler.configs("ai/smol")
        assert again.context_size == 8192 and again.keep_alive == 600
        await scheduler.preload("ai/smol")
        assert backend.configs[-1].context_size == 8192


async def test_changed_settings_restart_an_idle_runner_but_keep_alive_alone_does_not(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.preload("ai/smol")
        await scheduler.configure(configure("ai/smol", keep_alive="-1"))
        assert len(backend.started) == 1 and backend.started[0].alive
        assert scheduler.ps()[0].keep_alive == -1
        await scheduler.configure(configure("ai/smol", **{"context-size": 2048}))
        assert not backend.started[0].alive  # unloaded, so the next request gets the new settings
        assert scheduler.ps() == []
        await scheduler.preload("ai/smol")
        assert backend.configs[-1].context_size == 2048
        # The same request again is a no-op.
        await scheduler.configure(configure("ai/smol", **{"context-size": 2048}))
        assert len(backend.started) == 2 and backend.started[1].alive


async def test_configure_refuses_busy_runner_and_bad_flags(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        async with scheduler.acquire("ai/smol"):
            with pytest.raises(RunnerInUse) as caught:
                await scheduler.configure(configure("ai/smol", **{"context-size": 1024}))
            assert caught.value.status_hint == 409
            await scheduler.configure(configure("ai/smol", keep_alive="1m"))  # needs no restart: fine
        with pytest.raises(InvalidRuntimeFlags):
            await scheduler.configure(configure("ai/smol", **{"runtime-flags": ["--forbidden"]}))
        assert scheduler.configs("ai/smol")[0].keep_alive == 60


async def test_embedding_flag_selects_embedding_mode_and_reranking_falls_back_to_completion(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        stored = await scheduler.configure(configure("ai/smol", **{"raw-runtime-flags": "--embeddings"}))
        assert stored.mode is Mode.EMBEDDING
        await scheduler.configure(configure("ai/smol", **{"context-size": 4096}))
        await scheduler.preload("ai/smol", Mode.RERANKING)
        assert backend.configs[-1].context_size == 4096


async def test_configure_with_preload_loads_in_the_background(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.configure(configure("ai/smol", **{"context-size": 512}), preload=True)
        assert scheduler.ps() == [] or scheduler.ps()[0].loading
        await trio.sleep(2)
        [row] = scheduler.ps()
        assert row.state is RunnerState.READY


async def test_unload_all_clears_configs(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.configure(configure("ai/smol", **{"context-size": 512}))
        await scheduler.unload(backend="fake", models=["ai/smol"])
        assert scheduler.configs() == []
        await scheduler.configure(configure("ai/smol", **{"context-size": 512}))
        await scheduler.unload(models=["ai/smol"])  # DMR: without a backend, configs stay
        assert len(scheduler.configs()) == 1
        await scheduler.unload(all=True)
        assert scheduler.configs() == []


async def test_adopted_runners_join_the_ledger_with_their_reservations(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    a = resolver.add("ai/a", 1)
    b = resolver.add("ai/b", 2)
    adopted = backend.make_adoptable(a, reservation=MemoryEstimate(ram=3 * GiB))
    duplicate = backend.make_adoptable(a, reservation=MemoryEstimate(ram=1 * GiB))
    backend.estimates[b.id] = MemoryEstimate(ram=2 * GiB)
    async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
        assert not duplicate.alive and adopted.alive  # one runner per key; the extra one is stopped
        [row] = scheduler.ps()
        assert row.model_name == "ai/a" and row.memory_reserved == 3 * GiB
        assert scheduler.statistics().ledger.reserved == {"ram": 3 * GiB}
        async with scheduler.acquire("ai/a") as lease:
            assert lease.runner_id == adopted.runner_id  # served by the adopted engine, no load
        await scheduler.preload("ai/b")  # 3 + 2 > 4: the adopted runner is evicted like any other
        assert not adopted.alive
        assert backend.peak_ram <= 4 * GiB + 1 * GiB  # the duplicate briefly existed before adoption


async def test_adopted_runners_are_added_back_to_a_detected_budget(autojump_clock):
    backend, resolver = FakeBackend(), FakeResolver()
    a = resolver.add("ai/a", 1)
    backend.make_adoptable(a, reservation=MemoryEstimate(ram=3 * GiB))
    from modelrunner.engines.registry import BackendRegistry
    from modelrunner.scheduler import SchedulerSettings, open_scheduler

    from tests.scheduler.fakes import NO_GPUS

    settings = SchedulerSettings(margin=GiB)
    async with open_scheduler(
        BackendRegistry([backend], default="fake"), resolver, settings, gpus=NO_GPUS,
        host_memory=lambda: 10 * GiB,
    ) as scheduler:
        # MemAvailable (10) + what the adopted engine already holds (3) - margin (1).
        assert scheduler.statistics().ledger.budget == {"ram": 12 * GiB}


async def test_reservation_is_lowered_to_measured_use_when_the_limit_can_follow(autojump_clock):
    backend = FakeBackend(load_seconds=1.0, runner_class=LimitableFakeRunner, measured=lambda e: 200 * MiB)
    resolver = FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.preload("ai/smol")
        await trio.sleep(0.1)
        runner = backend.started[0]
        assert isinstance(runner, LimitableFakeRunner)
        expected = 200 * MiB + 256 * MiB  # measured + the minimum headroom
        assert runner.limits == [expected]
        assert scheduler.statistics().ledger.reserved["ram"] == expected
        assert scheduler.ps()[0].memory_measured == 200 * MiB


async def test_reservation_is_not_lowered_when_the_limit_cannot_follow(autojump_clock):
    backend = FakeBackend(load_seconds=1.0, runner_class=FakeRunner, measured=lambda e: 200 * MiB)
    resolver = FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.preload("ai/smol")
        await trio.sleep(0.1)
        assert scheduler.statistics().ledger.reserved["ram"] == GiB


async def test_reservation_grows_when_the_engine_uses_more_than_estimated(autojump_clock):
    backend = FakeBackend(load_seconds=1.0, measured=lambda e: e.ram + 300 * MiB)
    resolver = FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver) as scheduler:
        await scheduler.preload("ai/smol")
        await trio.sleep(0.1)
        assert scheduler.statistics().ledger.reserved["ram"] == GiB + 300 * MiB


async def test_engine_report_corrects_vram(autojump_clock):
    class ReportingRunner(FakeRunner):
        @property
        def engine_report(self) -> MemoryEstimate:
            return MemoryEstimate(ram=100 * MiB, vram={"cuda:0": 3 * GiB})

    backend = FakeBackend(load_seconds=1.0, runner_class=ReportingRunner)
    resolver = FakeResolver()
    spec = resolver.add("ai/gpu", 1)
    backend.estimates[spec.id] = MemoryEstimate(ram=GiB, vram={"cuda:0": 5 * GiB})
    budget = {"ram": 4 * GiB, "cuda:0": 8 * GiB}
    async with running_scheduler(backend, resolver, memory_budget=budget) as scheduler:
        await scheduler.preload("ai/gpu")
        await trio.sleep(0.1)
        assert scheduler.statistics().ledger.reserved == {"ram": GiB, "cuda:0": 3 * GiB}


async def test_runners_left_running_on_exit_are_adopted_by_the_next_scheduler(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    resolver.add("ai/smol", 1)
    async with running_scheduler(backend, resolver, stop_runners_on_exit=False) as scheduler:
        await scheduler.preload("ai/smol")
    [runner] = backend.started
    assert runner.alive and runner.stop_calls == []
    backend.adoptable.append(runner)  # what the backend finds by its containerd labels
    async with running_scheduler(backend, resolver) as scheduler:
        async with scheduler.acquire("ai/smol") as lease:
            assert lease.runner_id == runner.runner_id
        assert scheduler.statistics().loads_started == 0
    assert not runner.alive


async def test_configure_applies_to_requests_already_queued(autojump_clock):
    backend, resolver = FakeBackend(load_seconds=1.0), FakeResolver()
    for n in (1, 2):
        backend.estimates[resolver.add(f"ai/m{n}", n).id] = MemoryEstimate(ram=3 * GiB)
    async with running_scheduler(backend, resolver, min_residency=0.0) as scheduler:
        async with trio.open_nursery() as nursery, scheduler.acquire("ai/m1"):
            nursery.start_soon(scheduler.preload, "ai/m2")  # queued: m1 is in use
            await trio.testing.wait_all_tasks_blocked()
            await scheduler.configure(configure("ai/m2", **{"context-size": 2048}))
        assert backend.configs[-1].context_size == 2048
        assert [row.memory_reserved for row in scheduler.ps()] == [3 * GiB + 2048 * 1024]
