"""Pure parts of scheduler/: durations and sizes, the lifecycle table, admission plans, budgets,
``_configure`` parsing and the config file. Values in, values out; no event loop needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import modelrunner.scheduler as scheduler_pkg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelrunner.engines import Mode
from modelrunner.sandbox.gpus import GpuDevice, GpuInventory
from modelrunner.scheduler import (
    KEEP_ALIVE_FOREVER,
    TRANSITIONS,
    ConfigStore,
    ConfigureRequest,
    IllegalTransition,
    InvalidConfiguration,
    ModelConfig,
    Resident,
    RunnerEvent,
    RunnerKey,
    RunnerState,
    cgroup_memory_headroom,
    compute_budget,
    format_keep_alive,
    parse_keep_alive,
    parse_meminfo_available,
    parse_memory_budget,
    parse_size,
    plan_admission,
    transition,
)

GiB = 1 << 30


# -- keep-alive and sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("-1", KEEP_ALIVE_FOREVER),
        ("-5m", KEEP_ALIVE_FOREVER),
        ("30", 30.0),  # Ollama accepts bare seconds
        (" '10m' ", 600.0),  # DMR trims spaces and quotes
        (120, 120.0),
        (-3, KEEP_ALIVE_FOREVER),
    ],
)
def test_parse_keep_alive(text: str | int, seconds: float) -> None:
    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m3", "forever", "nan", "1e400", "--1"])
def test_parse_keep_alive_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidConfiguration, match="keep_alive"):
        parse_keep_alive(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300, "5m0s"), (0, "0s"), (1.5, "1.5s"), (3600, "1h0m0s"), (5400.5, "1h30m0.5s"), (0.25, "250ms"),
     (-1, "-1"), (KEEP_ALIVE_FOREVER, "-1")],
)
def test_format_keep_alive_like_go(seconds: float, text: str) -> None:
    assert format_keep_alive(seconds) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_keep_alive_round_trips(millis: int) -> None:
    seconds = millis / 1000
    assert parse_keep_alive(format_keep_alive(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1073741824", GiB), ("24GiB", 24 * GiB), ("24G", 24 * GiB), ("512MiB", 512 << 20), ("2GB", 2 * 10**9),
     ("1.5GiB", 3 * GiB // 2), ("64k", 64 << 10)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "12 parsecs", "1,5G"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidConfiguration):
        parse_size(text)


def test_parse_memory_budget() -> None:
    assert parse_memory_budget("24GiB") == {"ram": 24 * GiB}
    assert parse_memory_budget("ram=16GiB, cuda:0=20GiB") == {"ram": 16 * GiB, "cuda:0": 20 * GiB}
    with pytest.raises(InvalidConfiguration, match="twice"):
        parse_memory_budget("ram=1G,ram=2G")
    with pytest.raises(InvalidConfiguration):
        parse_memory_budget(" , ")
    with pytest.raises(InvalidConfiguration):
        parse_memory_budget("=1G")


# -- lifecycle ------------------------------------------------------------------------------------------


def test_lifecycle_happy_paths() -> None:
    state = RunnerState.STARTING
    for event, expected in [
        (RunnerEvent.LOADED, RunnerState.READY),
        (RunnerEvent.DRAIN, RunnerState.DRAINING),
        (RunnerEvent.UNDRAIN, RunnerState.READY),
        (RunnerEvent.STOP, RunnerState.STOPPING),
        (RunnerEvent.EXITED, RunnerState.STOPPING),
        (RunnerEvent.CLEANED_UP, RunnerState.STOPPED),
    ]:
        state = transition(state, event)
        assert state is expected
    assert transition(RunnerState.READY, RunnerEvent.EXITED) is RunnerState.FAILED
    assert transition(RunnerState.STARTING, RunnerEvent.LOAD_FAILED) is RunnerState.FAILED
    assert transition(RunnerState.FAILED, RunnerEvent.CLEANED_UP) is RunnerState.STOPPED


def test_stopped_is_terminal_and_illegal_events_raise() -> None:
    for event in RunnerEvent:
        with pytest.raises(IllegalTransition, match="stopped"):
            transition(RunnerState.STOPPED, event)
    with pytest.raises(IllegalTransition):
        transition(RunnerState.STARTING, RunnerEvent.DRAIN)
    # Only READY takes requests; nothing but LOADED or UNDRAIN leads there.
    assert {after for after in TRANSITIONS.values() if after is RunnerState.READY} == {RunnerState.READY}
    assert {event for (_, event), after in TRANSITIONS.items() if after is RunnerState.READY} == {
        RunnerEvent.LOADED, RunnerEvent.UNDRAIN
    }


# -- admission -------------------------------------------------------------------------------------------


def resident(key: str, ram: int, *, busy: bool = False, protected_until: float = 0.0, last_used: float = 0.0,
             pinned: bool = False, draining: bool = False) -> Resident:
    return Resident(key, {"ram": ram * GiB}, busy, protected_until, last_used, pinned, draining)


def test_fits_without_eviction() -> None:
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 3 * GiB}, [resident("a", 1)], now=10)
    assert plan.start and plan.evict == () and plan.remaining == {"ram": GiB}


def test_evicts_least_recently_used_idle_first_and_only_as_many_as_needed() -> None:
    residents = [
        resident("old", 2, last_used=1), resident("new", 2, last_used=5), resident("mid", 2, last_used=3)
    ]
    plan = plan_admission({"ram": 3 * GiB}, {"ram": 0}, residents, now=10)
    assert plan.start and plan.evict == ("old", "mid")
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0}, residents, now=10)
    assert plan.evict == ("old",)


def test_pinned_runners_go_after_other_idle_ones() -> None:
    residents = [resident("pinned", 2, last_used=0, pinned=True), resident("recent", 2, last_used=9)]
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0}, residents, now=10)
    assert plan.evict == ("recent",)


def test_busy_runner_is_drained_never_evicted() -> None:
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0}, [resident("busy", 4, busy=True)], now=10)
    assert not plan.start and plan.evict == () and plan.drain == ("busy",) and plan.claimed == ("busy",)


def test_protected_runner_makes_the_load_wait_until_its_protection_ends() -> None:
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0}, [resident("young", 4, protected_until=12)], now=10)
    assert not plan.start and plan.drain == () and plan.evict == () and plan.wake_at == 12
    busy_young = resident("busy", 4, busy=True, protected_until=15)
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0}, [busy_young], now=10)
    assert not plan.start and plan.drain == () and plan.wake_at == 15


def test_idle_runners_are_preferred_over_draining_busy_ones() -> None:
    residents = [resident("busy", 4, busy=True), resident("idle", 2, last_used=9)]
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0}, residents, now=10)
    assert plan.start and plan.evict == ("idle",)


def test_unnecessary_victims_are_dropped() -> None:
    # Greedy order takes the small idle one first, then needs the big busy one anyway, which alone
    # suffices: the idle one must survive.
    residents = [resident("idle-small", 1, last_used=1), resident("busy-big", 4, busy=True)]
    plan = plan_admission({"ram": 3 * GiB}, {"ram": 0}, residents, now=10)
    assert plan.drain == ("busy-big",) and plan.evict == () and plan.claimed == ("busy-big",)


def test_runners_on_other_devices_are_not_displaced() -> None:
    gpu_user = Resident("gpu", {"cuda:0": 8 * GiB}, False, 0.0, 0.0)
    plan = plan_admission({"ram": 2 * GiB}, {"ram": 0, "cuda:0": 0}, [gpu_user], now=10)
    assert not plan.start and not plan.coverable and plan.evict == ()


def test_uncoverable_load_still_claims_what_is_free() -> None:
    plan = plan_admission({"ram": 3 * GiB}, {"ram": 2 * GiB}, [], now=0)
    assert not plan.start and not plan.coverable and plan.remaining == {"ram": -GiB}


@given(
    st.lists(st.tuples(st.integers(1, 4), st.booleans(), st.integers(0, 20)), max_size=6),
    st.integers(1, 8),
    st.integers(-4, 4),
)
def test_admission_plans_are_consistent(spec, need, free) -> None:
    residents = [
        Resident(f"r{i}", {"ram": ram}, busy, float(protected), float(i)) for i, (ram, busy, protected) in
        enumerate(spec)
    ]
    plan = plan_admission({"ram": need}, {"ram": free}, residents, now=10.0)
    by_key = {r.key: r for r in residents}
    freed = sum(by_key[k].holds["ram"] for k in plan.claimed)
    if plan.start:
        assert free + freed >= need  # never starts what does not fit
        assert all(not by_key[k].busy for k in plan.evict)  # never evicts a busy runner
        assert set(plan.evict) == set(plan.claimed)
    assert set(plan.evict) | set(plan.drain) <= set(plan.claimed)
    assert all(by_key[k].busy for k in plan.drain)
    assert plan.remaining["ram"] == free + freed - need


# -- budget ----------------------------------------------------------------------------------------------


def test_parse_meminfo() -> None:
    text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n"
    assert parse_meminfo_available(text) == 20000000 * 1024
    with pytest.raises(ValueError, match="MemAvailable"):
        parse_meminfo_available("MemTotal: 1 kB\n")


def test_cgroup_v1_headroom_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    memory = tmp_path / "memory"
    leaf = memory / "outer" / "inner"
    leaf.mkdir(parents=True)
    (memory / "memory.limit_in_bytes").write_text(str(9223372036854771712))  # unlimited
    (memory / "outer" / "memory.limit_in_bytes").write_text(str(8 * GiB))
    (memory / "outer" / "memory.usage_in_bytes").write_text(str(3 * GiB))
    (leaf / "memory.limit_in_bytes").write_text(str(16 * GiB))
    (leaf / "memory.usage_in_bytes").write_text(str(1 * GiB))
    own = "4:memory:/outer/inner\n1:cpu:/\n"
    assert cgroup_memory_headroom(own, tmp_path) == 5 * GiB


def test_cgroup_v2_headroom_and_unlimited(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "memory.max").write_text("max\n")
    assert cgroup_memory_headroom("0::/svc\n", tmp_path) is None
    (tmp_path / "svc" / "memory.max").write_text(str(4 * GiB))
    (tmp_path / "svc" / "memory.current").write_text(str(GiB))
    assert cgroup_memory_headroom("0::/svc\n", tmp_path) == 3 * GiB


def test_compute_budget() -> None:
    gpu = GpuDevice(index=0, uuid="GPU-1", name="H100", total_bytes=80 * GiB, free_bytes=70 * GiB)
    gpus = GpuInventory(devices=(gpu,), source="nvml")
    budget = compute_budget(configured=None, host_available=20 * GiB, gpus=gpus, margin=GiB,
                            adopted_usage={"ram": 2 * GiB, "cuda:0": 5 * GiB})
    assert budget == {"ram": 21 * GiB, "cuda:0": 74 * GiB}
    budget = compute_budget(configured={"ram": 8 * GiB}, host_available=None, gpus=None, margin=GiB)
    assert budget == {"ram": 8 * GiB}
    assert compute_budget(configured=None, host_available=GiB // 2, gpus=None, margin=GiB) == {"ram": 0}


def test_host_available_memory_reads_this_machine() -> None:
    available = scheduler_pkg.host_available_memory()
    assert 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# -- _configure ---------------------------------------------------------------------------------------


def test_configure_request_dmr_shapes() -> None:
    request = ConfigureRequest.from_json(
        {"model": "ai/qwen3", "context-size": 8192, "runtime-flags": ["--threads", "8"],
         "raw-runtime-flags": "--ignored", "keep_alive": "10m", "llamacpp": {"reasoning-budget": -1}},
        backend="llama.cpp",
    )
    assert request.backend == "llama.cpp" and request.context_size == 8192
    assert request.effective_runtime_flags() == ("--threads", "8")  # the array wins
    assert request.keep_alive == 600 and request.effective_mode() is Mode.COMPLETION
    assert request.extra == {"llamacpp": {"reasoning-budget": -1}}
    raw = ConfigureRequest.from_json({"model": "m", "raw-runtime-flags": "--embeddings --pooling 'mean'"})
    assert raw.effective_runtime_flags() == ("--embeddings", "--pooling", "mean")
    assert raw.effective_mode() is Mode.EMBEDDING
    assert ConfigureRequest.from_json({"model": "m", "context-size": 0}).context_size is None
    assert ConfigureRequest.from_json({"model": "m", "context-size": -1}).context_size == -1
    assert ConfigureRequest.from_json({"model": "m", "mode": "reranking"}).mode is Mode.RERANKING


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"model": ""},
        {"model": 3},
        {"model": "m", "mode": "image-generation"},
        {"model": "m", "context-size": "big"},
        {"model": "m", "context-size": True},
        {"model": "m", "context-size": 2**40},
        {"model": "m", "runtime-flags": "--threads 8"},
        {"model": "m", "raw-runtime-flags": "--x 'unterminated"},
        {"model": "m", "keep_alive": "soon"},
        {"model": "m", "keep_alive": True},
        {"model": "m", "vllm": "fast"},
    ],
)
def test_configure_request_rejects_bad_bodies(body: object) -> None:
    with pytest.raises(InvalidConfiguration):
        ConfigureRequest.from_json(body)


def config(n: int = 1, **changes: object) -> ModelConfig:
    values: dict[str, object] = {
        "backend": "llama.cpp", "model_id": f"sha256:{n:064x}", "model": f"ai/m{n}", "mode": Mode.COMPLETION,
        "context_size": 4096, "runtime_flags": ("--threads", "2"), "keep_alive": 600.0,
    }
    values.update(changes)
    return ModelConfig(**values)  # type: ignore[arg-type]


def test_config_store_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runner-configs.json"
    store = ConfigStore.load(path)
    store.put(config(1))
    store.put(config(2, mode=Mode.EMBEDDING, keep_alive=KEEP_ALIVE_FOREVER, extra={"vllm": {"x": 1}}))
    store.write_snapshot(store.snapshot())
    again = ConfigStore.load(path)
    assert again.all() == store.all()
    stored = again.get(RunnerKey("llama.cpp", f"sha256:{2:064x}", Mode.EMBEDDING))
    assert stored is not None and stored.keep_alive == KEEP_ALIVE_FOREVER
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


@pytest.mark.parametrize(
    "content",
    ['{"version": 1, "configs": [{"backend": "x"}]}', "not json", '{"version": 99, "configs": []}', "\xff"],
)
def test_unreadable_config_file_is_moved_aside_not_fatal(tmp_path: Path, content: str) -> None:
    path = tmp_path / "runner-configs.json"
    path.write_bytes(content.encode("latin-1"))
    store = ConfigStore.load(path)
    assert store.all() == []
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("runner-configs.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == content.encode("latin-1")


def test_same_runner_settings_ignores_keep_alive_and_display_name() -> None:
    assert config(keep_alive=1.0, model="other").same_runner_settings(config())
    assert not config(context_size=8192).same_runner_settings(config())
    assert not config(runtime_flags=()).same_runner_settings(config())


def test_package_exports_match_all() -> None:
    exported = {name for name in dir(scheduler_pkg) if not name.startswith("_")}
    assert set(scheduler_pkg.__all__) <= exported
    assert sorted(scheduler_pkg.__all__) == sorted(set(scheduler_pkg.__all__))
    for name in scheduler_pkg.__all__:
        value = getattr(scheduler_pkg, name)
        assert name.isupper() or value.__module__.startswith("modelrunner.scheduler"), name
