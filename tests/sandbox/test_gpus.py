"""GPU inventory: NVML, then nvidia-smi, then CPU only with the reasons spelled out.

This machine has no GPU. The real probes run and must report CPU only with their reasons; the
success paths run against a stand-in `nvidia-smi` script (the real CSV format) and a stand-in NVML
module with pynvml's function names, since no NVIDIA driver can answer here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from modelrunner.sandbox import GpuInventory, discover_gpus, parse_nvidia_smi_csv
from modelrunner.sandbox.gpus import inventory_from_nvml

MIB = 1024 * 1024
# What `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader,nounits`
# prints on a two-GPU host.
SMI_OUTPUT = (
    "0, GPU-8f6a2c1e-7d1b-4c3e-9a55-0123456789ab, NVIDIA H200, 143771, 143252\n"
    "1, GPU-00000000-1111-2222-3333-444444444444, NVIDIA GeForce RTX 4090, 24564, 1024\n"
)


def test_parse_nvidia_smi_csv() -> None:
    first, second = parse_nvidia_smi_csv(SMI_OUTPUT)
    assert first.index == 0
    assert first.uuid == "GPU-8f6a2c1e-7d1b-4c3e-9a55-0123456789ab"
    assert first.name == "NVIDIA H200"
    assert first.total_bytes == 143771 * MIB
    assert first.free_bytes == 143252 * MIB
    assert first.cdi_name == "nvidia.com/gpu=0"
    assert second.cdi_uuid_name == "nvidia.com/gpu=GPU-00000000-1111-2222-3333-444444444444"
    assert parse_nvidia_smi_csv("\n\n") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0, GPU-x, NVIDIA A100, [N/A], 100\n", "memory.total"),
        ("0, GPU-x, NVIDIA A100, 100\n", "expected 5 fields"),
        ("zero, GPU-x, NVIDIA A100, 100, 100\n", "index"),
        ("0, GPU-x, NVIDIA A100, 100, -1\n", "memory.free"),
    ],
)
def test_parse_nvidia_smi_csv_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_nvidia_smi_csv("0, GPU-ok, NVIDIA A100, 100, 100\n" + text)
    assert "line 2" in str(info.value)


def fake_smi(tmp_path: Path, body: str) -> str:
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


async def test_this_host_is_cpu_only_and_says_why(tmp_path: Path) -> None:
    inventory = await discover_gpus(nvidia_smi=str(tmp_path / "no-such-nvidia-smi"))
    assert inventory.cpu_only
    assert inventory.source == "none"
    if importlib.util.find_spec("pynvml") is None:
        assert "nvidia-ml-py is not installed" in inventory.notes[0]
    else:
        assert inventory.notes[0].startswith("NVML: "), inventory.notes
        assert "Not Found" in inventory.notes[0] or "not found" in inventory.notes[0]
    assert "not found" in inventory.notes[-1]
    assert inventory.summary().startswith("CPU only: no NVIDIA GPU found (NVML: ")


async def test_nvidia_smi_fallback(tmp_path: Path) -> None:
    smi = fake_smi(
        tmp_path,
        f"""
case "$*" in
  "--query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader,nounits")
    printf '{SMI_OUTPUT}' ;;
  *) echo "unexpected arguments: $*" >&2; exit 2 ;;
esac
""",
    )
    inventory = await discover_gpus(use_nvml=False, nvidia_smi=smi)
    assert inventory.source == "nvidia-smi"
    assert [d.name for d in inventory.devices] == ["NVIDIA H200", "NVIDIA GeForce RTX 4090"]
    assert inventory.devices[1].free_bytes == 1024 * MIB
    assert inventory.summary().startswith(
        "2 NVIDIA GPUs via nvidia-smi: 0: NVIDIA H200 140.4 GiB (139.9 GiB free)"
    )


async def test_nvidia_smi_failure_is_a_note(tmp_path: Path) -> None:
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    smi = fake_smi(tmp_path, f'echo "{message}"; exit 9\n')
    inventory = await discover_gpus(use_nvml=False, nvidia_smi=smi)
    assert inventory.cpu_only
    assert inventory.notes == (f"nvidia-smi: exit status 9: {message}",)
    garbled = fake_smi(tmp_path, "echo 'No devices were found, 1'\n")
    inventory = await discover_gpus(use_nvml=False, nvidia_smi=garbled)
    assert inventory.cpu_only
    assert "expected 5 fields" in inventory.notes[0]


class FakeNvml:
    """The handful of pynvml functions discover_gpus calls, answering like a one-GPU host."""

    def __init__(self, *, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("Driver/library version mismatch")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"560.35.03"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(total=80 * 1024 * MIB, free=79 * 1024 * MIB, used=1024 * MIB)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

    def nvmlDeviceGetName(self, handle: Any) -> bytes:
        return b"NVIDIA H100 80GB HBM3"


async def test_nvml_is_preferred(tmp_path: Path) -> None:
    nvml = FakeNvml()
    inventory = await discover_gpus(nvml_module=nvml, nvidia_smi=str(tmp_path / "absent"))
    assert inventory.source == "nvml"
    assert inventory.driver_version == "560.35.03"
    (device,) = inventory.devices
    assert (device.index, device.name, device.total_bytes) == (0, "NVIDIA H100 80GB HBM3", 80 * 1024 * MIB)
    assert nvml.shutdowns == 1, "NVML must be shut down after the query"
    assert "driver 560.35.03" in inventory.summary()


async def test_nvml_failure_falls_back_to_nvidia_smi(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, f"printf '{SMI_OUTPUT}'\n")
    inventory = await discover_gpus(nvml_module=FakeNvml(fail_init=True), nvidia_smi=smi)
    assert inventory.source == "nvidia-smi"
    assert inventory.notes == ("NVML: Driver/library version mismatch",)


def test_inventory_from_nvml_shuts_down_on_error() -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise RuntimeError("GPU is lost")

    nvml = Broken()
    with pytest.raises(RuntimeError, match="GPU is lost"):
        inventory_from_nvml(nvml)
    assert nvml.shutdowns == 1


def test_empty_inventory_is_cpu_only() -> None:
    assert (
        GpuInventory(devices=(), source="none").summary()
        == "CPU only: no NVIDIA GPU found (no probe found a GPU)"
    )
