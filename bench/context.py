"""What every scenario receives: options, the shared engine build and machine description, a
progress printer, and small formatting helpers for table cells."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench.machine import MachineInfo, collect_machine_info
from bench.report import ScenarioRun
from bench.services import REPO, EngineBuild, engine_build

__all__ = [
    "BenchContext",
    "format_bytes_rate",
    "format_ms",
    "format_ratio",
    "format_signed_ms",
]


@dataclass
class BenchContext:
    """Per-run settings shared by the scenarios of one ``python -m bench`` invocation."""

    quick: bool = False
    """Fewer rounds and shorter windows: a smoke run whose numbers are not worth recording."""
    _clock_start: float = field(default_factory=time.monotonic)

    @functools.cached_property
    def engine(self) -> EngineBuild:
        return engine_build()

    @functools.cached_property
    def revision(self) -> str:
        """The commit measured, ``+ uncommitted changes`` when the tree differs from it."""
        return checkout_revision()

    @functools.cached_property
    def machine(self) -> MachineInfo:
        return collect_machine_info(self.engine.binary)

    def begin(self, name: str) -> ScenarioRun:
        """Stamp the start of scenario `name` (wall time, load average, duration clock)."""
        return ScenarioRun(
            name=name,
            command=self.command(name),
            revision=self.revision,
            machine=self.machine,
            started=datetime.now(UTC),
            load_average=os.getloadavg(),
            clock_start=time.monotonic(),
        )

    def scale(self, full: int, quick: int) -> int:
        """A count for this run: ``full`` normally, ``quick`` with ``--quick``."""
        return quick if self.quick else full

    @staticmethod
    def command(scenario: str) -> str:
        """The command that reproduces a scenario, as BENCHMARKS.md shows it."""
        return f".venv/bin/python -m bench {scenario}"

    def log(self, scenario: str, message: str) -> None:
        elapsed = time.monotonic() - self._clock_start
        print(f"[{elapsed:6.1f}s] {scenario}: {message}", file=sys.stderr, flush=True)


def checkout_revision() -> str:
    """``abc1234`` or ``abc1234 + uncommitted changes``; "" outside a git checkout (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head} + uncommitted changes" if dirty else head


def format_ms(seconds: float, digits: int = 2) -> str:
    return f"{seconds * 1000:.{digits}f} ms"


def format_signed_ms(seconds: float, digits: int = 2) -> str:
    return f"{seconds * 1000:+.{digits}f} ms"


def format_ratio(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}x"


def format_bytes_rate(bytes_per_second: float) -> str:
    return f"{bytes_per_second / 1e6:.0f} MB/s"
