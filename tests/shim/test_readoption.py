"""Re-adoption after ``kill -9`` of the daemon under load, and nothing leaked afterwards."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from modelrunner.shim import tasks
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import open_embedded_containerd
from modelrunner.shim.health import probe_health
from modelrunner.shim.proto import containerd_snapshots_pb2 as snapshots_pb

from tests.fixtures.containerd import remove_namespace_cgroups
from tests.fixtures.images import TestImage
from tests.shim.helpers import count_resources

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "readopt-" + secrets.token_hex(3)


def _shim_processes(address: str) -> list[int]:
    """PIDs of runc shims serving the containerd at ``address``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
            found.append(int(entry.name))
    return found


def _ctr(address: str, *args: str) -> str:
    return subprocess.run(
        ["ctr", "--address", address, "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


async def test_runners_survive_a_killed_daemon_and_leftovers_are_removed(
    tmp_path: Path, llamacpp_engine: object, busybox_image: TestImage, test_models: object
) -> None:
    state_dir = tmp_path / "ctd"
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    # The engine runs as an unprivileged user: give it a world-readable copy of the model.
    models_dir = tmp_path / "models"
    models_dir.mkdir(mode=0o755)
    shutil.copyfile(test_models.chat, models_dir / "chat.gguf")  # type: ignore[attr-defined]
    (models_dir / "chat.gguf").chmod(0o644)
    command = [
        sys.executable,
        str(Path(__file__).with_name("readopt_daemon.py")),
        str(state_dir),
        NAMESPACE,
        str(llamacpp_engine.image_tar),  # type: ignore[attr-defined]
        str(busybox_image.path),
        str(models_dir),
        str(work_dir),
    ]
    daemon = await trio.lowlevel.open_process(
        command,
        stdout=subprocess.PIPE,
        stderr=work_dir.joinpath("daemon.err").open("wb"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        output = b""
        with trio.move_on_after(120):
            while b"\n" not in output:
                chunk = await daemon.stdout.receive_some()  # type: ignore[union-attr]
                if not chunk:
                    break
                output += chunk
        line = output.decode().split("\n", 1)[0]
        assert line.startswith("READY "), f"no READY line: {(work_dir / 'daemon.err').read_text()[-3000:]}"
        ready = json.loads(line.removeprefix("READY "))
        await trio.sleep(0.4)  # let the churn loop run, so the kill lands mid-lifecycle
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    old_containerd = ready["containerd_pid"]
    assert _alive(old_containerd)  # left running, as after a real kill -9

    async with open_embedded_containerd(state_dir) as embedded:
        assert embedded.pid != old_containerd
        assert not _alive(old_containerd)
        async with open_containerd(embedded.address, NAMESPACE, runc_root=embedded.runc_root) as client:
            with trio.fail_after(60):
                result = await tasks.reconcile_runners(client)
            adopted = {task.container_id: task for task in result.adopted}
            assert set(adopted) == set(ready["healthy"])
            for cid, task in adopted.items():
                # The same engine process: adopted, not reloaded.
                assert task.pid == ready["healthy"][cid]
                assert task.labels is not None
                assert task.labels.memory_reservation == (int(cid[-1]) + 1) << 30
                assert task.labels.engine == "llama.cpp"
                assert await probe_health(task.labels.socket_path)
            assert {"unhealthy", "exited"} <= set(result.removed)
            # Only the adopted runners remain.
            assert sorted(r.container_id for r in await tasks.list_runners(client)) == sorted(adopted)
            counts = await count_resources(client)
            assert counts["containers"] == counts["tasks"] == len(adopted)
            assert counts["leases"] == len(adopted)

            for task in adopted.values():
                status = await task.stop(grace=5)
                assert status.code in (0, 143, 137)
            after = await count_resources(client)
            assert (after["containers"], after["tasks"], after["leases"]) == (0, 0, 0)
            # Left: the two images' blobs (engine: layer, config, manifest; busybox: two layers too)
            # and their committed layer snapshots; no runner view, no unpack leftover.
            assert after["images"] == 2
            assert after["content"] == 3 + 4
            snapshot_kinds = await _snapshot_kinds(client)
            assert len(snapshot_kinds) == 1 + 2 and set(snapshot_kinds) == {snapshots_pb.COMMITTED}
            ctr_tasks = _ctr(embedded.address, "tasks", "ls", "-q").split()
            ctr_containers = _ctr(embedded.address, "containers", "ls", "-q").split()
            ctr_leases = _ctr(embedded.address, "leases", "ls", "-q").split()
            assert ctr_tasks == ctr_containers == ctr_leases == []
        # A deleted task's shim exits on its own a moment after Tasks.Delete returns.
        with trio.move_on_after(5):
            while _shim_processes(embedded.address):  # noqa: ASYNC110 - processes outside our control
                await trio.sleep(0.05)
        leftover_shims = {pid: _cmdline(pid) for pid in _shim_processes(embedded.address)}
        assert leftover_shims == {}
        assert _runc_states(embedded.runc_root, NAMESPACE) == [], "runc state left behind"
        assert _mounts_under(state_dir) == [], "rootfs mounts left behind"
        # Tidy: the images go too, so the next run starts clean.
        async with open_containerd(embedded.address, NAMESPACE) as client:
            from modelrunner.shim import images

            for ref in await images.list_refs(client):
                await images.remove(client, ref)
    remove_namespace_cgroups(NAMESPACE)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "(gone)"


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _mounts_under(directory: Path) -> list[str]:
    mount_points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [m for m in mount_points if m.startswith(str(directory))]


def _runc_states(root: str, namespace: str) -> list[str]:
    return [p.name for p in Path(root).glob(f"{namespace}/*")]


async def _snapshot_kinds(client: object) -> list[int]:
    from modelrunner.shim import _rpc

    kinds: list[int] = []
    await _rpc.consume_stream(
        lambda: client.snapshots_stub.List(  # type: ignore[attr-defined]
            snapshots_pb.ListSnapshotsRequest(snapshotter="overlayfs"),
            metadata=client.metadata(),  # type: ignore[attr-defined]
        ),
        lambda response: kinds.extend(info.kind for info in response.info),
        "list",
    )
    return kinds
