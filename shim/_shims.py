"""Find runc shims that containerd lost track of (host side).

If the client dies while containerd is inside ``Tasks.Create``, containerd cancels the call; when
that lands after the shim process was spawned but before containerd holds a handle on it, nobody
ever stops that shim (containerd 1.6 ``runtime/v2`` start path). Such a shim is invisible to the
API, so it can only be found among the host's processes: a ``containerd-shim-runc-v2`` whose
``-address`` is our containerd's socket and whose ``-namespace`` is ours, serving an ID that
``Tasks.List`` does not know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ShimProcess", "find_shims", "process_gone"]

SHIM_BINARY_SUFFIX = b"containerd-shim-runc-v2"


@dataclass(frozen=True, slots=True)
class ShimProcess:
    pid: int
    namespace: str
    container_id: str
    bundle: str  # the shim's working directory (its bundle), "" if unknown


def _flag(argv: list[bytes], name: bytes) -> str:
    try:
        return argv[argv.index(name) + 1].decode(errors="replace")
    except (ValueError, IndexError):
        return ""


def find_shims(
    address: str, namespace: str, proc: Path = Path("/proc"), *, starting: bool = False
) -> list[ShimProcess]:
    """Long-running runc shims of ``namespace`` serving the containerd at ``address``.

    With ``starting``, the short-lived ``start`` commands that spawn shims instead: one left running
    by a containerd that died can still spawn its shim a moment later.
    """
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(SHIM_BINARY_SUFFIX) or (b"start" in argv[1:]) != starting:
            continue
        if _flag(argv, b"-address") != address or _flag(argv, b"-namespace") != namespace:
            continue
        try:
            bundle = os.readlink(entry / "cwd")
        except OSError:
            bundle = ""
        found.append(ShimProcess(int(entry.name), namespace, _flag(argv, b"-id"), bundle))
    return found


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
