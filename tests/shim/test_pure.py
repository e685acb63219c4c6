"""Labels, the lifecycle state machine, event decoding and reconciliation, error mapping (pure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from modelrunner.shim._pb import to_datetime, validate_identifier
from modelrunner.shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    IllegalTransition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from modelrunner.shim.events import (
    EventsResynced,
    TaskDelete,
    TaskExit,
    TaskOOM,
    TaskSnapshot,
    TaskStart,
    decode_event,
    reconcile,
)
from modelrunner.shim.labels import ROLE_LABEL, RunnerLabels
from modelrunner.shim.lifecycle import TRANSITIONS, TaskLifecycle, TaskPhase
from modelrunner.shim.proto import containerd_event_types_pb2 as event_types


def test_runner_labels_round_trip() -> None:
    labels = RunnerLabels(
        engine="llama.cpp",
        model_id="sha256:" + "a" * 64,
        mode="embedding",
        socket_path="/run/modelrunner/r1/engine.sock",
        memory_reservation=3 << 30,
        name="tiny-chat",
        config_digest="sha256:" + "b" * 64,
        extra={"team": "ml"},
    )
    stored = labels.to_labels("r1", "r1")
    assert stored[ROLE_LABEL] == "runner"
    assert stored["nerdctl/name"] == "tiny-chat"
    assert stored["io.modelrunner.memory-reservation"] == str(3 << 30)
    assert RunnerLabels.from_labels(stored) == labels
    assert RunnerLabels(engine="x").to_labels("cid", "cid")["nerdctl/name"] == "cid"


def test_runner_labels_rules() -> None:
    with pytest.raises(InvalidArgument, match="reserved prefix"):
        RunnerLabels(engine="x", extra={"containerd.io/gc.root": "1"})
    with pytest.raises(InvalidArgument, match="reserved prefix"):
        RunnerLabels(engine="x", extra={"io.modelrunner.role": "runner"})
    with pytest.raises(InvalidArgument, match="4096"):
        RunnerLabels(engine="x", socket_path="/" + "s" * 5000).to_labels("c", "c")
    with pytest.raises(InvalidArgument, match="engine"):
        RunnerLabels(engine="")
    with pytest.raises(InvalidArgument, match="byte count"):
        RunnerLabels.from_labels({ROLE_LABEL: "runner", "io.modelrunner.memory-reservation": "lots"})
    with pytest.raises(InvalidArgument, match="not 'runner'"):
        RunnerLabels.from_labels({"io.modelrunner.engine": "x"})


def test_lifecycle_happy_path_and_release() -> None:
    machine = TaskLifecycle("c")
    for phase in (
        TaskPhase.LEASED,
        TaskPhase.SNAPSHOT_READY,
        TaskPhase.CONTAINER_CREATED,
        TaskPhase.TASK_CREATED,
        TaskPhase.RUNNING,
        TaskPhase.STOPPING,
        TaskPhase.EXITED,
        TaskPhase.RELEASING,
        TaskPhase.RELEASED,
    ):
        machine.advance(phase)
    assert machine.phase is TaskPhase.RELEASED
    assert machine.history[0] is TaskPhase.NEW and len(machine.history) == 10


def test_every_start_phase_can_unwind() -> None:
    for phase in (
        TaskPhase.NEW,
        TaskPhase.LEASED,
        TaskPhase.SNAPSHOT_READY,
        TaskPhase.CONTAINER_CREATED,
        TaskPhase.TASK_CREATED,
    ):
        assert TaskPhase.RELEASING in TRANSITIONS[phase]
    assert TRANSITIONS[TaskPhase.RELEASED] == frozenset()
    # A running task must be stopped (its exit seen) before anything is deleted.
    assert TaskPhase.RELEASING not in TRANSITIONS[TaskPhase.RUNNING]


def test_illegal_transition_raises_and_fails_the_machine() -> None:
    machine = TaskLifecycle("c")
    with pytest.raises(IllegalTransition, match="cannot go from new to running"):
        machine.advance(TaskPhase.RUNNING)
    assert machine.phase is TaskPhase.FAILED
    machine.advance(TaskPhase.RELEASING)  # a failed machine may retry its release


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500_000_000)


def test_events_decode_from_envelope_payloads() -> None:
    exit_bytes = event_types.TaskExit(
        container_id="c", id="c", pid=42, exit_status=137, exited_at=_ts(1_700_000_000)
    ).SerializeToString()
    event = decode_event("containerd.events.TaskExit", exit_bytes)
    assert event == TaskExit("c", "c", 42, 137, dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=dt.UTC))
    assert isinstance(event, TaskExit) and event.is_init
    exec_exit = decode_event(
        "containerd.events.TaskExit", event_types.TaskExit(container_id="c", id="exec1").SerializeToString()
    )
    assert isinstance(exec_exit, TaskExit) and not exec_exit.is_init
    oom = event_types.TaskOOM(container_id="c").SerializeToString()
    assert decode_event("type.googleapis.com/containerd.events.TaskOOM", oom) == TaskOOM("c")
    assert decode_event("containerd.events.TaskPaused", b"") is None
    assert decode_event("containerd.events.TaskExit", b"\xff\xff\xff") is None


def test_go_zero_time_is_no_time() -> None:
    assert to_datetime(timestamp_pb2.Timestamp(seconds=-62135596800)) is None
    assert to_datetime(timestamp_pb2.Timestamp()) is None
    assert to_datetime(None) is None


def test_reconcile_explains_a_gap() -> None:
    exited_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    tasks = {
        "still": TaskSnapshot(10, True),
        "stopped": TaskSnapshot(11, False, 3, exited_at),
        "new": TaskSnapshot(12, True),
    }
    events, running = reconcile(frozenset({"still", "stopped", "gone"}), tasks)
    assert events == [
        TaskDelete("gone", 0, None, None, synthetic=True),
        TaskExit("stopped", "stopped", 11, 3, exited_at, synthetic=True),
        TaskStart("new", 12),
        EventsResynced(frozenset({"still", "new"})),
    ]
    assert running == {"still", "new"}
    assert reconcile(running, tasks)[0] == [EventsResynced(running)]


class _FakeRpcError:
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.UNKNOWN, Internal),
        (grpc.StatusCode.INTERNAL, Internal),
    ],
)
def test_grpc_codes_map_to_typed_errors(code: grpc.StatusCode, cls: type[Exception]) -> None:
    error = from_rpc_error("creating task x", _FakeRpcError(code, "runc said no"))
    assert type(error) is cls
    assert str(error).startswith("creating task x: ")
    assert "runc said no" in str(error)


def test_identifiers() -> None:
    assert validate_identifier("id", "llama-cpp.r1_2") == "llama-cpp.r1_2"
    for bad in ("", "a/b", "-a", "a--b", "a" * 77, "ü"):
        with pytest.raises(InvalidArgument):
            validate_identifier("id", bad)


def test_package_exports_are_complete_and_sorted() -> None:
    import modelrunner.shim as shim
    from modelrunner.shim import client, embedded, errors, events, images, labels, lifecycle, tasks

    assert all(hasattr(shim, name) for name in shim.__all__)
    # Used inside shim/ or by its tests only: reachable through their modules.
    internal = {
        "from_rpc_error",
        "render_config",
        "CONTAINER_LABEL",
        "LEASE_LABEL",
        "ROLE_LABEL",
        "ROLE_RUNNER",
        "RUNNER_FILTER",
        "TRANSITIONS",
    }
    for module in (client, errors, lifecycle, tasks, labels, embedded):
        for name in set(module.__all__) - internal:
            assert name in shim.__all__, f"{module.__name__}.{name} is not re-exported"
    assert shim.__all__ == sorted(shim.__all__, key=lambda n: (not n.isupper(), n))
    for name in ("TaskOOM", "EventsLost", "TaskExit"):
        assert getattr(shim, name) is getattr(events, name)
    assert shim.get_image is images.get and shim.pull_image is images.pull


def test_oom_kill_count_reads_v1_and_v2_counters(tmp_path: Path) -> None:
    from modelrunner.shim.cgroups import default_cgroups_path, oom_kill_count

    path = default_cgroups_path("ns", "c1")
    assert path == "/ns/c1"
    v1 = tmp_path / "v1"
    (v1 / "memory" / "ns" / "c1").mkdir(parents=True)
    (v1 / "memory" / "ns" / "c1" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    assert oom_kill_count(path, v1) == 2
    v2 = tmp_path / "v2"
    (v2 / "ns" / "c1").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    (v2 / "ns" / "c1" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    assert oom_kill_count(path, v2) == 0
    assert oom_kill_count("/ns/absent", v1) is None
    assert oom_kill_count("system.slice:cri:c1", v1) is None
    assert oom_kill_count("/../etc", v1) is None


def test_find_shims_matches_address_and_namespace(tmp_path: Path) -> None:
    from modelrunner.shim._shims import find_shims

    def process(pid: int, *argv: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    shim = "/usr/bin/containerd-shim-runc-v2"
    process(10, shim, "-namespace", "ns", "-id", "a", "-address", "/run/c.sock")
    process(11, shim, "-namespace", "ns", "-id", "b", "-address", "/run/c.sock", "start")
    process(12, shim, "-namespace", "other", "-id", "c", "-address", "/run/c.sock")
    process(13, shim, "-namespace", "ns", "-id", "d", "-address", "/run/elsewhere.sock")
    process(14, "/bin/sleep", "-namespace", "ns", "-id", "e", "-address", "/run/c.sock")
    (tmp_path / "self").mkdir()
    assert [(s.pid, s.container_id) for s in find_shims("/run/c.sock", "ns", tmp_path)] == [(10, "a")]
    assert [s.pid for s in find_shims("/run/c.sock", "ns", tmp_path, starting=True)] == [11]
