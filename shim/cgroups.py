"""Read a task's OOM-kill count from its cgroup (host side).

containerd's ``/tasks/oom`` event and the task's exit travel separately (the shim watches the memory
cgroup's eventfd and reaps the process in different goroutines), so the event can arrive after the
exit, or be missed during an event-stream gap. The kernel's own counter is exact: cgroup v1
``memory.oom_control`` and cgroup v2 ``memory.events`` both report ``oom_kill N``, and the cgroup
exists until the task is deleted, which modelrunner does only after it has seen the exit.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CGROUP_ROOT", "default_cgroups_path", "oom_kill_count"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def default_cgroups_path(namespace: str, container_id: str) -> str:
    """containerd's default ``linux.cgroupsPath`` for a container."""
    return f"/{namespace}/{container_id}"


def oom_kill_count(cgroups_path: str, root: Path = CGROUP_ROOT) -> int | None:
    """How many processes the OOM killer killed in the cgroup, or None when it cannot be read.

    ``cgroups_path`` is an OCI ``linux.cgroupsPath``; only the cgroupfs form (an absolute path) is
    understood, not systemd's ``slice:prefix:name``.
    """
    if not cgroups_path.startswith("/") or ".." in cgroups_path.split("/"):
        return None
    relative = cgroups_path.strip("/")
    if (root / "cgroup.controllers").exists():  # the unified (v2) hierarchy is mounted at the root
        counters = root / relative / "memory.events"
    else:
        counters = root / "memory" / relative / "memory.oom_control"
    try:
        text = counters.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None
