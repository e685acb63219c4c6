"""The client: connection checks, namespace header, cancellation of RPCs, the event stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from modelrunner.shim import images, tasks
from modelrunner.shim.client import Containerd, grpc_target, open_containerd, socket_path
from modelrunner.shim.errors import InvalidArgument, NotFound, Unavailable
from modelrunner.shim.events import EventsLost, TaskCreate, TaskDelete, TaskExit, TaskStart
from modelrunner.shim.labels import RunnerLabels
from modelrunner.shim.proto import containerd_namespaces_pb2 as namespaces_pb
from modelrunner.shim.proto import containerd_tasks_pb2 as tasks_pb

from tests.fixtures.containerd import ContainerdInstance
from tests.shim.helpers import minimal_spec


def test_addresses_become_unix_targets() -> None:
    assert grpc_target("/run/containerd/containerd.sock") == "unix:///run/containerd/containerd.sock"
    assert grpc_target("unix:///run/x.sock") == "unix:///run/x.sock"
    assert grpc_target("unix:/run/x.sock") == "unix:///run/x.sock"
    assert socket_path("unix:///run/x.sock") == "/run/x.sock"


@pytest.mark.integration
async def test_nothing_listening_is_unavailable_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="is containerd running there"):
        async with open_containerd(tmp_path / "absent.sock"):
            pass


async def test_bad_namespace_is_refused_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="namespace"):
        async with open_containerd(tmp_path / "absent.sock", "no spaces allowed"):
            pass


@pytest.mark.integration
async def test_version_plugins_and_namespace(client: Containerd, containerd: ContainerdInstance) -> None:
    version = await client.version()
    assert version.version.startswith("1.")
    plugins = {(p.type, p.id): p for p in await client.plugins()}
    assert plugins[("io.containerd.snapshotter.v1", "overlayfs")].error == ""
    assert client.namespace in containerd.namespaces()
    response = await client.unary(
        client.namespaces_stub.Get, namespaces_pb.GetNamespaceRequest(name=client.namespace), "get"
    )
    assert response.namespace.name == client.namespace


@pytest.mark.integration
async def test_errors_are_typed(client: Containerd) -> None:
    with pytest.raises(NotFound, match="getting task nope"):
        await client.unary(
            client.tasks_stub.Get, tasks_pb.GetRequest(container_id="nope"), "getting task nope"
        )


@pytest.mark.integration
async def test_cancelling_a_blocked_rpc_returns_at_once(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    task = await tasks.start_task(
        client,
        tasks.TaskRequest(
            "long",
            busybox,
            minimal_spec(["sleep", "1000"]),
            RunnerLabels(engine="busybox"),
            tmp_path / "l.log",
        ),
    )
    try:
        started = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await client.unary(client.tasks_stub.Wait, tasks_pb.WaitRequest(container_id="long"), "wait")
        assert scope.cancelled_caught
        assert trio.current_time() - started < 1.0
        # RunningTask.wait() is cancellable the same way and can be waited on again afterwards.
        with trio.move_on_after(0.2):
            await task.wait()
        assert task.exit_status is None
    finally:
        status = await task.stop(grace=0)
    assert status.code == 137


@pytest.mark.integration
async def test_events_arrive_typed_and_in_order(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    async with client.subscribe() as events:
        task = await tasks.start_task(
            client,
            tasks.TaskRequest(
                "ev",
                busybox,
                minimal_spec(["sh", "-c", "exit 4"]),
                RunnerLabels(engine="busybox"),
                tmp_path / "e.log",
            ),
        )
        await task.stop()
        seen: list[object] = []
        with trio.fail_after(5):
            async for event in events:
                seen.append(event)
                if isinstance(event, TaskDelete):
                    break
    kinds = [type(e) for e in seen]
    assert kinds == [TaskCreate, TaskStart, TaskExit, TaskDelete]
    exit_event = seen[2]
    assert isinstance(exit_event, TaskExit)
    assert exit_event.container_id == "ev" and exit_event.exit_status == 4 and exit_event.is_init
    assert exit_event.pid == task.pid


@pytest.mark.integration
async def test_a_slow_subscriber_is_told_it_lost_events(
    client: Containerd, busybox: images.Image, tmp_path: Path
) -> None:
    async with client.subscribe(buffer=1) as events:
        task = await tasks.start_task(
            client,
            tasks.TaskRequest(
                "slow", busybox, minimal_spec(["true"]), RunnerLabels(engine="busybox"), tmp_path / "s.log"
            ),
        )
        await task.stop()
        await trio.sleep(0.2)  # the four events went out while nobody read
        first = await events.receive()
        assert isinstance(first, TaskCreate)
        with trio.fail_after(5):
            # The next event published reaches us after a notice of what was dropped.
            other = await tasks.start_task(
                client,
                tasks.TaskRequest(
                    "slow2",
                    busybox,
                    minimal_spec(["true"]),
                    RunnerLabels(engine="busybox"),
                    tmp_path / "s2.log",
                ),
            )
            await other.stop()
            lost = await events.receive()
    assert isinstance(lost, EventsLost)
    assert lost.dropped >= 3
