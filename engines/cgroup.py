"""What a runner's memory cgroup says it uses (cgroup v1 and v2), and the task's own RSS.

Parsers are pure and take file text; ``read_cgroup_memory`` does the (tiny, blocking) reads.

Why two numbers. The cgroup charges a page to the cgroup that first faulted it in, so the model
file's page cache, already cached by whoever wrote or read it before, is often charged elsewhere
while the engine maps and uses it. The process RSS (``VmRSS``/``VmHWM``) counts every resident page
the engine maps, wherever it is charged. ``CgroupMemory.in_use`` takes the larger of the two so
neither blind spot under-reports a runner to the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CGROUP_ROOT",
    "CgroupMemory",
    "parse_memory_stat",
    "parse_proc_status_kib",
    "read_cgroup_memory",
    "write_memory_limit",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    usage: int | None  # bytes charged now (v1 usage_in_bytes, v2 memory.current)
    peak: int | None  # high-water mark of usage (v1 max_usage_in_bytes, v2 memory.peak)
    anon: int | None  # anonymous memory (v1 total_rss, v2 anon)
    mapped_file: int | None  # charged file pages mapped by the task
    rss: int | None = None  # VmRSS of the engine process
    rss_peak: int | None = None  # VmHWM of the engine process

    @property
    def in_use(self) -> int | None:
        values = [v for v in (self.usage, self.rss) if v is not None]
        return max(values) if values else None

    @property
    def in_use_peak(self) -> int | None:
        values = [v for v in (self.peak, self.rss_peak) if v is not None]
        return max(values) if values else None


def parse_memory_stat(text: str) -> dict[str, int]:
    """``memory.stat`` as a dict (lines of ``name value``; malformed lines are skipped)."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            stats[parts[0]] = int(parts[1])
    return stats


def parse_proc_status_kib(text: str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes (``VmRSS``, ``VmHWM``)."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == field:
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_cgroup_memory(cgroups_path: str, pid: int | None = None, root: Path = CGROUP_ROOT) -> CgroupMemory:
    """Read the memory numbers of the cgroup at ``cgroups_path`` (as given in the OCI spec, e.g.
    ``/modelrunner/<id>``) and, if ``pid`` is given, that process's RSS. Missing files give None
    (the task is gone, or the controller is not mounted); never raises for those."""
    relative = cgroups_path.lstrip("/")
    v1 = root / "memory" / relative
    v2 = root / relative
    usage = peak = anon = mapped = None
    if (v1 / "memory.usage_in_bytes").exists():
        usage = _read_int(v1 / "memory.usage_in_bytes")
        peak = _read_int(v1 / "memory.max_usage_in_bytes")
        stats = parse_memory_stat(_read_text(v1 / "memory.stat") or "")
        anon = stats.get("total_rss", stats.get("rss"))
        mapped = stats.get("total_mapped_file", stats.get("mapped_file"))
    elif (v2 / "memory.current").exists():
        usage = _read_int(v2 / "memory.current")
        peak = _read_int(v2 / "memory.peak")
        stats = parse_memory_stat(_read_text(v2 / "memory.stat") or "")
        anon = stats.get("anon")
        mapped = stats.get("file_mapped")
    rss = rss_peak = None
    if pid:
        status = _read_text(Path(f"/proc/{pid}/status")) or ""
        rss = parse_proc_status_kib(status, "VmRSS")
        rss_peak = parse_proc_status_kib(status, "VmHWM")
    return CgroupMemory(usage, peak, anon, mapped, rss, rss_peak)


def write_memory_limit(cgroups_path: str, limit: int, root: Path = CGROUP_ROOT) -> None:
    """Set the memory limit (swap included, so no swap) of a running task's cgroup (blocking).

    cgroup v1 needs ``memsw`` >= ``memory`` at every step, so the order depends on the direction;
    v2 takes ``memory.max`` and keeps ``memory.swap.max`` at 0.

    Raises:
        OSError: the cgroup is gone, or the kernel refused (v1 answers EBUSY when the new limit is
            below what the cgroup uses and nothing can be reclaimed).
    """
    relative = cgroups_path.lstrip("/")
    v1 = root / "memory" / relative
    if (v1 / "memory.limit_in_bytes").exists():
        memory, memsw = v1 / "memory.limit_in_bytes", v1 / "memory.memsw.limit_in_bytes"
        current = _read_int(memory) or 0
        order = [memsw, memory] if limit > current else [memory, memsw]
        for path in order:
            if path.exists():
                path.write_text(str(limit))
        return
    v2 = root / relative
    if (v2 / "memory.max").exists():
        (v2 / "memory.max").write_text(str(limit))
        return
    raise FileNotFoundError(f"no memory cgroup at {cgroups_path}")
