"""Pull throughput from a local docker-registry: modelrunner's client next to ``skopeo copy`` of the
same ~200 MB artifact, measured in the same run. Run by hand (pytest does not collect it):

    .venv/bin/python tests/distribution/measure_pull.py [--megabytes 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from modelrunner.distribution import ModelStore, RegistryClient, package_gguf  # noqa: E402

from tests.distribution.helpers import write_gguf  # noqa: E402
from tests.fixtures.registry import run_registry  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="measure-pull-") as tmp:
        work = Path(tmp)
        rows = args.megabytes * 1024 * 1024 // (1024 * 4)
        weights = np.random.default_rng(0).random((rows, 1024), dtype=np.float32)
        gguf_path = write_gguf(work / "big.gguf", tensors={"blk.0.ffn_up.weight": weights}, file_type=0)
        source = ModelStore(work / "source")
        package_gguf(source, gguf_path, tags=["big"])
        size = source.get("big").size
        with run_registry(work / "registry") as registry:
            ref = f"{registry.host}/ai/big:latest"

            async def push() -> None:
                async with RegistryClient.open() as client:
                    await client.push(ref, source, source="big")

            trio.run(push)
            ours, theirs = [], []
            for run in range(args.runs):
                target = ModelStore(work / f"ours-{run}")

                async def pull(target: ModelStore = target) -> float:
                    async with RegistryClient.open() as client:
                        start = time.perf_counter()
                        await client.pull(ref, target)
                        return time.perf_counter() - start

                ours.append(trio.run(pull))
                destination = work / f"skopeo-{run}"
                start = time.perf_counter()
                subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                                f"oci:{destination}:x"], check=True)
                theirs.append(time.perf_counter() - start)
                shutil.rmtree(work / f"ours-{run}")
                shutil.rmtree(destination)
        megabytes = size / 1e6
        print(f"artifact: {megabytes:.1f} MB (one GGUF layer), local docker-registry over 127.0.0.1, "
              f"{args.runs} runs each, alternating")
        for name, times in (("modelrunner pull", ours), ("skopeo copy", theirs)):
            best, median = min(times), statistics.median(times)
            print(f"{name:17s} median {median:6.2f} s = {megabytes / median:7.1f} MB/s   "
                  f"(best {best:.2f} s = {megabytes / best:.1f} MB/s)")


if __name__ == "__main__":
    main()
