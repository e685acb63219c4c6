"""Resolved container edits: what a device plugin (a CDI device) adds to an engine's sandbox.

These are plain values. :mod:`modelrunner.sandbox.cdi` produces them from CDI spec files (reading the
host to fill in device numbers), and the pure builder :func:`modelrunner.sandbox.spec.build_spec`
applies them. Keeping the host reads out of the builder is what lets the builder stay free of I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "HOOK_NAMES",
    "ContainerEdits",
    "DeviceNode",
    "DeviceType",
    "EditMount",
    "Hook",
    "HookName",
    "IntelRdt",
]

HookName = Literal["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
HOOK_NAMES: tuple[HookName, ...] = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

DeviceType = Literal["c", "b", "u", "p"]


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A device node to create inside the container, with its numbers already read from the host."""

    path: str  # where the node appears inside the container
    host_path: str  # the node it mirrors on the host
    type: DeviceType
    major: int
    minor: int
    file_mode: int | None = None  # permission bits of the node (None: the host node's)
    permissions: str = "rwm"  # cgroup access granted: a subset of "rwm"
    uid: int | None = None  # owner inside the container (None: the engine's uid)
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class EditMount:
    """A mount a device needs (driver libraries, IPC sockets)."""

    host_path: str
    container_path: str
    type: str = "bind"
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hook:
    """An OCI hook a device needs; it runs on the host, as root, at ``hook_name`` time."""

    hook_name: HookName
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class IntelRdt:
    """Intel RDT class of service (cache and memory bandwidth allocation)."""

    clos_id: str | None = None
    l3_cache_schema: str | None = None
    mem_bw_schema: str | None = None
    enable_cmt: bool = False
    enable_mbm: bool = False


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    """One group of edits, applied in order: a spec's common edits, then each device's own.

    ``origin`` names where the edits came from (``nvidia.com/gpu=0 (/etc/cdi/nvidia.yaml)``), so an
    error raised while applying them can say which spec file to fix.
    """

    origin: str
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[EditMount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: IntelRdt | None = None
