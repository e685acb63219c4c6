"""GPU inventory for the scheduler's memory ledger: which GPUs exist, their total and free VRAM.

Probes in order, stopping at the first that answers:

1. NVML through ``pynvml`` (package ``nvidia-ml-py``, the ``gpu`` extra), when it imports and the
   driver's ``libnvidia-ml.so`` loads;
2. ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader,nounits``;
3. nothing: the host is CPU only, and :attr:`GpuInventory.notes` says why each probe gave up, so
   ``modelrunner status`` can tell "no GPU" from "driver broken" from "tool missing".

Parsing of ``nvidia-smi`` output and of NVML answers is pure; only :func:`discover_gpus` does I/O.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio

__all__ = [
    "NVIDIA_SMI_QUERY",
    "GpuDevice",
    "GpuInventory",
    "GpuSource",
    "discover_gpus",
    "inventory_from_nvml",
    "parse_nvidia_smi_csv",
]

GpuSource = Literal["nvml", "nvidia-smi", "none"]
NVIDIA_SMI_QUERY: tuple[str, ...] = ("index", "uuid", "name", "memory.total", "memory.free")
_MIB = 1024 * 1024
_GIB = 1024 * _MIB


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int  # NVML index (PCI bus order), the same index nvidia-ctk names CDI devices by
    uuid: str  # e.g. GPU-8f6a...
    name: str  # e.g. NVIDIA H200
    total_bytes: int
    free_bytes: int

    @property
    def cdi_name(self) -> str:
        """The CDI device that grants this GPU (``nvidia.com/gpu=<index>``, as nvidia-ctk writes it)."""
        return f"nvidia.com/gpu={self.index}"

    @property
    def cdi_uuid_name(self) -> str:
        return f"nvidia.com/gpu={self.uuid}"


@dataclass(frozen=True, slots=True)
class GpuInventory:
    devices: tuple[GpuDevice, ...]
    source: GpuSource
    notes: tuple[str, ...] = ()  # why a probe was skipped or failed
    driver_version: str | None = None

    @property
    def cpu_only(self) -> bool:
        return not self.devices

    def summary(self) -> str:
        """One line for logs and ``status`` output."""
        if self.cpu_only:
            reasons = "; ".join(self.notes) or "no probe found a GPU"
            return f"CPU only: no NVIDIA GPU found ({reasons})"
        parts = ", ".join(
            f"{d.index}: {d.name} {d.total_bytes / _GIB:.1f} GiB ({d.free_bytes / _GIB:.1f} GiB free)"
            for d in self.devices
        )
        driver = f", driver {self.driver_version}" if self.driver_version else ""
        plural = "s" if len(self.devices) != 1 else ""
        return f"{len(self.devices)} NVIDIA GPU{plural} via {self.source}{driver}: {parts}"


class _ProbeFailed(Exception):
    pass


def _mib(value: str, what: str, line: int) -> int:
    try:
        number = float(value)
    except ValueError:
        raise _ProbeFailed(f"line {line}: {what} is {value!r}, not a number of MiB") from None
    if not math.isfinite(number) or number < 0:
        raise _ProbeFailed(f"line {line}: {what} is {value!r}")
    return int(number * _MIB)


def parse_nvidia_smi_csv(text: str) -> tuple[GpuDevice, ...]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free
    --format=csv,noheader,nounits`` output (memory in MiB).

    Raises:
        ValueError: a line does not have the queried fields, or memory is not a number (for
            example ``[N/A]``); the message names the line.
    """
    devices: list[GpuDevice] = []
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    for number, row in enumerate(reader, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(NVIDIA_SMI_QUERY):
            raise ValueError(
                f"nvidia-smi line {number}: expected {len(NVIDIA_SMI_QUERY)} fields, got {row!r}"
            )
        index, uuid, name, total, free = (cell.strip() for cell in row)
        if not index.isdigit():
            raise ValueError(f"nvidia-smi line {number}: index {index!r} is not a number")
        try:
            devices.append(
                GpuDevice(
                    index=int(index),
                    uuid=uuid,
                    name=name,
                    total_bytes=_mib(total, "memory.total", number),
                    free_bytes=_mib(free, "memory.free", number),
                )
            )
        except _ProbeFailed as exc:
            raise ValueError(f"nvidia-smi {exc}") from None
    return tuple(devices)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def inventory_from_nvml(nvml: Any) -> GpuInventory:
    """Query NVML through the ``pynvml`` module ``nvml`` (blocking, fast).

    Raises:
        Exception: whatever NVML raises (``pynvml.NVMLError`` subclasses); :func:`discover_gpus`
            turns it into a note and tries the next probe.
    """
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                GpuDevice(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(memory.total),
                    free_bytes=int(memory.free),
                )
            )
    finally:
        nvml.nvmlShutdown()
    return GpuInventory(devices=tuple(devices), source="nvml", driver_version=driver)


def _import_pynvml() -> Any:
    import pynvml  # the optional `gpu` extra (nvidia-ml-py)

    return pynvml


async def discover_gpus(
    *, use_nvml: bool = True, nvidia_smi: str = "nvidia-smi", nvml_module: Any = None
) -> GpuInventory:
    """Find the host's NVIDIA GPUs: NVML, else ``nvidia-smi``, else CPU only (never raises for a
    missing GPU, driver or tool; the reasons land in :attr:`GpuInventory.notes`).

    ``nvidia_smi`` is a command name looked up on PATH or an absolute path; ``nvml_module`` replaces
    ``pynvml`` (tests). A checkpoint; the caller sets the deadline (``nvidia-smi`` can hang on a
    wedged driver), and cancellation kills ``nvidia-smi``.
    """
    notes: list[str] = []
    if use_nvml:
        try:
            module = nvml_module if nvml_module is not None else _import_pynvml()
        except ImportError:
            notes.append("NVML: nvidia-ml-py is not installed (pip install 'modelrunner[gpu]')")
        else:
            try:
                inventory = await trio.to_thread.run_sync(inventory_from_nvml, module)
            except Exception as exc:  # NVMLError has a subclass per error code; all mean "no answer"
                notes.append(f"NVML: {exc or type(exc).__name__}")
            else:
                if inventory.devices:
                    return inventory
                notes.append("NVML: the driver reports no GPU")
    executable = shutil.which(nvidia_smi)
    if executable is None:
        notes.append(f"nvidia-smi: {nvidia_smi!r} not found")
        return GpuInventory(devices=(), source="none", notes=tuple(notes))
    args: Sequence[str] = [
        executable,
        f"--query-gpu={','.join(NVIDIA_SMI_QUERY)}",
        "--format=csv,noheader,nounits",
    ]
    try:
        result = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    except OSError as exc:
        notes.append(f"nvidia-smi: cannot run {executable}: {exc.strerror or exc}")
        return GpuInventory(devices=(), source="none", notes=tuple(notes))
    stdout = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        message = (result.stderr.decode("utf-8", "replace") or stdout).strip().splitlines()
        detail = message[0] if message else "no output"
        notes.append(f"nvidia-smi: exit status {result.returncode}: {detail}")
        return GpuInventory(devices=(), source="none", notes=tuple(notes))
    try:
        devices = parse_nvidia_smi_csv(stdout)
    except ValueError as exc:
        notes.append(str(exc))
        return GpuInventory(devices=(), source="none", notes=tuple(notes))
    if not devices:
        notes.append("nvidia-smi: lists no GPU")
        return GpuInventory(devices=(), source="none", notes=tuple(notes))
    return GpuInventory(devices=devices, source="nvidia-smi", notes=tuple(notes))
