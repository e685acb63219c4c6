"""Helpers shared by the shim tests: a minimal OCI runtime spec and leak counting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def minimal_spec(
    args: Sequence[str],
    *,
    memory_limit: int | None = None,
    env: Sequence[str] = ("PATH=/bin",),
    user: tuple[int, int] = (0, 0),
    mounts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A small, read-only, namespaced OCI spec (what sandbox/ builds, minus the hardening)."""
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]},
            "args": list(args),
            "env": list(env),
            "cwd": "/",
            "noNewPrivileges": True,
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "root": {"path": "ignored-the-shim-sets-it", "readonly": True},
        "hostname": "runner",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "size=16m"],
            },
            *mounts,
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/bus"],
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }
    if memory_limit is not None:
        spec["linux"]["resources"]["memory"] = {"limit": memory_limit, "swap": memory_limit}
    return spec


async def count_resources(client: Any) -> dict[str, int]:
    """Containers, tasks, snapshots, leases, content and images in the client's namespace, via the API."""
    from modelrunner.shim import _rpc, content, images, leases
    from modelrunner.shim.proto import containerd_containers_pb2 as containers_pb
    from modelrunner.shim.proto import containerd_snapshots_pb2 as snapshots_pb
    from modelrunner.shim.proto import containerd_tasks_pb2 as tasks_pb

    containers = await client.unary(
        client.containers_stub.List, containers_pb.ListContainersRequest(), "list"
    )
    tasks = await client.unary(client.tasks_stub.List, tasks_pb.ListTasksRequest(), "list")
    snapshots: list[str] = []
    await _rpc.consume_stream(
        lambda: client.snapshots_stub.List(
            snapshots_pb.ListSnapshotsRequest(snapshotter=client.snapshotter), metadata=client.metadata()
        ),
        lambda response: snapshots.extend(info.name for info in response.info),
        "list",
    )
    return {
        "containers": len(containers.containers),
        "tasks": len(tasks.tasks),
        "snapshots": len(snapshots),
        "leases": len(await leases.list_leases(client)),
        "content": len(await content.list_blobs(client)),
        "images": len(await images.list_refs(client)),
    }


async def wait_for_text(path: Any, text: str, limit: float = 10.0) -> str:
    """Poll a log file until it contains ``text``; returns the file's content."""
    import trio

    with trio.fail_after(limit):
        while True:
            try:
                content = path.read_text(errors="replace")
            except FileNotFoundError:
                content = ""
            if text in content:
                return content
            await trio.sleep(0.02)
