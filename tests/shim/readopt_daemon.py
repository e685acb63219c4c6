"""A stand-in for the modelrunner daemon, killed with -9 by test_readoption.py (not a test module).

It starts its own embedded containerd, imports the engine and busybox images, starts runners of
every kind re-adoption must tell apart, prints one ``READY <json>`` line, then keeps starting and
stopping short tasks until it is killed (so the kill lands in the middle of lifecycle steps).

Usage: python readopt_daemon.py STATE_DIR NAMESPACE ENGINE_TAR BUSYBOX_TAR MODELS_DIR WORK_DIR
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import trio
from modelrunner.shim import images, tasks
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import open_embedded_containerd
from modelrunner.shim.health import probe_health
from modelrunner.shim.labels import RunnerLabels

from tests.shim.helpers import minimal_spec

ENGINE_UID = 65532


def engine_spec(models_dir: Path, socket_dir: Path) -> dict[str, object]:
    return minimal_spec(
        [
            "/usr/local/bin/llama-server",
            "-m",
            "/models/chat.gguf",
            "--host",
            "/run/engine/engine.sock",
            "-t",
            "1",
            "-np",
            "1",
            "--no-webui",
        ],
        user=(ENGINE_UID, ENGINE_UID),
        env=("HOME=/tmp",),
        mounts=[
            {"destination": "/models", "type": "bind", "source": str(models_dir), "options": ["rbind", "ro"]},
            {
                "destination": "/run/engine",
                "type": "bind",
                "source": str(socket_dir),
                "options": ["rbind", "rw"],
            },
        ],
    )


async def main(
    state_dir: str, namespace: str, engine_tar: str, busybox_tar: str, models: str, work: str
) -> None:
    work_dir = Path(work)
    async with (
        open_embedded_containerd(state_dir) as daemon,
        open_containerd(daemon.address, namespace, runc_root=daemon.runc_root) as client,
    ):
        engine = await images.import_tarball(client, engine_tar)
        busybox = await images.import_tarball(client, busybox_tar)
        healthy: dict[str, int] = {}
        for i in range(2):
            socket_dir = work_dir / f"engine-{i}"
            socket_dir.mkdir(mode=0o777)
            os.chmod(socket_dir, 0o777)
            labels = RunnerLabels(
                engine="llama.cpp",
                model_id="sha256:" + f"{i:02x}" * 32,
                mode="completion",
                socket_path=str(socket_dir / "engine.sock"),
                memory_reservation=(i + 1) << 30,
                name=f"chat-{i}",
                config_digest="sha256:" + "cd" * 32,
            )
            task = await tasks.start_task(
                client,
                tasks.TaskRequest(
                    f"engine-{i}",
                    engine,
                    engine_spec(Path(models), socket_dir),
                    labels,
                    work_dir / f"engine-{i}.log",
                ),
            )
            with trio.fail_after(30):
                while not await probe_health(labels.socket_path):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            healthy[task.container_id] = task.pid
        # Running but never healthy: no socket at all.
        await tasks.start_task(
            client,
            tasks.TaskRequest(
                "unhealthy",
                busybox,
                minimal_spec(["sleep", "1000"]),
                RunnerLabels(engine="busybox", socket_path=str(work_dir / "none.sock")),
                work_dir / "unhealthy.log",
            ),
        )
        # Exited: its task is stopped but not deleted.
        exited = await tasks.start_task(
            client,
            tasks.TaskRequest(
                "exited",
                busybox,
                minimal_spec(["true"]),
                RunnerLabels(engine="busybox"),
                work_dir / "exited.log",
            ),
        )
        await exited.wait()
        print("READY " + json.dumps({"healthy": healthy, "containerd_pid": daemon.pid}), flush=True)
        # Load: start and stop tasks back to back until killed.
        for n in itertools.count():
            churn = await tasks.start_task(
                client,
                tasks.TaskRequest(
                    f"churn-{n}",
                    busybox,
                    minimal_spec(["sleep", "1000"]),
                    RunnerLabels(engine="busybox"),
                    work_dir / "churn.log",
                ),
            )
            await churn.stop(grace=0)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:7])
