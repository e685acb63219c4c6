"""The memory budget per device: configured, or detected from the host minus a margin.

Host RAM: ``MemAvailable`` from ``/proc/meminfo``, lowered to what the daemon's own cgroup still
allows when it has a memory limit (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``), so a daemon
run in a container with ``--memory`` does not promise engines more than its limit. GPUs: free VRAM
per device from sandbox/'s inventory (NVML, else ``nvidia-smi``). Memory that re-adopted runners
already use is added back, because it is missing from "available" but is theirs to keep. A margin
(1 GiB by default, llama.cpp's ``--fit-target``) is held back on each detected device.

Reading ``/proc`` and ``/sys`` is blocking but tiny; the parsers are pure and take the file text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from modelrunner.sandbox.gpus import GpuDevice, GpuInventory
from modelrunner.scheduler._units import RAM

__all__ = [
    "cgroup_memory_headroom",
    "compute_budget",
    "gpu_ledger_device",
    "host_available_memory",
    "parse_meminfo_available",
]

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large means unlimited.
_UNLIMITED = 1 << 60


def gpu_ledger_device(gpu: GpuDevice) -> str:
    """Ledger device name of a GPU: ``cuda:<NVML index>`` (the index CDI names it by)."""
    return f"cuda:{gpu.index}"


def parse_meminfo_available(text: str) -> int:
    """``MemAvailable`` in bytes from ``/proc/meminfo`` text.

    Raises:
        ValueError: the field is missing or malformed.
    """
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "MemAvailable":
            fields = rest.split()
            if not fields:
                break
            value = int(fields[0])
            unit = fields[1].lower() if len(fields) > 1 else "b"
            return value * (1024 if unit == "kb" else 1)
    raise ValueError("no MemAvailable line in /proc/meminfo")


def _cgroup_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory-controller path) of this process from ``/proc/self/cgroup``."""
    v2 = v1 = None
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def cgroup_memory_headroom(
    proc_self_cgroup: str, cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes this process's cgroup may still allocate (limit - usage), or None when unlimited.

    Walks from the process's cgroup up to the root and takes the tightest limit, as the kernel does.
    """
    v2, v1 = _cgroup_paths(proc_self_cgroup)
    candidates: list[tuple[Path, str, str]] = []
    if v1 is not None:
        candidates.append((cgroup_root / "memory", v1, "v1"))
    if v2 is not None:
        candidates.append((cgroup_root, v2, "v2"))
    best: int | None = None
    for base, relative, version in candidates:
        node = Path(relative.lstrip("/"))
        while True:
            directory = base / node
            if version == "v1":
                limit = _read_int(directory / "memory.limit_in_bytes")
                usage = _read_int(directory / "memory.usage_in_bytes")
            else:
                limit = _read_int(directory / "memory.max")
                usage = _read_int(directory / "memory.current")
            if limit is not None:
                headroom = max(0, limit - (usage or 0))
                best = headroom if best is None else min(best, headroom)
            if node == Path(".") or str(node) == "":
                break
            node = node.parent
    return best


def host_available_memory(
    proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """Bytes of host RAM available to new engines now (blocking, fast).

    Raises:
        OSError / ValueError: ``/proc/meminfo`` is unreadable.
    """
    available = parse_meminfo_available((proc / "meminfo").read_text())
    try:
        own = (proc / "self" / "cgroup").read_text()
    except OSError:
        return available
    headroom = cgroup_memory_headroom(own, cgroup_root)
    return available if headroom is None else min(available, headroom)


def compute_budget(
    *,
    configured: Mapping[str, int] | None,
    host_available: int | None,
    gpus: GpuInventory | None,
    margin: int,
    adopted_usage: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The ledger budget per device.

    Devices named in ``configured`` take that value as is (the operator said how much engines may
    use). Every other device is detected: what is available now, plus what adopted runners already
    use on it, minus ``margin``, never below 0. ``host_available`` None means RAM is not detected
    (then ``configured`` must name it, or RAM gets a budget of 0).
    """
    adopted = dict(adopted_usage or {})
    budget: dict[str, int] = {}
    if host_available is not None:
        budget[RAM] = max(0, host_available + adopted.get(RAM, 0) - margin)
    for gpu in gpus.devices if gpus is not None else ():
        device = gpu_ledger_device(gpu)
        budget[device] = max(0, gpu.free_bytes + adopted.get(device, 0) - margin)
    for device, size in (configured or {}).items():
        budget[device] = size
    budget.setdefault(RAM, 0)
    return budget

