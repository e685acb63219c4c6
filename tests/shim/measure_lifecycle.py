"""Measure runner task start and teardown times against a private embedded containerd.

Not a test (pytest does not collect it). Run from the repository root:

    PYTHONPATH=. .venv/bin/python tests/shim/measure_lifecycle.py [--runs 20]

It imports the busybox test image, then for each run times:

* start: ``start_task`` from its first RPC until containerd reports the task started
  (lease, read-only overlay view, container, task create with runc, wait, start);
* first output: from the first RPC until the task's first line is in its log file;
* release: deleting an exited task, its container, snapshot and lease;
* stop: ``stop(grace=0)`` of a running task (SIGTERM, SIGKILL to all, wait for the exit, release).

and prints min / median / max in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio
from modelrunner.shim import images, tasks
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import open_embedded_containerd
from modelrunner.shim.labels import RunnerLabels

from tests.fixtures.containerd import remove_namespace_cgroups
from tests.fixtures.images import pack_test_image
from tests.shim.helpers import minimal_spec


async def measure(runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"start": [], "first output": [], "release": [], "stop": []}
    with tempfile.TemporaryDirectory(prefix="mr-measure-") as tmp:
        work = Path(tmp)
        image_tar = pack_test_image(work / "busybox.tar", extra_layers=1)
        async with (
            open_embedded_containerd(work / "ctd", log_level="warn") as daemon,
            open_containerd(daemon.address, "measure", runc_root=daemon.runc_root) as client,
        ):
            image = await images.import_tarball(client, image_tar.path)
            for i in range(runs + 1):  # the first run warms caches and is not counted
                log = work / f"echo-{i}.log"
                begin = time.perf_counter()
                task = await tasks.start_task(
                    client,
                    tasks.TaskRequest(
                        f"echo-{i}",
                        image,
                        minimal_spec(["echo", "READY"]),
                        RunnerLabels(engine="busybox"),
                        log,
                    ),
                )
                started = time.perf_counter()
                while "READY" not in (log.read_text() if log.exists() else ""):  # noqa: ASYNC110
                    await trio.sleep(0.0005)
                first_output = time.perf_counter()
                await task.wait()
                before_release = time.perf_counter()
                await task.stop()
                released = time.perf_counter()

                sleeper = await tasks.start_task(
                    client,
                    tasks.TaskRequest(
                        f"sleep-{i}",
                        image,
                        minimal_spec(["sleep", "1000"]),
                        RunnerLabels(engine="busybox"),
                        work / f"sleep-{i}.log",
                    ),
                )
                before_stop = time.perf_counter()
                await sleeper.stop(grace=0)
                stopped = time.perf_counter()
                if i:
                    results["start"].append(started - begin)
                    results["first output"].append(first_output - begin)
                    results["release"].append(released - before_release)
                    results["stop"].append(stopped - before_stop)
            await images.remove(client, image.ref)
    remove_namespace_cgroups("measure")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    results = trio.run(measure, args.runs)
    print(f"{args.runs} runs (after one warm-up), milliseconds:")
    for name, values in results.items():
        ms = [v * 1000 for v in values]
        print(f"  {name:13s} min {min(ms):6.1f}  median {statistics.median(ms):6.1f}  max {max(ms):6.1f}")


if __name__ == "__main__":
    main()
