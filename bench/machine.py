"""What machine a benchmark ran on: CPU, cores, memory, kernel, and the versions of the real parts.

The parsers are pure (text in, values out); :func:`collect_machine_info` reads /proc and runs the
version commands once. A missing tool is reported as "unknown (...)" rather than failing the run:
the description is context for the numbers, not a precondition.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MachineInfo",
    "collect_machine_info",
    "parse_cpu_model",
    "parse_mem_total",
    "parse_os_release",
]


@dataclass(frozen=True, slots=True)
class MachineInfo:
    cpu_model: str
    cpus_online: int
    cpus_usable: int
    memory_bytes: int
    kernel: str
    os_name: str
    cgroup: str
    containerd: str
    runc: str
    llama_cpp: str
    python: str
    skopeo: str = ""

    def describe(self) -> list[str]:
        """One line per fact, for the report."""
        gib = self.memory_bytes / (1 << 30)
        cpus = f"{self.cpus_online} CPUs" + (
            f" ({self.cpus_usable} usable)" if self.cpus_usable != self.cpus_online else ""
        )
        lines = [
            f"CPU: {self.cpu_model}, {cpus}",
            f"RAM: {gib:.1f} GiB",
            f"OS: {self.os_name}, kernel {self.kernel}, {self.cgroup}",
            f"containerd {self.containerd}, runc {self.runc}",
            f"llama.cpp: {self.llama_cpp}",
            f"Python {self.python}",
        ]
        if self.skopeo:
            lines.append(f"skopeo {self.skopeo}")
        return lines


def parse_cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` in /proc/cpuinfo text ("unknown" if none)."""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def parse_mem_total(meminfo: str) -> int:
    """MemTotal from /proc/meminfo text, in bytes.

    Raises:
        ValueError: no MemTotal line.
    """
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB$", meminfo, re.MULTILINE)
    if not match:
        raise ValueError("no MemTotal line in /proc/meminfo")
    return int(match.group(1)) * 1024


def parse_os_release(text: str) -> str:
    """PRETTY_NAME from /etc/os-release text ("unknown" if none)."""
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def _first_line(command: list[str], pattern: str = r"(.+)") -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({command[0]}: {exc.__class__.__name__})"
    output = (proc.stdout + proc.stderr).strip()
    match = re.search(pattern, output)
    return match.group(1).strip() if match else f"unknown ({command[0]} printed {output[:60]!r})"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def collect_machine_info(llama_server: Path | None = None) -> MachineInfo:
    """Describe this machine; ``llama_server`` is the engine binary whose ``--version`` to record.

    Blocking (reads /proc, runs ``containerd --version`` and friends, each bounded to 10 s).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    cgroup = "cgroup v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "cgroup v1"
    if llama_server is not None:
        llama = _first_line([str(llama_server), "--version"], r"(version: .+)")
    else:
        llama = "not used"
    return MachineInfo(
        cpu_model=parse_cpu_model(_read("/proc/cpuinfo")),
        cpus_online=os.cpu_count() or 0,
        cpus_usable=usable,
        memory_bytes=parse_mem_total(_read("/proc/meminfo") or "MemTotal: 0 kB"),
        kernel=platform.release(),
        os_name=parse_os_release(_read("/etc/os-release")),
        cgroup=cgroup,
        containerd=_first_line(["containerd", "--version"], r"containerd \S+ (\S+)"),
        runc=_first_line(["runc", "--version"], r"runc version (\S+)"),
        llama_cpp=llama,
        python=sys.version.split()[0],
        skopeo=_first_line(["skopeo", "--version"], r"skopeo version (\S+)"),
    )
