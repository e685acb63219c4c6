"""Measure the sandbox's cost (run by hand: .venv/bin/python tests/sandbox/measure_sandbox.py).

Starts a private embedded containerd under /tmp and reports medians of:
* build_spec for a typical request;
* start_task -> exit -> released for busybox `true` in the full sandbox, and in the same spec with
  the seccomp filter removed (the filter's own cost);
* llama-server in the full sandbox: start_task -> /health 200 over the engine socket (tiny chat model).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "hack" / "lib")]

import testmodels  # noqa: E402
from modelrunner.sandbox import SandboxRequest, build_spec, memory_limit_for_reservation  # noqa: E402
from modelrunner.shim import images, tasks  # noqa: E402
from modelrunner.shim.client import open_containerd  # noqa: E402
from modelrunner.shim.embedded import open_embedded_containerd  # noqa: E402
from modelrunner.shim.labels import RunnerLabels  # noqa: E402

from tests.fixtures.images import pack_test_image  # noqa: E402
from tests.sandbox.conftest import remove_cgroup_parent  # noqa: E402
from tests.sandbox.harness import SandboxHarness  # noqa: E402

RUNS = 10
NAMESPACE = f"sandbox-measure-{os.getpid()}"


def median_ms(samples: list[float]) -> str:
    low, mid, high = (x * 1000 for x in (min(samples), statistics.median(samples), max(samples)))
    return f"median {mid:.1f} ms (min {low:.1f}, max {high:.1f}, n={len(samples)})"


def engine_image() -> tuple[Path, str]:
    """The llama.cpp engine image, as the llamacpp_engine fixture gets it (cached build)."""
    proc = subprocess.run(
        [str(REPO / "hack" / "build-engine-llamacpp")], capture_output=True, text=True, check=True
    )
    image_tar = Path(proc.stdout.strip().splitlines()[-1])
    build = image_tar.name.split("-")[1]
    return image_tar, f"docker.io/modelrunner/llama.cpp:{build}-cpu"


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="mr-sandbox-measure-", dir="/tmp"))
    base.chmod(0o711)  # runc resolves mount sources as the remapped root under user namespaces
    return base


async def main() -> None:
    base = make_base()
    try:
        request = SandboxRequest(
            args=("/bin/true",),
            bundle_dir="/srv/b",
            engine_dir="/run/e",
            memory_limit_bytes=1 << 30,
            cgroups_path="/m/x",
        )
        started = time.perf_counter()
        for _ in range(1000):
            build_spec(request)
        print(f"build_spec: {(time.perf_counter() - started) * 1000:.0f} us per call (mean of 1000 calls)")

        image_tar = pack_test_image(base / "bb.oci.tar")
        engine_tar, engine_ref = engine_image()
        models = testmodels.write_all(base / "models")
        async with (
            open_embedded_containerd(base / "ctd") as daemon,
            open_containerd(daemon.address, NAMESPACE, runc_root=daemon.runc_root) as client,
        ):
            busybox = await images.import_tarball(client, image_tar.path)
            workdir = base / "work"
            workdir.mkdir(mode=0o711)
            harness = SandboxHarness(client, busybox, workdir)
            for label, strip_seccomp in (("full sandbox", False), ("full sandbox minus seccomp", True)):
                samples = []
                for i in range(RUNS + 1):
                    r = harness.request("/bin/true")
                    task_request = harness._task_request(r, None)
                    spec = dict(task_request.spec)
                    if strip_seccomp:
                        spec["linux"] = {k: v for k, v in spec["linux"].items() if k != "seccomp"}
                    task_request = tasks.TaskRequest(
                        task_request.container_id,
                        busybox,
                        spec,
                        RunnerLabels(engine="measure"),
                        task_request.log_path,
                    )
                    t0 = time.perf_counter()
                    task = await tasks.start_task(client, task_request)
                    await task.wait()
                    t1 = time.perf_counter()
                    await task.stop()
                    if i:  # the first run warms caches
                        samples.append(t1 - t0)
                print(f"busybox true, {label}: start_task -> exit {median_ms(samples)}")

            llama = await images.import_tarball(client, engine_tar, engine_ref)
            samples = []
            for i in range(RUNS // 2 + 1):
                r = harness.request(
                    *llama.config.entrypoint,
                    *("--model", "/models/chat.gguf", "--host", "/run/engine/engine.sock", "--no-webui"),
                    *("--threads", "2", "--parallel", "1", "--ctx-size", "512"),
                    env=llama.config.env,
                    memory_limit_bytes=memory_limit_for_reservation(256 << 20),
                )
                shutil.copyfile(models.chat, Path(r.bundle_dir, "chat.gguf"))
                transport = httpx.AsyncHTTPTransport(uds=str(Path(r.engine_dir, "engine.sock")))
                t0 = time.perf_counter()
                async with harness.running(r, image=llama), httpx.AsyncClient(transport=transport) as http:
                    while True:
                        try:
                            if (await http.get("http://engine/health")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.005)
                    t1 = time.perf_counter()
                if i:
                    samples.append(t1 - t0)
            print(f"llama-server (tiny chat), full sandbox: start_task -> /health 200 {median_ms(samples)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        remove_cgroup_parent(NAMESPACE)


if __name__ == "__main__":
    trio.run(main)
