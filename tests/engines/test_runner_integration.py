"""ContainerRunner's stop sequence for real, with a busybox "engine" that plays llama-server's race.

llama-server can lose a SIGTERM that arrives right after ``/health`` turns 200 (engine.md 2.4); the
fix is a second SIGTERM, then SIGKILL. The race is rare, so the engine here loses the first
SIGTERM on purpose (a shell trap that counts) and the test checks which signal ended it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from modelrunner.engines import MemoryEstimate, Mode
from modelrunner.engines.runner import ContainerRunner, LogFollower
from modelrunner.sandbox import SandboxRequest, build_spec
from modelrunner.shim import images
from modelrunner.shim.client import Containerd
from modelrunner.shim.labels import RunnerLabels
from modelrunner.shim.tasks import TaskRequest, start_task

from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.images import pack_test_image

pytestmark = pytest.mark.integration

# Ignores the first SIGTERM (like llama-server in its race window), exits 42 on the second.
IGNORES_ONE_SIGTERM = "n=0; trap 'n=$((n+1)); [ $n -ge 2 ] && exit 42; echo lost-one' TERM; " \
    "echo up; while :; do sleep 0.05; done"
IGNORES_ALL_SIGTERMS = "trap 'echo ignored' TERM; echo up; while :; do sleep 0.05; done"
EXITS_ON_SIGTERM = "trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done"


async def start_busybox_runner(
    client: Containerd, root: Path, script: str, runner_id: str
) -> ContainerRunner:
    tarball = pack_test_image(root / "busybox.oci.tar")
    image = await images.import_tarball(client, tarball.path)
    runner_dir = root / runner_id
    engine_dir = runner_dir / "engine"
    bundle_dir = root / "bundle"
    for path in (engine_dir, bundle_dir):
        path.mkdir(parents=True, exist_ok=True)
    (engine_dir / "engine.sock").touch()  # stands in for the socket llama-server leaves behind
    log_path = runner_dir / "engine.log"
    cgroups_path = f"/{client.namespace}/{runner_id}"
    spec = build_spec(SandboxRequest(
        args=("/bin/sh", "-c", script), bundle_dir=str(bundle_dir), engine_dir=str(engine_dir),
        memory_limit_bytes=64 << 20, cgroups_path=cgroups_path,
    ))
    labels = RunnerLabels(engine="busybox", model_id="sha256:" + "0" * 64, mode="completion",
                          socket_path=str(engine_dir / "engine.sock"), memory_reservation=1 << 20, name="bb")
    task = await start_task(client, TaskRequest(runner_id, image, spec, labels, log_path))
    runner = ContainerRunner(
        task=task, backend="busybox", model_id=labels.model_id, model_name="bb", mode=Mode.COMPLETION,
        socket_path=engine_dir / "engine.sock", runner_dir=runner_dir, cgroups_path=cgroups_path,
        reservation=MemoryEstimate(ram=1 << 20), follower=LogFollower(log_path, max_bytes=1 << 20),
    )
    with trio.fail_after(10):
        while not any(line == "up" or line.startswith("line-") for line in runner.log_tail.lines()):  # noqa: ASYNC110
            await trio.sleep(0.02)  # polling a file the shim writes: there is no event to wait on
    return runner


@pytest.fixture
async def client(containerd: ContainerdInstance, containerd_namespace: str) -> Containerd:  # type: ignore[misc]
    from modelrunner.shim.client import open_containerd

    async with open_containerd(containerd.address, containerd_namespace, runc_root=containerd.runc_root) as c:
        yield c


@pytest.mark.parametrize(
    ("script", "code", "min_seconds", "max_seconds"),
    [
        (EXITS_ON_SIGTERM, 0, 0.0, 1.5),  # the usual case: the first SIGTERM does it
        (IGNORES_ONE_SIGTERM, 42, 1.0, 2.5),  # the second SIGTERM, at half the grace
        (IGNORES_ALL_SIGTERMS, 137, 2.0, 5.0),  # SIGKILL at the full grace
    ],
)
async def test_stop_escalates_sigterm_sigterm_sigkill(
    client: Containerd, short_tmp: Path, containerd: ContainerdInstance,
    script: str, code: int, min_seconds: float, max_seconds: float,
) -> None:
    runner = await start_busybox_runner(client, short_tmp, script, "stop-test")
    started = time.monotonic()
    await runner.stop(grace=2.0)
    elapsed = time.monotonic() - started
    info = await runner.wait_exit()
    assert info.code == code
    assert min_seconds <= elapsed <= max_seconds, elapsed
    assert not runner.socket_path.exists()
    counts = containerd.counts(client.namespace)
    assert (counts.containers, counts.tasks, counts.leases) == (0, 0, 0)
    await runner.stop()  # idempotent


async def test_concurrent_stops_share_one_sequence(client: Containerd, short_tmp: Path) -> None:
    runner = await start_busybox_runner(client, short_tmp, IGNORES_ONE_SIGTERM, "stop-twice")
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(runner.stop, 1.0)
    assert (await runner.wait_exit()).code == 42


async def test_cancelled_stop_still_kills_and_releases(
    client: Containerd, short_tmp: Path, containerd: ContainerdInstance
) -> None:
    runner = await start_busybox_runner(client, short_tmp, IGNORES_ALL_SIGTERMS, "stop-cancel")
    with trio.move_on_after(0.2):
        await runner.stop(grace=30.0)
    assert (await runner.wait_exit()).code == 137
    counts = containerd.counts(client.namespace)
    assert (counts.containers, counts.tasks, counts.leases) == (0, 0, 0)


async def test_log_is_bounded(client: Containerd, short_tmp: Path) -> None:
    # About 1 MB/s, paced so the bound below does not depend on how fast this machine is.
    chatty = (
        "echo up; i=0; while :; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); "
        "[ $((i % 200)) -eq 0 ] && sleep 0.01; done"
    )
    runner = await start_busybox_runner(client, short_tmp, chatty, "chatty")
    assert runner.follower is not None
    runner.follower.max_bytes = 64 * 1024
    try:
        sizes = []
        for _ in range(20):
            runner.follower.poll()
            await trio.sleep(0.05)
            sizes.append(runner.follower.path.stat().st_size)
        # The shim appends (O_APPEND): after a cut, writing resumes at the new end, no sparse hole.
        assert max(sizes) < 1 << 20
        assert runner.follower.truncations > 0
        assert runner.log_tail.lines()[-1].startswith("line-")
    finally:
        await runner.stop(grace=0.5)
