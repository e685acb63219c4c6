"""Measure llama.cpp runner start (task created -> /health 200) and stop times through engines/.

Run by hand (pytest does not collect measure_*.py):

    .venv/bin/python tests/engines/measure_startup.py [ROUNDS]

Starts a private embedded containerd in a temp dir, the newest cached engine image, and the
generated test models; prints the median and range per model. Numbers vary with machine load;
compare runs made on the same machine only.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "lib"))

import testmodels
from modelrunner.engines import (
    EngineEnvironment,
    MemoryEstimate,
    Mode,
    ModelSpec,
    RunnerConfig,
    llamacpp_image_source,
    open_llamacpp_backend,
)
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import open_embedded_containerd


async def main(rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="mr-measure-", dir="/tmp"))
    try:
        models = testmodels.write_all(root / "models")
        source = llamacpp_image_source(os.environ)
        assert source is not None, "no engine image: run hack/build-engine-llamacpp"
        async with (
            open_embedded_containerd(root / "ctd") as daemon,
            open_containerd(daemon.address, "measure", runc_root=daemon.runc_root) as client,
        ):
            environment = EngineEnvironment(
                containerd=client, state_dir=root / "state", llamacpp_image=source, threads=2
            )
            async with open_llamacpp_backend(environment) as backend:
                started = time.perf_counter()
                await backend.install()
                print(f"install (import + unpack): {1000 * (time.perf_counter() - started):.0f} ms")
                cases = [
                    ("chat", models.chat, Mode.COMPLETION),
                    ("embed", models.embed, Mode.EMBEDDING),
                    ("chat-large", models.chat_large, Mode.COMPLETION),
                ]
                for name, path, mode in cases:
                    bundle = root / "bundles" / name
                    bundle.mkdir(parents=True)
                    os.link(path, bundle / "model.gguf")
                    spec = ModelSpec(
                        id="sha256:" + "0" * 64, name=f"ai/{name}", bundle_dir=bundle, format="gguf",
                        config=MappingProxyType({}), gguf_path=bundle / "model.gguf",
                    )
                    reservation = MemoryEstimate(ram=512 << 20)
                    starts, stops = [], []
                    for _ in range(rounds):
                        t0 = time.perf_counter()
                        runner = await backend.start_runner(spec, mode, RunnerConfig(), reservation)
                        t1 = time.perf_counter()
                        await runner.stop()
                        t2 = time.perf_counter()
                        starts.append(1000 * (t1 - t0))
                        stops.append(1000 * (t2 - t1))
                    start_range = f"{min(starts):.0f}-{max(starts):.0f}"
                    stop_range = f"{min(stops):.0f}-{max(stops):.0f}"
                    print(
                        f"{name}: start {statistics.median(starts):.0f} ms ({start_range}), "
                        f"stop+release {statistics.median(stops):.0f} ms ({stop_range}), n={rounds}"
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 10)
