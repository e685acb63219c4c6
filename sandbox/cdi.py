"""GPUs (and other devices) as CDI device plugins, applied by modelrunner itself.

The Container Device Interface describes a device as edits to a container: device nodes, mounts,
environment variables and hooks. Vendors write the specs (``nvidia-ctk cdi generate`` writes
``/etc/cdi/nvidia.yaml``); a runtime that knows a fully-qualified name such as ``nvidia.com/gpu=0``
applies the edits. containerd 1.6 has no client-side CDI support, so modelrunner applies the edits to
the OCI spec itself, which works the same on 1.6, 1.7 and 2.x.

Split:

* pure: :func:`parse_device_name`, :func:`parse_cdi_spec` (a document in, a validated
  :class:`CDISpec` out);
* I/O, blocking but short (small files, ``stat``): :func:`load_cdi_spec_file`, :func:`discover_cdi`
  and :meth:`CDIRegistry.resolve`, which reads the host's device nodes to fill in their numbers.
  Call them from ``trio.to_thread.run_sync`` when on an event loop.

Rules followed (from the CDI specification): spec directories are searched in order and a later
directory overrides an earlier one; a spec's common ``containerEdits`` are applied once, before the
edits of the first requested device from that spec; a device node's missing type, major, minor and
mode are read from the host node.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from modelrunner.sandbox.edits import (
    HOOK_NAMES,
    ContainerEdits,
    DeviceNode,
    DeviceType,
    EditMount,
    Hook,
    HookName,
    IntelRdt,
)
from modelrunner.sandbox.errors import CDIDeviceNotFound, CDISpecError, CDIUnsupported, HostDeviceError

__all__ = [
    "DEFAULT_CDI_DIRS",
    "SUPPORTED_CDI_VERSIONS",
    "CDIDevice",
    "CDIDeviceNodeSpec",
    "CDIEditsSpec",
    "CDIRegistry",
    "CDISpec",
    "discover_cdi",
    "load_cdi_spec_file",
    "parse_cdi_spec",
    "parse_device_name",
]

# Later directories take priority, as in the CDI specification (/var/run/cdi holds generated specs).
DEFAULT_CDI_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
SUPPORTED_CDI_VERSIONS: tuple[str, ...] = (
    "0.3.0",
    "0.4.0",
    "0.5.0",
    "0.6.0",
    "0.7.0",
    "0.8.0",
    "1.0.0",
    "1.1.0",
)
_MAX_SPEC_BYTES = 16 * 1024 * 1024

_VENDOR = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
_CLASS = r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
_DEVICE = r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?"
_KIND_RE = re.compile(rf"^({_VENDOR})/({_CLASS})$")
_DEVICE_RE = re.compile(rf"^{_DEVICE}$")
_QUALIFIED_RE = re.compile(rf"^({_VENDOR}/{_CLASS})=({_DEVICE})$")
_PERMISSIONS_RE = re.compile(r"^r?w?m?$")
_DEVICE_TYPES: dict[str, DeviceType] = {"c": "c", "b": "b", "u": "u", "p": "p"}


@dataclass(frozen=True, slots=True)
class CDIDeviceNodeSpec:
    """A device node as the spec writes it; missing numbers are read from the host at resolve time."""

    path: str
    host_path: str | None = None
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    permissions: str | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class CDIEditsSpec:
    env: tuple[str, ...] = ()
    device_nodes: tuple[CDIDeviceNodeSpec, ...] = ()
    mounts: tuple[EditMount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: IntelRdt | None = None
    net_devices: tuple[str, ...] = ()  # host interface names; not supported (see resolve)

    def is_empty(self) -> bool:
        return not (
            self.env
            or self.device_nodes
            or self.mounts
            or self.hooks
            or self.additional_gids
            or self.intel_rdt
            or self.net_devices
        )


@dataclass(frozen=True, slots=True)
class CDIDevice:
    name: str
    edits: CDIEditsSpec
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CDISpec:
    source: str  # the file it came from (or a label for specs built in memory)
    version: str
    kind: str  # vendor/class, e.g. nvidia.com/gpu
    devices: tuple[CDIDevice, ...]
    edits: CDIEditsSpec = field(default_factory=CDIEditsSpec)
    annotations: tuple[tuple[str, str], ...] = ()
    priority: int = 0  # index of the spec directory; higher wins

    def device(self, name: str) -> CDIDevice | None:
        return next((d for d in self.devices if d.name == name), None)


def parse_device_name(qualified: str) -> tuple[str, str]:
    """Split ``vendor.com/class=name`` into ``("vendor.com/class", "name")``.

    Raises:
        CDIDeviceNotFound: the name is not a fully-qualified CDI device name.
    """
    match = _QUALIFIED_RE.match(qualified) if isinstance(qualified, str) else None
    if match is None:
        raise CDIDeviceNotFound(
            str(qualified),
            f"{qualified!r} is not a fully-qualified CDI device name; write it as vendor/class=device, "
            "for example nvidia.com/gpu=0, nvidia.com/gpu=all or nvidia.com/gpu=GPU-<uuid>",
        )
    return match.group(1), match.group(2)


# -- parsing (pure) ---------------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class _Parser:
    """Validates one spec document; every error names the file and the offending field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> CDISpecError:
        return CDISpecError(self.source, f"{where}: {message}")

    def string(self, raw: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.fail(where, f"'{key}' is required")
            return None
        if not isinstance(value, str) or "\x00" in value:
            raise self.fail(where, f"'{key}' must be a string")
        return value

    def integer(
        self, raw: Mapping[str, Any], key: str, where: str, low: int = 0, high: int = 2**32 - 1
    ) -> int | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"'{key}' must be an integer in [{low}, {high}], got {value!r}")
        return value

    def strings(self, raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = raw.get(key)
        if value is None:
            return ()
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or not all(isinstance(v, str) for v in value)
        ):
            raise self.fail(where, f"'{key}' must be a list of strings")
        return tuple(value)

    def mapping(self, raw: object, where: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(where, "must be a mapping")
        return raw

    def items(self, raw: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
        value = raw.get(key)
        if value is None:
            return []
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise self.fail(where, f"'{key}' must be a list")
        return [self.mapping(item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]

    def annotations(self, raw: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
        value = raw.get("annotations")
        if value is None:
            return ()
        value = self.mapping(value, f"{where}.annotations")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.fail(f"{where}.annotations", "keys and values must be strings")
        return tuple(sorted(value.items()))

    def absolute(self, value: str | None, where: str, key: str) -> str | None:
        if value is not None and not value.startswith("/"):
            raise self.fail(where, f"'{key}' must be an absolute path, got {value!r}")
        return value

    def device_node(self, raw: Mapping[str, Any], where: str) -> CDIDeviceNodeSpec:
        path = self.absolute(self.string(raw, "path", where, required=True), where, "path")
        assert path is not None
        kind = self.string(raw, "type", where)
        if kind is not None and kind not in ("c", "b", "u", "p"):
            raise self.fail(where, f"'type' must be one of c, b, u, p, got {kind!r}")
        permissions = self.string(raw, "permissions", where)
        if permissions is not None and not _PERMISSIONS_RE.match(permissions):
            raise self.fail(
                where, f"'permissions' must be a subset of 'rwm' in that order, got {permissions!r}"
            )
        return CDIDeviceNodeSpec(
            path=path,
            host_path=self.absolute(self.string(raw, "hostPath", where), where, "hostPath"),
            type=kind,
            major=self.integer(raw, "major", where),
            minor=self.integer(raw, "minor", where),
            file_mode=self.integer(raw, "fileMode", where, 0, 0o7777),
            permissions=permissions,
            uid=self.integer(raw, "uid", where, 0, 2**32 - 2),
            gid=self.integer(raw, "gid", where, 0, 2**32 - 2),
        )

    def mount(self, raw: Mapping[str, Any], where: str) -> EditMount:
        host_path = self.string(raw, "hostPath", where, required=True)
        container_path = self.absolute(
            self.string(raw, "containerPath", where, required=True), where, "containerPath"
        )
        assert host_path is not None and container_path is not None
        return EditMount(
            host_path=host_path,
            container_path=container_path,
            type=self.string(raw, "type", where) or "bind",
            options=self.strings(raw, "options", where),
        )

    def hook(self, raw: Mapping[str, Any], where: str) -> Hook:
        name = self.string(raw, "hookName", where, required=True)
        if name not in HOOK_NAMES:
            raise self.fail(where, f"'hookName' must be one of {', '.join(HOOK_NAMES)}, got {name!r}")
        hook_name: HookName = name  # checked just above
        path = self.absolute(self.string(raw, "path", where, required=True), where, "path")
        assert path is not None
        return Hook(
            hook_name=hook_name,
            path=path,
            args=self.strings(raw, "args", where),
            env=self.strings(raw, "env", where),
            timeout=self.integer(raw, "timeout", where, 1, 2**31 - 1),
        )

    def intel_rdt(self, raw: object, where: str) -> IntelRdt | None:
        if raw is None:
            return None
        rdt = self.mapping(raw, where)
        return IntelRdt(
            clos_id=self.string(rdt, "closID", where),
            l3_cache_schema=self.string(rdt, "l3CacheSchema", where),
            mem_bw_schema=self.string(rdt, "memBwSchema", where),
            enable_cmt=bool(rdt.get("enableCMT", False)),
            enable_mbm=bool(rdt.get("enableMBM", False)),
        )

    def edits(self, raw: object, where: str) -> CDIEditsSpec:
        if raw is None:
            return CDIEditsSpec()
        edits = self.mapping(raw, where)
        env = self.strings(edits, "env", where)
        for entry in env:
            if "=" not in entry or entry.startswith("="):
                raise self.fail(f"{where}.env", f"{entry!r} is not KEY=VALUE")
        gids = edits.get("additionalGids") or []
        if not isinstance(gids, Sequence) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g <= 2**32 - 2 for g in gids
        ):
            raise self.fail(f"{where}.additionalGids", "must be a list of group ids")
        net_devices = tuple(
            self.string(nd, "hostInterfaceName", f"{where}.netDevices[{i}]", required=True) or ""
            for i, nd in enumerate(self.items(edits, "netDevices", where))
        )
        return CDIEditsSpec(
            env=env,
            device_nodes=tuple(
                self.device_node(node, f"{where}.deviceNodes[{i}]")
                for i, node in enumerate(self.items(edits, "deviceNodes", where))
            ),
            mounts=tuple(
                self.mount(m, f"{where}.mounts[{i}]")
                for i, m in enumerate(self.items(edits, "mounts", where))
            ),
            hooks=tuple(
                self.hook(h, f"{where}.hooks[{i}]") for i, h in enumerate(self.items(edits, "hooks", where))
            ),
            additional_gids=tuple(gids),
            intel_rdt=self.intel_rdt(edits.get("intelRdt"), f"{where}.intelRdt"),
            net_devices=net_devices,
        )


def parse_cdi_spec(doc: object, source: str, *, priority: int = 0) -> CDISpec:
    """Validate a decoded CDI spec document (YAML or JSON) from ``source``.

    Unknown fields are ignored, so specs written for a newer minor version still load; a
    ``cdiVersion`` newer than :data:`SUPPORTED_CDI_VERSIONS` is refused.

    Raises:
        CDISpecError: the document does not follow the CDI format; the message names the field.
    """
    p = _Parser(source)
    raw = p.mapping(doc, "document")
    version = p.string(raw, "cdiVersion", "document", required=True)
    assert version is not None
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise p.fail("cdiVersion", f"{version!r} is not a semantic version")
    if version not in SUPPORTED_CDI_VERSIONS:
        newest = SUPPORTED_CDI_VERSIONS[-1]
        hint = (
            f"newer than the newest supported ({newest})"
            if _version_key(version) > _version_key(newest)
            else "unknown"
        )
        raise p.fail("cdiVersion", f"{version} is {hint}; regenerate the spec (nvidia-ctk cdi generate)")
    kind = p.string(raw, "kind", "document", required=True)
    assert kind is not None
    if not _KIND_RE.match(kind):
        raise p.fail("kind", f"{kind!r} is not vendor/class (e.g. nvidia.com/gpu)")
    devices: list[CDIDevice] = []
    for i, raw_device in enumerate(p.items(raw, "devices", "document")):
        where = f"devices[{i}]"
        name = p.string(raw_device, "name", where, required=True)
        assert name is not None
        if not _DEVICE_RE.match(name):
            raise p.fail(where, f"device name {name!r} may only hold letters, digits, '_', '-', '.' and ':'")
        if any(d.name == name for d in devices):
            raise p.fail(where, f"device {name!r} is defined twice")
        edits = p.edits(raw_device.get("containerEdits"), f"{where}.containerEdits")
        devices.append(CDIDevice(name=name, edits=edits, annotations=p.annotations(raw_device, where)))
    if not devices:
        raise p.fail("devices", "a spec must define at least one device")
    return CDISpec(
        source=source,
        version=version,
        kind=kind,
        devices=tuple(devices),
        edits=p.edits(raw.get("containerEdits"), "containerEdits"),
        annotations=p.annotations(raw, "document"),
        priority=priority,
    )


# -- I/O ----------------------------------------------------------------------------------------------


def load_cdi_spec_file(path: str | os.PathLike[str], *, priority: int = 0) -> CDISpec:
    """Read and validate one spec file: ``.json`` as JSON, ``.yaml``/``.yml`` as YAML (blocking).

    Raises:
        CDISpecError: the file cannot be read, is too large, or is not a valid CDI spec.
    """
    source = os.fspath(path)
    suffix = Path(source).suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise CDISpecError(source, "a CDI spec file must end in .json, .yaml or .yml")
    try:
        with open(source, "rb") as f:
            data = f.read(_MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise CDISpecError(source, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > _MAX_SPEC_BYTES:
        raise CDISpecError(source, f"larger than {_MAX_SPEC_BYTES} bytes; refusing to parse")
    try:
        doc = json.loads(data) if suffix == ".json" else yaml.safe_load(data)
    except (ValueError, yaml.YAMLError) as exc:
        raise CDISpecError(source, f"not valid {'JSON' if suffix == '.json' else 'YAML'}: {exc}") from exc
    return parse_cdi_spec(doc, source, priority=priority)


def _spec_files(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CDISpecError(directory, f"cannot list the spec directory: {exc.strerror or exc}") from exc
    return [
        os.path.join(directory, name)
        for name in names
        if Path(name).suffix.lower() in (".json", ".yaml", ".yml") and not name.startswith(".")
    ]


def discover_cdi(dirs: Iterable[str] = DEFAULT_CDI_DIRS) -> CDIRegistry:
    """Load every CDI spec in ``dirs`` (missing directories are fine; blocking).

    A broken file does not hide the others: it is kept in :attr:`CDIRegistry.errors`, and asking
    for one of its devices says which file failed and why.
    """
    specs: list[CDISpec] = []
    errors: list[CDISpecError] = []
    for priority, directory in enumerate(dirs):
        try:
            files = _spec_files(directory)
        except CDISpecError as exc:
            errors.append(exc)
            continue
        for path in files:
            try:
                specs.append(load_cdi_spec_file(path, priority=priority))
            except CDISpecError as exc:
                errors.append(exc)
    return CDIRegistry(specs=tuple(specs), errors=tuple(errors))


StatFn = Callable[[str], os.stat_result]


@dataclass(frozen=True, slots=True)
class CDIRegistry:
    """The specs found on this host, and the files that failed to load."""

    specs: tuple[CDISpec, ...]
    errors: tuple[CDISpecError, ...] = ()

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({spec.kind for spec in self.specs}))

    def device_names(self) -> tuple[str, ...]:
        """Every fully-qualified device name, sorted."""
        return tuple(sorted({f"{spec.kind}={device.name}" for spec in self.specs for device in spec.devices}))

    def find(self, qualified: str) -> tuple[CDISpec, CDIDevice]:
        """The spec and device behind ``qualified`` (the highest-priority definition).

        A name not defined as written may be a bare UUID: ``nvidia.com/gpu=<uuid>`` then matches the
        device nvidia-ctk names ``GPU-<uuid>`` (or ``MIG-<uuid>``).

        Raises:
            CDIDeviceNotFound: no spec defines it, or two specs at the same priority both do.
        """
        kind, name = parse_device_name(qualified)
        of_kind = [spec for spec in self.specs if spec.kind == kind]
        if not of_kind:
            raise CDIDeviceNotFound(qualified, f"no CDI spec defines kind {kind!r}{self._context()}")
        for candidate in (name, f"GPU-{name}", f"MIG-{name}"):
            found = [(spec, device) for spec in of_kind if (device := spec.device(candidate)) is not None]
            if not found:
                continue
            top = max(spec.priority for spec, _ in found)
            winners = [(spec, device) for spec, device in found if spec.priority == top]
            if len(winners) > 1:
                files = ", ".join(spec.source for spec, _ in winners)
                raise CDIDeviceNotFound(
                    qualified, f"{kind}={candidate} is defined by more than one spec ({files}); remove one"
                )
            return winners[0]
        known = ", ".join(sorted(device.name for spec in of_kind for device in spec.devices))
        raise CDIDeviceNotFound(qualified, f"{kind} has no device {name!r} (known: {known}){self._context()}")

    def _context(self) -> str:
        if not self.errors:
            return ""
        return "; these spec files failed to load: " + "; ".join(str(e) for e in self.errors)

    def resolve(self, names: Iterable[str], *, stat_path: StatFn = os.stat) -> tuple[ContainerEdits, ...]:
        """Turn requested device names into edits for :class:`~modelrunner.sandbox.spec.SandboxRequest`.

        Edits come in application order: for each spec, its common edits once (before its first
        requested device), then each device's own. Repeated names are applied once. Device nodes get
        their type, numbers and mode from the host node (``stat_path``, blocking).

        Raises:
            CDIDeviceNotFound: a name is malformed or no spec defines it.
            HostDeviceError: a device node the spec names is missing on the host or not a device.
            CDIUnsupported: the device needs network-device edits, which runc 1.1 cannot apply.
        """
        out: list[ContainerEdits] = []
        applied_specs: set[str] = set()
        seen: set[tuple[str, str]] = set()
        for qualified in names:
            spec, device = self.find(qualified)
            if (spec.source, device.name) in seen:
                continue
            seen.add((spec.source, device.name))
            if spec.source not in applied_specs:
                applied_specs.add(spec.source)
                if not spec.edits.is_empty():
                    out.append(_resolve_edits(spec.edits, f"{spec.kind} ({spec.source})", stat_path))
            out.append(_resolve_edits(device.edits, f"{spec.kind}={device.name} ({spec.source})", stat_path))
        return tuple(out)


def _resolve_node(node: CDIDeviceNodeSpec, origin: str, stat_path: StatFn) -> DeviceNode:
    host_path = node.host_path or node.path
    kind, major, minor, mode = node.type, node.major, node.minor, node.file_mode
    needs_host = kind is None or mode is None or (kind != "p" and (major is None or minor is None))
    if needs_host:
        try:
            st = stat_path(host_path)
        except FileNotFoundError as exc:
            raise HostDeviceError(
                host_path, f"does not exist (needed by {origin}); is the driver loaded?"
            ) from exc
        except OSError as exc:
            raise HostDeviceError(
                host_path, f"cannot stat: {exc.strerror or exc} (needed by {origin})"
            ) from exc
        if stat.S_ISCHR(st.st_mode):
            host_kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            host_kind = "b"
        elif stat.S_ISFIFO(st.st_mode):
            host_kind = "p"
        else:
            raise HostDeviceError(host_path, f"is not a device node or FIFO (needed by {origin})")
        if kind is None:
            kind = host_kind
        elif (kind in ("c", "u")) != (host_kind == "c") or (kind == "b") != (host_kind == "b"):
            raise HostDeviceError(host_path, f"{origin} says type {kind!r}, the host node is {host_kind!r}")
        if major is None:
            major = os.major(st.st_rdev)
        if minor is None:
            minor = os.minor(st.st_rdev)
        if mode is None:
            mode = stat.S_IMODE(st.st_mode)
    device_type = _DEVICE_TYPES.get(kind or "")
    if device_type is None:  # parse_cdi_spec already refused other types
        raise HostDeviceError(host_path, f"{origin}: unknown device type {kind!r}")
    return DeviceNode(
        path=node.path,
        host_path=host_path,
        type=device_type,
        major=major or 0,
        minor=minor or 0,
        file_mode=mode,
        permissions="rwm" if node.permissions is None else node.permissions,
        uid=node.uid,
        gid=node.gid,
    )


def _resolve_edits(edits: CDIEditsSpec, origin: str, stat_path: StatFn) -> ContainerEdits:
    if edits.net_devices:
        raise CDIUnsupported(
            f"{origin} moves host network interfaces ({', '.join(edits.net_devices)}) into the "
            "container; engines get no network devices, so this device cannot be granted"
        )
    return ContainerEdits(
        origin=origin,
        env=edits.env,
        device_nodes=tuple(_resolve_node(node, origin, stat_path) for node in edits.device_nodes),
        mounts=edits.mounts,
        hooks=edits.hooks,
        additional_gids=edits.additional_gids,
        intel_rdt=edits.intel_rdt,
    )
