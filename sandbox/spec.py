"""The OCI runtime spec every engine runs in, built as a pure function.

Theory of operation
-------------------
An engine runs model files downloaded from the internet and executes the chat templates inside them,
so it is treated as hostile: it gets nothing it does not need. :func:`build_spec` turns a frozen
:class:`SandboxRequest` into a complete, JSON-ready OCI runtime spec. It does no I/O: device numbers
of GPUs arrive already read from the host (see :mod:`modelrunner.sandbox.cdi`), and the seccomp
profile is package data read once per process. The result is handed to shim/, which adds only the
rootfs mounts (an image snapshot view; ``root.path`` is ``"rootfs"``).

What the spec grants, and why (point by point in ``SECURITY.md``):

* namespaces: pid, ipc, uts, mount, cgroup and a fresh network namespace, which runc gives only an
  ``lo`` interface; optionally a user namespace (container ids mapped to an unprivileged host range);
* filesystem: the image read-only; the model bundle read-only at ``/models``; one read-write host
  directory at ``/run/engine`` for the engine's Unix socket; size-limited tmpfs at ``/tmp`` and
  ``/dev/shm``; proc, read-only sysfs, devpts, mqueue; Docker's masked and read-only paths; no
  cgroup filesystem (Docker mounts one; runc's v1 version leaves a writable tmpfs at its root);
* process: an unprivileged uid, no capabilities in any set, ``noNewPrivileges``, ``HOME=/tmp``,
  RLIMIT_NOFILE, no core dumps, and a positive ``oomScoreAdj`` so the kernel kills an engine before
  the daemon;
* seccomp: the default-deny allowlist in ``seccomp_default.json``;
* cgroups: a memory limit with swap equal to it (so no swap), a pids limit, optional CPU quota,
  shares and cpuset, and a device allowlist of the basic pseudo-devices plus the granted GPUs.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from modelrunner.sandbox.edits import HOOK_NAMES, ContainerEdits, DeviceNode, EditMount, Hook
from modelrunner.sandbox.errors import InvalidSandboxRequest
from modelrunner.sandbox.seccomp import HOST_ARCHITECTURE, SeccompProfile, default_profile

__all__ = [
    "DEFAULT_PATH",
    "ENGINE_DIR_IN_CONTAINER",
    "MASKED_PATHS",
    "MODELS_DIR_IN_CONTAINER",
    "OCI_VERSION",
    "READONLY_PATHS",
    "CpuLimits",
    "IdMapping",
    "SandboxRequest",
    "UserNamespace",
    "build_spec",
    "device_mount_points",
    "memory_limit_for_reservation",
]

OCI_VERSION = "1.0.2"
MODELS_DIR_IN_CONTAINER = "/models"
ENGINE_DIR_IN_CONTAINER = "/run/engine"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MIB = 1024 * 1024
GIB = 1024 * MIB

# Docker's default masked paths (moby's oci/defaults.go), including the later additions for
# /proc/interrupts and the RAPL power counters in /sys/devices/virtual/powercap (a side channel).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Pseudo-devices every program may use (the same set Docker and runc allow), read/write only: no
# "m", so nothing may mknod, not even a node the device rules would let it open.
_BASIC_DEVICES: tuple[tuple[str, int, int | None], ...] = (
    ("c", 1, 3),  # null
    ("c", 1, 5),  # zero
    ("c", 1, 7),  # full
    ("c", 1, 8),  # random
    ("c", 1, 9),  # urandom
    ("c", 5, 0),  # tty
    ("c", 5, 2),  # ptmx
    ("c", 136, None),  # pts/*
)

# Mount destinations the sandbox owns; a device's edits may not replace them.
_SANDBOX_DESTINATIONS = frozenset(
    {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/tmp",
        MODELS_DIR_IN_CONTAINER,
        ENGINE_DIR_IN_CONTAINER,
    }
)

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_CGROUP_COMPONENT = re.compile(r"^[A-Za-z0-9_.:@-]+$")
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_ENV_KEY = re.compile(r"^[^=\x00]+$")
_PERMISSIONS = re.compile(r"^r?w?m?$")


def memory_limit_for_reservation(reserved_bytes: int) -> int:
    """The cgroup memory limit for an engine the scheduler reserved ``reserved_bytes`` for.

    The margin (10 %, at least 256 MiB) covers what the estimate leaves out: the engine's own heap,
    thread stacks, the page cache of the mapped model and whatever it writes to the tmpfs mounts,
    which the memory cgroup charges too. An engine that outgrows it is OOM-killed in its own cgroup
    instead of pushing the host into swap or the global OOM killer.

    Raises:
        InvalidSandboxRequest: ``reserved_bytes`` is not a positive integer.
    """
    if isinstance(reserved_bytes, bool) or not isinstance(reserved_bytes, int) or reserved_bytes <= 0:
        raise InvalidSandboxRequest(
            "memory_limit_bytes", f"reservation must be > 0 bytes, got {reserved_bytes!r}"
        )
    return reserved_bytes + max(256 * MIB, reserved_bytes // 10)


@dataclass(frozen=True, slots=True)
class IdMapping:
    """``size`` ids starting at ``container_id`` inside map to ids starting at ``host_id`` outside."""

    container_id: int
    host_id: int
    size: int

    def to_oci(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


@dataclass(frozen=True, slots=True)
class UserNamespace:
    """User namespace remapping: container root becomes an unprivileged host id.

    Files the engine must read (the model bundle) have to be world-readable, and the engine directory
    must be owned by :meth:`host_uid` of the engine's uid, because host ids outside the mapping
    appear as ``nobody`` inside.
    """

    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]

    @classmethod
    def single_range(cls, host_id: int, size: int = 65536) -> UserNamespace:
        """Map container ids ``0..size-1`` onto host ids ``host_id..host_id+size-1`` (uids and gids)."""
        mapping = (IdMapping(0, host_id, size),)
        return cls(mapping, mapping)

    @staticmethod
    def _lookup(mappings: tuple[IdMapping, ...], container_id: int) -> int | None:
        for m in mappings:
            if m.container_id <= container_id < m.container_id + m.size:
                return m.host_id + (container_id - m.container_id)
        return None

    def host_uid(self, container_uid: int) -> int:
        """The host uid that ``container_uid`` is inside the namespace.

        Raises:
            InvalidSandboxRequest: the uid is not mapped.
        """
        host = self._lookup(self.uid_mappings, container_uid)
        if host is None:
            raise InvalidSandboxRequest("userns", f"container uid {container_uid} is not mapped")
        return host

    def host_gid(self, container_gid: int) -> int:
        """The host gid that ``container_gid`` is inside the namespace.

        Raises:
            InvalidSandboxRequest: the gid is not mapped.
        """
        host = self._lookup(self.gid_mappings, container_gid)
        if host is None:
            raise InvalidSandboxRequest("userns", f"container gid {container_gid} is not mapped")
        return host

    def maps_uid(self, container_uid: int) -> bool:
        return self._lookup(self.uid_mappings, container_uid) is not None

    def maps_gid(self, container_gid: int) -> bool:
        return self._lookup(self.gid_mappings, container_gid) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuLimits:
    """CPU controls: a CFS quota per period, relative shares and a cpuset (all optional)."""

    quota_us: int | None = None
    period_us: int = 100_000
    shares: int | None = None
    cpus: str | None = None  # cpuset.cpus, e.g. "0-3,6"
    mems: str | None = None  # cpuset.mems (NUMA nodes)

    @classmethod
    def from_cpu_count(cls, cpus: float, *, period_us: int = 100_000) -> CpuLimits:
        """A quota worth ``cpus`` CPUs (``1.5`` = one and a half CPUs' time per period)."""
        if not cpus > 0:
            raise InvalidSandboxRequest("cpu", f"CPU count must be > 0, got {cpus!r}")
        return cls(quota_us=max(1000, round(cpus * period_us)), period_us=period_us)

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.shares is not None:
            out["shares"] = self.shares
        if self.quota_us is not None:
            out["quota"] = self.quota_us
            out["period"] = self.period_us
        if self.cpus is not None:
            out["cpus"] = self.cpus
        if self.mems is not None:
            out["mems"] = self.mems
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxRequest:
    """Everything :func:`build_spec` needs; validated on construction.

    Host paths (``bundle_dir``, ``engine_dir``) must be absolute and normalised. ``env`` is the image
    config's ``Env``; ``extra_env`` comes from the engine (its flags as variables), and both are
    ``KEY=VALUE`` strings. ``devices`` are the resolved CDI edits, in the order to apply them.

    Raises:
        InvalidSandboxRequest: a field breaks a sandbox rule; ``.field`` names it.
    """

    args: tuple[str, ...]
    bundle_dir: str
    engine_dir: str
    memory_limit_bytes: int
    cgroups_path: str
    uid: int = 65532
    gid: int = 65532
    additional_gids: tuple[int, ...] = ()
    env: tuple[str, ...] = ()
    extra_env: tuple[str, ...] = ()
    cwd: str = "/tmp"
    hostname: str = "engine"
    pids_limit: int = 2048
    cpu: CpuLimits | None = None
    tmp_size_bytes: int = 256 * MIB
    tmp_noexec: bool = True
    shm_size_bytes: int = 64 * MIB
    # Raising the hard limit above containerd's own needs CAP_SYS_RESOURCE in runc, which some hosts
    # (and this project's CI VM, hard limit 20000) do not grant; 16384 is plenty for one engine.
    nofile: int = 16384
    oom_score_adj: int = 500
    devices: tuple[ContainerEdits, ...] = ()
    netns_path: str | None = None
    userns: UserNamespace | None = None
    architecture: str = HOST_ARCHITECTURE
    seccomp: SeccompProfile | None = None  # None: the shipped default profile
    annotations: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _validate(self)


def _check_id(fieldname: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise InvalidSandboxRequest(fieldname, f"must be an id in [0, {_MAX_ID}], got {value!r}")
    return value


def _check_positive(fieldname: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSandboxRequest(fieldname, f"must be an integer >= {minimum}, got {value!r}")


def _check_absolute(fieldname: str, path: object, *, host: bool) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise InvalidSandboxRequest(fieldname, f"must be an absolute path, got {path!r}")
    if posixpath.normpath(path) != path or "/../" in path + "/" or "/./" in path + "/":
        raise InvalidSandboxRequest(
            fieldname, f"must be normalised (no '.', '..', '//' or trailing '/'), got {path!r}"
        )
    if host and (path == "/" or path.split("/")[1] in ("proc", "sys", "dev")):
        raise InvalidSandboxRequest(
            fieldname, f"{path!r} would expose host system state to the engine; use a directory of its own"
        )
    return path


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _check_env(fieldname: str, entries: object) -> None:
    if not isinstance(entries, tuple):
        raise InvalidSandboxRequest(fieldname, "must be a tuple of 'KEY=VALUE' strings")
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry or "\x00" in entry:
            raise InvalidSandboxRequest(fieldname, f"{entry!r} is not a 'KEY=VALUE' string")
        if not _ENV_KEY.match(entry.split("=", 1)[0]):
            raise InvalidSandboxRequest(fieldname, f"{entry!r} has an empty variable name")


def _check_edits(request: SandboxRequest) -> None:
    if not isinstance(request.devices, tuple):
        raise InvalidSandboxRequest("devices", "must be a tuple of ContainerEdits")
    for edits in request.devices:
        if not isinstance(edits, ContainerEdits):
            raise InvalidSandboxRequest("devices", f"expected ContainerEdits, got {type(edits).__name__}")
        _check_env("devices", edits.env)
        for node in edits.device_nodes:
            _check_absolute("devices", node.path, host=False)
            if node.type not in ("c", "b", "u", "p"):
                raise InvalidSandboxRequest(
                    "devices", f"{edits.origin}: device type {node.type!r} is not c, b, u or p"
                )
            if not _PERMISSIONS.match(node.permissions):
                raise InvalidSandboxRequest(
                    "devices", f"{edits.origin}: permissions {node.permissions!r} must be a subset of 'rwm'"
                )
        for mount in edits.mounts:
            destination = _check_absolute("devices", mount.container_path, host=False)
            if (
                destination == "/"
                or destination in _SANDBOX_DESTINATIONS
                or _inside(destination, "/proc")
                or _inside(destination, "/sys")
            ):
                raise InvalidSandboxRequest(
                    "devices",
                    f"{edits.origin}: a device may not mount over {destination!r}, which the sandbox "
                    "itself provides; fix the CDI spec",
                )
            if not mount.host_path.startswith("/"):
                raise InvalidSandboxRequest(
                    "devices", f"{edits.origin}: mount source {mount.host_path!r} is not absolute"
                )
        for hook in edits.hooks:
            if hook.hook_name not in HOOK_NAMES:
                raise InvalidSandboxRequest(
                    "devices", f"{edits.origin}: unknown hook name {hook.hook_name!r}"
                )
            if not hook.path.startswith("/"):
                raise InvalidSandboxRequest(
                    "devices", f"{edits.origin}: hook path {hook.path!r} is not absolute"
                )
        for gid in edits.additional_gids:
            _check_id("devices", gid)


def _validate(r: SandboxRequest) -> None:
    if (
        not isinstance(r.args, tuple)
        or not r.args
        or not all(isinstance(a, str) and "\x00" not in a for a in r.args)
    ):
        raise InvalidSandboxRequest("args", "must be a non-empty tuple of strings without NUL bytes")
    bundle = _check_absolute("bundle_dir", r.bundle_dir, host=True)
    engine = _check_absolute("engine_dir", r.engine_dir, host=True)
    if _inside(bundle, engine) or _inside(engine, bundle):
        raise InvalidSandboxRequest(
            "engine_dir",
            f"{engine!r} and the bundle {bundle!r} overlap: the engine could write into the model "
            "store through its socket directory; give each runner a directory outside the store",
        )
    _check_absolute("cwd", r.cwd, host=False)
    if r.netns_path is not None:
        _check_absolute("netns_path", r.netns_path, host=False)
    _check_positive("memory_limit_bytes", r.memory_limit_bytes, 8 * MIB)
    _check_positive("pids_limit", r.pids_limit, 1)
    _check_positive("tmp_size_bytes", r.tmp_size_bytes, 1)
    _check_positive("shm_size_bytes", r.shm_size_bytes, 1)
    _check_positive("nofile", r.nofile, 16)
    if (
        isinstance(r.oom_score_adj, bool)
        or not isinstance(r.oom_score_adj, int)
        or not -1000 <= r.oom_score_adj <= 1000
    ):
        raise InvalidSandboxRequest("oom_score_adj", f"must be in [-1000, 1000], got {r.oom_score_adj!r}")
    if not isinstance(r.hostname, str) or not _HOSTNAME.match(r.hostname):
        raise InvalidSandboxRequest("hostname", f"{r.hostname!r} is not a valid host name label")
    if (
        not isinstance(r.cgroups_path, str)
        or not r.cgroups_path.startswith("/")
        or not all(
            _CGROUP_COMPONENT.match(part) and part not in (".", "..")
            for part in r.cgroups_path[1:].split("/")
        )
    ):
        raise InvalidSandboxRequest(
            "cgroups_path",
            f"must be an absolute cgroup path like '/modelrunner/<id>', got {r.cgroups_path!r}",
        )
    uid = _check_id("uid", r.uid)
    gid = _check_id("gid", r.gid)
    for extra in r.additional_gids:
        _check_id("additional_gids", extra)
    _check_env("env", r.env)
    _check_env("extra_env", r.extra_env)
    if r.cpu is not None:
        cpu = r.cpu
        if cpu.quota_us is not None:
            _check_positive("cpu", cpu.quota_us, 1000)
            _check_positive("cpu", cpu.period_us, 1000)
        if cpu.shares is not None:
            _check_positive("cpu", cpu.shares, 2)
        for value in (cpu.cpus, cpu.mems):
            if value is not None and not _CPUSET.match(value):
                raise InvalidSandboxRequest("cpu", f"cpuset {value!r} is not a list like '0-3,6'")
    if r.userns is None:
        # Without remapping, uid 0 in the container is root on the host: even with no capabilities
        # it owns every root-owned file the mounts expose.
        if uid == 0 or gid == 0:
            raise InvalidSandboxRequest(
                "uid" if uid == 0 else "gid",
                "the engine would run as host root; set a non-root USER in the engine image "
                "or enable user namespace remapping",
            )
    else:
        for m in (*r.userns.uid_mappings, *r.userns.gid_mappings):
            _check_id("userns", m.container_id)
            _check_id("userns", m.host_id)
            _check_positive("userns", m.size)
        if not r.userns.uid_mappings or not r.userns.gid_mappings:
            raise InvalidSandboxRequest("userns", "needs at least one uid and one gid mapping")
        if any(m.host_id == 0 for m in (*r.userns.uid_mappings, *r.userns.gid_mappings)):
            raise InvalidSandboxRequest("userns", "mapping onto host id 0 would defeat the remapping")
        if not r.userns.maps_uid(uid) or not r.userns.maps_gid(gid):
            raise InvalidSandboxRequest(
                "userns", f"the engine's uid {uid} / gid {gid} must be inside the mapping"
            )
    if not isinstance(r.annotations, tuple) or not all(
        isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
        for pair in r.annotations
    ):
        raise InvalidSandboxRequest("annotations", "must be a tuple of (key, value) string pairs")
    _check_edits(r)
    if r.userns is not None:
        for edits in r.devices:
            for node in edits.device_nodes:
                if node.host_path != node.path:
                    # runc cannot mknod inside a user namespace; it bind-mounts the host node found
                    # at the *container* path instead, which would be the wrong device here.
                    raise InvalidSandboxRequest(
                        "devices",
                        f"{edits.origin}: under user namespace remapping a device node must keep its host "
                        f"path ({node.host_path} is mapped to {node.path})",
                    )


def _merge_env(*groups: tuple[str, ...]) -> list[str]:
    # Later groups win. A duplicate key must not reach execve: glibc's getenv returns the first match
    # while other runtimes take the last, so the engine and its libraries could disagree.
    merged: dict[str, str] = {}
    for group in groups:
        for entry in group:
            key, value = entry.split("=", 1)
            merged[key] = value
    return [f"{key}={value}" for key, value in merged.items()]


def _mounts(r: SandboxRequest, devpts_gid: bool) -> list[dict[str, Any]]:
    devpts_options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if devpts_gid:
        devpts_options.append("gid=5")  # tty group, as on the host
    tmp_options = ["nosuid", "nodev", "mode=1777", f"size={r.tmp_size_bytes}"]
    if r.tmp_noexec:
        tmp_options.insert(2, "noexec")
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts_options},
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={r.shm_size_bytes}"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": tmp_options},
        {
            "destination": MODELS_DIR_IN_CONTAINER,
            "type": "bind",
            "source": r.bundle_dir,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"],
        },
        {
            "destination": ENGINE_DIR_IN_CONTAINER,
            "type": "bind",
            "source": r.engine_dir,
            "options": ["rbind", "rw", "nosuid", "nodev", "noexec", "rprivate"],
        },
    ]


def _device_to_oci(node: DeviceNode, uid: int, gid: int) -> dict[str, Any]:
    out: dict[str, Any] = {"path": node.path, "type": node.type}
    if node.type != "p":
        out["major"] = node.major
        out["minor"] = node.minor
    if node.file_mode is not None:
        out["fileMode"] = node.file_mode
    # As the CDI reference does: a node without an owner goes to the engine's user, so an
    # unprivileged engine can open it.
    owner_uid = node.uid if node.uid is not None else (uid if uid > 0 else None)
    owner_gid = node.gid if node.gid is not None else (gid if gid > 0 else None)
    if owner_uid is not None:
        out["uid"] = owner_uid
    if owner_gid is not None:
        out["gid"] = owner_gid
    return out


def _mount_to_oci(mount: EditMount) -> dict[str, Any]:
    out: dict[str, Any] = {"destination": mount.container_path, "source": mount.host_path}
    out["type"] = mount.type or "bind"
    if mount.options:
        out["options"] = list(mount.options)
    return out


def _hook_to_oci(hook: Hook) -> dict[str, Any]:
    out: dict[str, Any] = {"path": hook.path}
    if hook.args:
        out["args"] = list(hook.args)
    if hook.env:
        out["env"] = list(hook.env)
    if hook.timeout is not None:
        out["timeout"] = hook.timeout
    return out


def _depth(destination: str) -> int:
    return len([part for part in destination.split("/") if part])


def device_mount_points(request: SandboxRequest) -> tuple[str, ...]:
    """Destinations that the request's device edits mount (GPU driver libraries, for example).

    A read-only snapshot view cannot gain new mount points, so when this is not empty and the engine
    image does not already hold these paths, create the container on an active snapshot (Prepare):
    ``root.readonly`` stays true and the engine still cannot write to its root filesystem.
    """
    seen: dict[str, None] = {}
    for edits in request.devices:
        for mount in edits.mounts:
            seen.setdefault(mount.container_path, None)
    return tuple(seen)


def build_spec(request: SandboxRequest) -> dict[str, Any]:
    """The complete OCI runtime spec for ``request``: a JSON-ready dict, ``root.path == "rootfs"``.

    Pure: the same request gives the same dict, and nothing is read or written.

    Raises:
        InvalidSandboxRequest: the seccomp profile has no entry for ``request.architecture``.
    """
    r = request
    userns = r.userns
    uid, gid = r.uid, r.gid

    env = _merge_env(
        (f"PATH={DEFAULT_PATH}",),
        r.env,
        ("HOME=/tmp",),
        r.extra_env,
        *(edits.env for edits in r.devices),
    )
    additional_gids: list[int] = []
    for extra in (*r.additional_gids, *(g for edits in r.devices for g in edits.additional_gids)):
        if extra not in additional_gids and extra != gid:
            additional_gids.append(extra)
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional_gids:
        user["additionalGids"] = additional_gids

    process: dict[str, Any] = {
        "terminal": False,
        "user": user,
        "args": list(r.args),
        "env": env,
        "cwd": r.cwd,
        "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "hard": r.nofile, "soft": r.nofile},
            # No core dumps: a crashing engine would write model memory (and prompts) to disk.
            {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
        ],
        "noNewPrivileges": True,
        "oomScoreAdj": r.oom_score_adj,
    }

    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    namespaces.append({"type": "network", "path": r.netns_path} if r.netns_path else {"type": "network"})
    namespaces.append({"type": "cgroup"})
    if userns is not None:
        namespaces.append({"type": "user"})

    mounts = _mounts(r, devpts_gid=userns is None or userns.maps_gid(5))
    devices: list[dict[str, Any]] = []
    device_rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for kind, major, minor in _BASIC_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": kind, "major": major, "access": "rw"}
        if minor is not None:
            rule["minor"] = minor
        device_rules.append(rule)
    hooks: dict[str, list[dict[str, Any]]] = {}

    for edits in r.devices:
        for node in edits.device_nodes:
            devices = [d for d in devices if d["path"] != node.path]
            devices.append(_device_to_oci(node, uid, gid))
            if node.type in ("c", "b", "u") and node.permissions:
                device_rules.append(
                    {
                        "allow": True,
                        "type": "b" if node.type == "b" else "c",
                        "major": node.major,
                        "minor": node.minor,
                        "access": node.permissions,
                    }
                )
        for mount in edits.mounts:
            mounts = [m for m in mounts if m["destination"] != mount.container_path]
            mounts.append(_mount_to_oci(mount))
        for hook in edits.hooks:
            hooks.setdefault(hook.hook_name, []).append(_hook_to_oci(hook))
    # Parents before children, as the CDI reference sorts (stable, so the sandbox's order stays).
    mounts.sort(key=lambda m: _depth(m["destination"]))

    resources: dict[str, Any] = {
        "devices": device_rules,
        # swap is memory+swap on cgroup v1 (memsw): equal to the limit means no swap at all.
        "memory": {"limit": r.memory_limit_bytes, "swap": r.memory_limit_bytes, "disableOOMKiller": False},
        "pids": {"limit": r.pids_limit},
    }
    if r.cpu is not None and (cpu := r.cpu.to_oci()):
        resources["cpu"] = cpu

    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": r.cgroups_path,
        "rootfsPropagation": "rprivate",
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "seccomp": (r.seccomp or default_profile()).to_oci(r.architecture),
    }
    if devices:
        linux["devices"] = devices
    if userns is not None:
        linux["uidMappings"] = [m.to_oci() for m in userns.uid_mappings]
        linux["gidMappings"] = [m.to_oci() for m in userns.gid_mappings]
    rdt = next((e.intel_rdt for e in reversed(r.devices) if e.intel_rdt is not None), None)
    if rdt is not None:
        intel: dict[str, Any] = {}
        if rdt.clos_id is not None:
            intel["closID"] = rdt.clos_id
        if rdt.l3_cache_schema is not None:
            intel["l3CacheSchema"] = rdt.l3_cache_schema
        if rdt.mem_bw_schema is not None:
            intel["memBwSchema"] = rdt.mem_bw_schema
        if rdt.enable_cmt:
            intel["enableCMT"] = True
        if rdt.enable_mbm:
            intel["enableMBM"] = True
        linux["intelRdt"] = intel

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": True},
        "hostname": r.hostname,
        "mounts": mounts,
        "linux": linux,
    }
    if hooks:
        spec["hooks"] = hooks
    if r.annotations:
        spec["annotations"] = dict(r.annotations)
    return spec
