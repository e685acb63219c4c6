"""Task lifecycle against the session's real containerd (runc, overlayfs, cgroup v1)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio
from modelrunner.shim import images, leases, tasks
from modelrunner.shim.client import Containerd, open_containerd
from modelrunner.shim.errors import AlreadyExists, Internal, InvalidArgument
from modelrunner.shim.events import TaskOOM
from modelrunner.shim.labels import RunnerLabels
from modelrunner.shim.lifecycle import TaskPhase
from modelrunner.shim.proto import containerd_containers_pb2 as containers_pb

from tests.fixtures.containerd import ContainerdInstance
from tests.shim.helpers import count_resources, minimal_spec, wait_for_text

pytestmark = pytest.mark.integration

LABELS = RunnerLabels(
    engine="busybox",
    model_id="sha256:" + "ab" * 32,
    mode="completion",
    socket_path="/run/x/engine.sock",
    memory_reservation=123456789,
    name="bb-test",
)


def request(
    image: images.Image, tmp_path: Path, args: list[str], cid: str = "task-1", **spec_kwargs: object
) -> tasks.TaskRequest:
    return tasks.TaskRequest(
        cid,
        image,
        minimal_spec(args, **spec_kwargs),
        LABELS,  # type: ignore[arg-type]
        tmp_path / "logs" / f"{cid}.log",
    )


async def test_task_output_exit_code_and_clean_release(
    client: Containerd, busybox: images.Image, tmp_path: Path, containerd: ContainerdInstance
) -> None:
    before = await count_resources(client)
    ctr_before = containerd.counts(client.namespace)
    task = await tasks.start_task(
        client, request(busybox, tmp_path, ["sh", "-c", "echo to-stdout; echo to-stderr >&2; id -u; exit 7"])
    )
    assert task.pid > 0
    assert task.phase is TaskPhase.RUNNING
    status = await task.wait()
    assert status.code == 7
    assert not status.oom_killed
    assert status.exited_at is not None
    assert await task.stop() == status
    assert task.phase is TaskPhase.RELEASED
    # Complete once the task is deleted: the shim finishes copying output before deleting.
    log = (tmp_path / "logs" / "task-1.log").read_text()
    assert "to-stdout" in log and "to-stderr" in log and "0\n" in log
    assert await count_resources(client) == before
    assert containerd.counts(client.namespace) == ctr_before


async def test_stdout_and_stderr_both_arrive_whole(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    # Regression: with one writer shared by both streams, the shim's stdout copier closed the log
    # at EOF while the stderr copier still had a burst to write, and that burst was lost.
    burst = 64 * 1024 * 64
    script = f"echo first; dd if=/dev/zero bs=65536 count={burst // 65536} 1>&2 2>/dev/null; echo last"
    for n in range(5):
        task = await tasks.start_task(
            client, request(busybox, tmp_path, ["sh", "-c", script], f"streams-{n}")
        )
        await task.wait()
        await task.stop()
        data = (tmp_path / "logs" / f"streams-{n}.log").read_bytes()
        assert data.count(b"\0") == burst
        assert b"first\n" in data and b"last\n" in data


@pytest.mark.parametrize("code", [0, 1, 42, 255])
async def test_exit_codes(client: Containerd, busybox: images.Image, tmp_path: Path, code: int) -> None:
    task = await tasks.start_task(
        client, request(busybox, tmp_path, ["sh", "-c", f"exit {code}"], f"exit-{code}")
    )
    try:
        assert (await task.wait()).code == code
    finally:
        await task.stop()


async def test_rootfs_is_read_only_and_namespaced(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    script = "touch /x 2>/dev/null && echo writable || echo read-only; echo pid=$$; cat /layers/0"
    task = await tasks.start_task(client, request(busybox, tmp_path, ["sh", "-c", script]))
    await task.wait()
    await task.stop()
    log = (tmp_path / "logs" / "task-1.log").read_text()
    assert "read-only" in log and "writable" not in log
    assert "pid=1" in log  # its own pid namespace
    assert "layer 0" in log  # the second image layer is visible through the overlay view


async def test_stop_sends_sigterm_and_waits_for_a_graceful_exit(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    script = 'trap "echo got-term; exit 0" TERM; echo ready; while true; do sleep 0.05; done'
    task = await tasks.start_task(client, request(busybox, tmp_path, ["sh", "-c", script]))
    await wait_for_text(tmp_path / "logs" / "task-1.log", "ready")
    started = trio.current_time()
    status = await task.stop(grace=10)
    assert status.code == 0
    assert trio.current_time() - started < 5
    assert "got-term" in (tmp_path / "logs" / "task-1.log").read_text()


async def test_stop_escalates_to_sigkill_after_the_grace_period(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    # PID 1 without a TERM handler ignores SIGTERM.
    task = await tasks.start_task(client, request(busybox, tmp_path, ["sleep", "1000"]))
    started = trio.current_time()
    status = await task.stop(grace=0.5)
    elapsed = trio.current_time() - started
    assert status.code == 128 + signal.SIGKILL
    assert status.signal == signal.SIGKILL
    assert not status.oom_killed
    assert 0.5 <= elapsed < 5
    assert task.phase is TaskPhase.RELEASED


async def test_kill_signal_reaches_a_handler(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    script = 'trap "echo got-usr1; exit 3" USR1; echo ready; while true; do sleep 0.05; done'
    task = await tasks.start_task(client, request(busybox, tmp_path, ["sh", "-c", script]))
    try:
        await wait_for_text(tmp_path / "logs" / "task-1.log", "ready")
        await task.kill(signal.SIGUSR1)
        assert (await task.wait()).code == 3
    finally:
        await task.stop()


async def test_oom_kill_is_reported(client: Containerd, busybox: images.Image, tmp_path: Path) -> None:
    limit = 16 * 1024 * 1024
    # The pause lets the shim arm its OOM watcher (at Start), so the event is sent too; without it
    # an instant OOM kill only shows in the cgroup's counter, which is what wait() reads.
    args = ["sh", "-c", "sleep 0.3; exec dd if=/dev/zero of=/dev/null bs=64M count=1"]
    async with client.subscribe() as events:
        task = await tasks.start_task(client, request(busybox, tmp_path, args, memory_limit=limit))
        try:
            status = await task.wait()
        finally:
            await task.stop()
        assert status.code == 137
        assert status.oom_killed
        ooms = []
        with trio.move_on_after(5):
            async for event in events:
                if isinstance(event, TaskOOM):
                    ooms.append(event)
                    break
    assert [event.container_id for event in ooms] == [task.container_id]


async def test_an_oom_killed_child_marks_the_task(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    # The init process survives (it is not the biggest); the kernel's counter still says so.
    script = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo child-status=$?; exit 0"
    task = await tasks.start_task(
        client, request(busybox, tmp_path, ["sh", "-c", script], memory_limit=16 << 20)
    )
    status = await task.wait()
    await task.stop()
    assert status.code == 0
    assert status.oom_killed
    assert "child-status=137" in (tmp_path / "logs" / "task-1.log").read_text()


async def test_a_normal_sigkill_is_not_an_oom_kill(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    task = await tasks.start_task(
        client, request(busybox, tmp_path, ["sleep", "1000"], memory_limit=64 << 20)
    )
    await task.kill(signal.SIGKILL)
    status = await task.wait()
    await task.stop()
    assert status.code == 137 and not status.oom_killed


async def test_missing_binary_fails_at_create_and_leaves_nothing(
    client: Containerd, busybox: images.Image, tmp_path: Path, containerd: ContainerdInstance
) -> None:
    before = await count_resources(client)
    with pytest.raises(Internal, match="no such file"):
        await tasks.start_task(client, request(busybox, tmp_path, ["/bin/no-such-engine"]))
    assert await count_resources(client) == before
    assert containerd.counts(client.namespace).containers == 0


async def test_invalid_requests_are_refused_before_touching_containerd(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    before = await count_resources(client)
    with pytest.raises(InvalidArgument, match="container id"):
        await tasks.start_task(client, request(busybox, tmp_path, ["true"], cid="bad/id"))
    bad_spec = tasks.TaskRequest("t", busybox, {"no": "process"}, LABELS, tmp_path / "t.log")
    with pytest.raises(InvalidArgument, match="process"):
        await tasks.start_task(client, bad_spec)
    a_directory = tasks.TaskRequest("t", busybox, minimal_spec(["true"]), LABELS, tmp_path)
    with pytest.raises(InvalidArgument, match="cannot create log file"):
        await tasks.start_task(client, a_directory)
    relative_log = tasks.TaskRequest("t", busybox, minimal_spec(["true"]), LABELS, Path("t.log"))
    with pytest.raises(InvalidArgument, match="absolute"):
        await tasks.start_task(client, relative_log)
    assert await count_resources(client) == before


async def test_cancelling_a_start_at_any_point_leaks_nothing(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    before = await count_resources(client)
    # From "before the first RPC" to "after Start": every cancellation point of the sequence.
    for i, delay in enumerate([0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.2]):
        started = None
        with trio.move_on_after(delay):
            started = await tasks.start_task(client, request(busybox, tmp_path, ["sleep", "1000"], f"c-{i}"))
        if started is not None:
            await started.stop(grace=0)
        assert await count_resources(client) == before, f"leak after cancelling at {delay}s"


async def test_a_colliding_container_id_does_not_touch_the_existing_runner(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    first = await tasks.start_task(client, request(busybox, tmp_path, ["sleep", "1000"]))
    try:
        with pytest.raises(AlreadyExists):
            await tasks.start_task(client, request(busybox, tmp_path, ["true"]))
        assert await first.process_status() == 2  # RUNNING
        assert [r.container_id for r in await tasks.list_runners(client)] == ["task-1"]
    finally:
        await first.stop(grace=0)


async def test_runners_are_listed_from_labels_and_readable_in_ctr(
    client: Containerd, busybox: images.Image, tmp_path: Path, containerd: ContainerdInstance
) -> None:
    task = await tasks.start_task(client, request(busybox, tmp_path, ["sleep", "1000"]))
    try:
        [record] = await tasks.list_runners(client)
        assert record.container_id == "task-1"
        assert record.labels == LABELS
        assert record.status is tasks.TaskStatus.RUNNING
        assert record.pid == task.pid
        assert record.image_ref == busybox.ref
        assert record.cgroups_path == f"/{client.namespace}/task-1"
        info = containerd.ctr("containers", "info", "task-1", namespace=client.namespace)
        assert '"nerdctl/name": "bb-test"' in info
        assert '"io.modelrunner.memory-reservation": "123456789"' in info
        assert '"args"' in info  # ctr decodes the spec: the type URL is right
        assert "RUNNING" in containerd.ctr("tasks", "ls", namespace=client.namespace)
    finally:
        await task.stop(grace=0)
    assert await tasks.list_runners(client) == []


async def test_a_task_orphaned_by_deleting_its_container_is_cleaned_up(
    client: Containerd, busybox: images.Image, tmp_path: Path, containerd: ContainerdInstance
) -> None:
    before = await count_resources(client)
    task = await tasks.start_task(client, request(busybox, tmp_path, ["sleep", "1000"]))
    # containerd 1.6 lets a container record go while its task runs (the pitfall the shim avoids).
    await client.unary(client.containers_stub.Delete, containers_pb.DeleteContainerRequest(id="task-1"), "rm")
    assert "task-1" in containerd.ctr("tasks", "ls", namespace=client.namespace)
    removed = await tasks.cleanup_orphans(client)
    assert "task-1" in removed
    assert await count_resources(client) == before
    assert containerd.counts(client.namespace).tasks == 0
    assert task.container_id == "task-1"


async def test_engine_image_runs_llama_server(
    client: Containerd, llamacpp_engine: object, tmp_path: Path
) -> None:
    engine = await images.import_tarball(client, llamacpp_engine.image_tar)  # type: ignore[attr-defined]
    assert engine.ref == llamacpp_engine.image_ref  # type: ignore[attr-defined]
    assert engine.config.user == "65532:65532"
    spec = minimal_spec(["/usr/local/bin/llama-server", "--version"], user=(65532, 65532), env=("HOME=/tmp",))
    task = await tasks.start_task(
        client,
        tasks.TaskRequest(
            "engine-version", engine, spec, RunnerLabels(engine="llama.cpp"), tmp_path / "engine.log"
        ),
    )
    status = await task.wait()
    await task.stop()
    assert status.code == 0
    assert "build 11312" in (tmp_path / "engine.log").read_text()


async def test_reconcile_removes_an_import_lease_left_by_an_earlier_daemon(
    containerd: ContainerdInstance, containerd_namespace: str
) -> None:
    async with open_containerd(containerd.address, containerd_namespace) as earlier:
        await leases.create_lease(earlier, "modelrunner-import-stale", {leases.PURPOSE_LABEL: "import"})
        await leases.create_lease(earlier, "someone-elses", {"owner": "ctr"})
    await trio.sleep(0.05)
    async with open_containerd(containerd.address, containerd_namespace) as later:
        result = await tasks.reconcile_runners(later)
        assert result.adopted == ()
        assert result.removed == ("modelrunner-import-stale",)
        assert [lease.id for lease in await leases.list_leases(later)] == ["someone-elses"]


async def test_a_shim_containerd_lost_track_of_is_reaped(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    # What a client killed inside Tasks.Create can leave: a shim process no task refers to. A
    # stand-in with a shim's command line is enough to check that it is found and stopped, and
    # that the shim of a live runner is left alone.
    live = await tasks.start_task(client, request(busybox, tmp_path, ["sleep", "1000"], "live"))
    ghost = await trio.lowlevel.open_process(
        [
            "containerd-shim-runc-v2",
            "-c",
            "import time; time.sleep(1000)",
            "-namespace",
            client.namespace,
            "-id",
            "ghost",
            "-address",
            client.address,
        ],
        executable=sys.executable,
    )
    try:
        removed = await tasks.cleanup_orphans(client, keep={"live"})
        assert removed == ["shim/ghost"]
        with trio.fail_after(5):
            assert await ghost.wait() == -signal.SIGKILL
        assert await live.process_status() == 2  # still RUNNING
    finally:
        if ghost.returncode is None:
            ghost.kill()
            await ghost.wait()
        await live.stop(grace=0)
