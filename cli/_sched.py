"""Ask Linux to run the daemon's event loop as soon as it wakes, even while engines compute.

The proxy does a few hundred microseconds of work per request, and every hop waits for a CPU:
the client's request arriving, the engine's answer arriving. With llama.cpp's threads busy on every
core, the kernel's EEVDF scheduler (Linux 6.6+) lets a woken task preempt a running one only if its
deadline is earlier, and from 6.12 a task can ask for a shorter slice (`sched_attr.sched_runtime`
for SCHED_OTHER) to get one. Measured on a 2-vCPU host with the engine's two threads busy: the
daemon's added p50 latency for a tiny chat fell from 1.38 ms to 0.76 ms with a 100 µs slice
(rounds alternating on one daemon).

Only the calling thread gets it: `SCHED_FLAG_RESET_ON_FORK` gives every thread and process it
starts afterwards the normal slice, so containerd, shims and engines are never affected. Older
kernels ignore the field; a refusal is reported, never raised.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = ["DEFAULT_SLICE_NS", "current_slice_ns", "request_short_slice"]

DEFAULT_SLICE_NS = 100_000
"""The smallest slice the kernel accepts (0.1 ms)."""

_SCHED_OTHER = 0
_SCHED_FLAG_RESET_ON_FORK = 0x01
# struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority, runtime, deadline,
# period, util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr


def _syscalls() -> tuple[int, int] | None:
    return _SYSCALLS.get(platform.machine())


def request_short_slice(slice_ns: int = DEFAULT_SLICE_NS) -> str | None:
    """Give the calling thread a `slice_ns` scheduler slice, keeping its nice value.

    Returns None when the kernel took it, else why not (for the log).
    """
    numbers = _syscalls()
    if numbers is None:
        return f"not supported on {platform.machine()}"
    attr = _ATTR.pack(
        _ATTR.size, _SCHED_OTHER, _SCHED_FLAG_RESET_ON_FORK, os.nice(0), 0, slice_ns, 0, 0, 0, 0
    )
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(attr, _ATTR.size)
    if libc.syscall(numbers[0], 0, buffer, 0) != 0:
        errno = ctypes.get_errno()
        return f"sched_setattr: {os.strerror(errno)}"
    return None


def current_slice_ns(tid: int = 0) -> int | None:
    """The slice a thread (or process, by its main thread's id; 0 = the caller) runs with, or None
    when it cannot be read."""
    numbers = _syscalls()
    if numbers is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(numbers[1], tid, buffer, _ATTR.size, 0) != 0:
        return None
    return int(_ATTR.unpack(buffer.raw)[5])
