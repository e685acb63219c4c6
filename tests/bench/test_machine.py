"""bench.machine: parsing /proc and /etc/os-release text."""

from __future__ import annotations

import pytest

from bench.machine import MachineInfo, parse_cpu_model, parse_mem_total, parse_os_release


def test_cpu_model() -> None:
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\n"
    assert parse_cpu_model(text) == "AMD EPYC 7B13"
    assert parse_cpu_model("processor : 0\n") == "unknown"


def test_mem_total() -> None:
    assert parse_mem_total("MemTotal:       24567012 kB\nMemFree: 1 kB\n") == 24567012 * 1024
    with pytest.raises(ValueError, match="MemTotal"):
        parse_mem_total("MemFree: 1 kB\n")


def test_os_release() -> None:
    assert parse_os_release('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n') == (
        "Debian GNU/Linux 12 (bookworm)"
    )
    assert parse_os_release("PRETTY_NAME=Alpine\n") == "Alpine"
    assert parse_os_release("") == "unknown"


def test_describe_mentions_usable_cpus_only_when_restricted() -> None:
    info = MachineInfo("CPU X", 4, 2, 8 << 30, "6.1", "Debian", "cgroup v2", "1.7", "1.2", "b1", "3.11")
    lines = info.describe()
    assert lines[0] == "CPU: CPU X, 4 CPUs (2 usable)"
    assert "RAM: 8.0 GiB" in lines
    assert not any(line.startswith("skopeo") for line in lines)


def test_process_cpu_seconds_counts_from_the_last_parenthesis() -> None:
    import os

    from bench.services import process_cpu_seconds

    ticks = os.sysconf("SC_CLK_TCK")
    # A command name with a space and a parenthesis must not shift the fields.
    line = f"1234 (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 {3 * ticks} {ticks} 0 0 20 0 4 0 5"
    assert process_cpu_seconds(line) == 4.0
    with pytest.raises(ValueError):
        process_cpu_seconds("garbage")
