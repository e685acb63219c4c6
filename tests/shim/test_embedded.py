"""The embedded containerd: config, startup failures, restart on death, leftover takeover, events."""

from __future__ import annotations

import os
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest
import trio
from modelrunner.shim import images, tasks
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import (
    DISABLED_PLUGINS,
    REQUIRED_PLUGINS,
    EmbeddedPaths,
    open_embedded_containerd,
    render_config,
)
from modelrunner.shim.errors import InvalidArgument, Unavailable
from modelrunner.shim.events import EventsLost, EventsResynced, TaskExit
from modelrunner.shim.labels import RunnerLabels

from tests.fixtures.containerd import remove_namespace_cgroups
from tests.fixtures.images import TestImage
from tests.shim.helpers import minimal_spec


def test_config_is_private_and_strict(tmp_path: Path) -> None:
    paths = EmbeddedPaths(tmp_path / "ctd")
    config = tomllib.loads(render_config(paths, log_level="debug"))
    assert config["version"] == 2
    assert config["root"] == str(tmp_path / "ctd" / "root")
    assert config["state"] == str(tmp_path / "ctd" / "state")
    assert config["grpc"]["address"] == str(paths.socket)
    assert config["ttrpc"]["address"] == str(paths.socket) + ".ttrpc"
    assert config["debug"]["level"] == "debug"
    assert set(config["required_plugins"]) == set(REQUIRED_PLUGINS)
    assert "io.containerd.snapshotter.v1.overlayfs" in config["required_plugins"]
    assert "io.containerd.grpc.v1.cri" in config["disabled_plugins"]
    # Disabling it breaks the tasks service in containerd 1.6.
    assert "io.containerd.runtime.v1.linux" not in config["disabled_plugins"]
    assert set(config["disabled_plugins"]) == set(DISABLED_PLUGINS)
    assert config["plugins"]["io.containerd.runtime.v1.linux"]["runtime_root"].startswith(str(tmp_path))


def test_odd_characters_in_paths_stay_valid_toml(tmp_path: Path) -> None:
    paths = EmbeddedPaths(tmp_path / 'we"ird\\dir ü')
    config = tomllib.loads(render_config(paths))
    assert config["root"] == str(paths.root)


def test_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unix sockets"):
        EmbeddedPaths(tmp_path / ("x" * 120)).check()
    with pytest.raises(InvalidArgument, match="absolute"):
        EmbeddedPaths(Path("relative")).check()


@pytest.mark.integration
async def test_a_missing_binary_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot run"):
        async with open_embedded_containerd(tmp_path / "ctd", binary="/nonexistent/containerd"):
            pass


@pytest.mark.integration
async def test_a_broken_required_plugin_fails_at_startup_with_the_log(tmp_path: Path) -> None:
    # A snapshotter root that is a file makes overlayfs fail to initialise; required_plugins turns
    # that into a startup failure instead of a daemon without overlayfs.
    paths = EmbeddedPaths(tmp_path / "ctd")
    snapshotter_root = paths.root / "io.containerd.snapshotter.v1.overlayfs"
    snapshotter_root.parent.mkdir(parents=True)
    snapshotter_root.write_text("not a directory")
    with pytest.raises(Unavailable, match="exited with code") as caught:
        with trio.fail_after(30):
            async with open_embedded_containerd(paths.state_dir):
                pass
    assert "overlayfs" in str(caught.value)


@pytest.mark.integration
async def test_restarts_when_killed_and_clients_resync(tmp_path: Path, busybox_image: TestImage) -> None:
    async with open_embedded_containerd(tmp_path / "ctd") as daemon:
        first_pid = daemon.pid
        assert first_pid is not None
        async with open_containerd(daemon.address, "restart", runc_root=daemon.runc_root) as client:
            image = await images.import_tarball(client, busybox_image.path)
            spec = minimal_spec(["sh", "-c", "sleep 0.5; exit 5"])
            task = await tasks.start_task(
                client,
                tasks.TaskRequest("r1", image, spec, RunnerLabels(engine="busybox"), tmp_path / "r1.log"),
            )
            async with client.subscribe() as events:
                os.kill(first_pid, signal.SIGKILL)
                # Tasks.Wait is re-issued once containerd is back; the shim kept the task alive.
                with trio.fail_after(30):
                    status = await task.wait()
                assert status.code == 5
                seen = []
                with trio.move_on_after(20):
                    async for event in events:
                        seen.append(event)
                        resynced = any(isinstance(e, EventsResynced) for e in seen)
                        if resynced and any(isinstance(e, TaskExit) for e in seen):
                            break
            kinds = [type(e) for e in seen]
            assert EventsLost in kinds
            assert EventsResynced in kinds
            assert kinds.index(EventsLost) < kinds.index(EventsResynced)
            exits = [e for e in seen if isinstance(e, TaskExit) and e.container_id == "r1"]
            assert exits and exits[0].exit_status == 5
            assert daemon.statistics().restarts == 1
            assert daemon.pid not in (None, first_pid)
            await task.stop()
            await images.remove(client, image.ref)
    remove_namespace_cgroups("restart")
    assert daemon.pid is None
    assert not daemon.paths.pidfile.exists()


@pytest.mark.integration
async def test_a_leftover_daemon_is_stopped_before_a_new_one_starts(tmp_path: Path) -> None:
    paths = EmbeddedPaths(tmp_path / "ctd")
    async with open_embedded_containerd(paths.state_dir):
        pass
    # Simulate a modelrunner killed with -9: its containerd keeps running and keeps the pid file.
    leftover = await trio.lowlevel.open_process(
        ["containerd", "--config", str(paths.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        paths.pidfile.write_text(f"{leftover.pid}\n")
        with trio.fail_after(20):
            # Up means answering (the previous daemon's socket file may still be there).
            while not await _answers(paths.socket):  # noqa: ASYNC110 - a process outside our control
                await trio.sleep(0.02)
            async with open_embedded_containerd(paths.state_dir) as daemon:
                assert leftover.poll() is not None  # stopped
                assert daemon.pid != leftover.pid
                async with open_containerd(daemon.address, "leftover") as client:
                    assert (await client.version()).version
    finally:
        if leftover.poll() is None:
            leftover.kill()
        await leftover.wait()


async def _answers(socket_path: Path) -> bool:
    with trio.socket.socket(trio.socket.AF_UNIX) as sock:
        try:
            await sock.connect(str(socket_path))
        except OSError:
            return False
    return True
