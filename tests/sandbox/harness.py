"""Runs sandbox specs through modelrunner's own containerd client, for the from-inside tests.

This is the path an engine takes: :func:`modelrunner.sandbox.build_spec` makes the spec and
:func:`modelrunner.shim.tasks.start_task` creates the container from it on a read-only snapshot view
of the image (``root.path`` "rootfs"), in a real containerd with runc. The harness adds nothing to
the spec. It reads the task's exit status from the shim and its events from the client's stream.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from modelrunner.sandbox import SandboxRequest, build_spec, prepare_engine_dir
from modelrunner.shim import images, tasks
from modelrunner.shim.client import Containerd
from modelrunner.shim.events import Event, TaskDelete
from modelrunner.shim.labels import RunnerLabels

PROBE_SOURCE = Path(__file__).parent / "probe" / "probe.c"
LABELS = RunnerLabels(engine="sandbox-probe", mode="test")


def build_probe(out_dir: Path) -> Path:
    """Compile tests/sandbox/probe/probe.c into a static binary (gcc is part of the test toolchain)."""
    out = out_dir / "probe"
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(PROBE_SOURCE), "-lpthread"],
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class SandboxRun:
    container_id: str
    exit_code: int
    oom_killed: bool
    output: str  # stdout and stderr, as the shim logs them
    events: list[Event]  # this container's task events, in arrival order
    spec: dict[str, Any]

    def lines(self) -> dict[str, str]:
        """The probe's ``name value`` lines as a mapping."""
        out: dict[str, str] = {}
        for line in self.output.splitlines():
            name, _, value = line.partition(" ")
            out[name] = value
        return out


@dataclass
class SandboxHarness:
    """Builds requests with fresh host directories and runs them as runner tasks."""

    client: Containerd
    image: images.Image
    workdir: Path  # traversable (0711): under user namespaces runc resolves mount sources as mapped root

    def request(self, *args: str, **overrides: Any) -> SandboxRequest:
        run_id = uuid.uuid4().hex[:12]
        base = self.workdir / run_id
        base.mkdir(mode=0o711)
        bundle = base / "bundle"
        bundle.mkdir(mode=0o755)
        (bundle / "model.gguf").write_bytes(b"GGUF fake model bytes")
        fields: dict[str, Any] = {
            "args": args,
            "bundle_dir": str(bundle),
            "engine_dir": str(base / "engine"),
            "memory_limit_bytes": 256 * 1024 * 1024,
            # Under the namespace's cgroup, which the session fixture removes with the namespace.
            "cgroups_path": f"/{self.client.namespace}/sbx-{run_id}",
            "hostname": f"engine-{run_id[:6]}",
            "env": ("PATH=/bin",),
        }
        fields.update(overrides)
        return SandboxRequest(**fields)

    def _task_request(self, request: SandboxRequest, image: images.Image | None) -> tasks.TaskRequest:
        if not os.path.exists(request.engine_dir):
            prepare_engine_dir(request)
        container_id = Path(request.cgroups_path).name
        log = Path(request.engine_dir).parent / "task.log"
        return tasks.TaskRequest(container_id, image or self.image, build_spec(request), LABELS, log)

    async def run(self, request: SandboxRequest, *, image: images.Image | None = None) -> SandboxRun:
        """Start the task, wait for its exit, release it; return its output, exit and events."""
        task_request = self._task_request(request, image)
        cid = task_request.container_id
        seen: list[Event] = []
        async with self.client.subscribe() as events:
            task = await tasks.start_task(self.client, task_request)
            try:
                status = await task.wait()
            finally:
                await task.stop()
            with trio.move_on_after(5):
                async for event in events:
                    if getattr(event, "container_id", None) == cid:
                        seen.append(event)
                        if isinstance(event, TaskDelete):
                            break
        output = task_request.log_path.read_text(errors="replace") if task_request.log_path.exists() else ""
        return SandboxRun(cid, status.code, status.oom_killed, output, seen, dict(task_request.spec))

    @contextlib.asynccontextmanager
    async def running(
        self, request: SandboxRequest, *, image: images.Image | None = None
    ) -> AsyncIterator[tasks.RunningTask]:
        """A task kept running for the block; stopped and released on exit."""
        task = await tasks.start_task(self.client, self._task_request(request, image))
        try:
            yield task
        finally:
            with trio.CancelScope(shield=True):
                await task.stop(grace=5)
