"""pull: a ~200 MB model from a local registry into the store, vs ``skopeo copy`` into an OCI dir.

Setup: a GGUF file holding one tensor of random bytes (random, so no layer of the path can
compress it), packaged into a staging store with ``package_gguf`` and pushed to a private
docker-registry with modelrunner's own client. Each round then pulls the same artifact twice into
fresh, empty destinations on the same filesystem:

- A: ``RegistryClient.pull`` into a new ``ModelStore`` (a new client per pull, so connection setup
  counts, as it does for skopeo);
- B: ``skopeo copy docker://... oci:DIR`` (a new process per copy).

Throughput is the artifact's blob bytes (layers + config + manifest) over the wall time of the
pull. One unrecorded warm-up round first puts the registry's blobs in the page cache for both.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import trio
from modelrunner.distribution import ModelStore, RegistryClient, RegistryConfig, package_gguf

from bench.alternation import alternate
from bench.context import BenchContext, format_bytes_rate
from bench.report import Row, ScenarioReport, Verdict
from bench.services import ServiceError, run_registry, work_dir
from bench.stats import percentile, summarize_ratios

NAME = "pull"
ARTIFACT_BYTES = 200 * 1000 * 1000
TARGET_RATIO = 1.0
REPOSITORY = "bench/random-200mb"
COPY_TIMEOUT = 120.0


def write_random_gguf(path: Path, size: int, seed: int = 20261127) -> None:
    """A valid GGUF (llama architecture, one int8 tensor) whose payload is ``size`` random bytes."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("bench-random")
    writer.add_tensor("random.weight", np.frombuffer(rng.bytes(size), dtype=np.int8).copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


async def _pull_modelrunner(reference: str, destination: Path) -> float:
    store = await trio.to_thread.run_sync(ModelStore, destination)
    started = time.perf_counter()
    async with RegistryClient.open(RegistryConfig()) as client:
        result = await client.pull(reference, store)
    elapsed = time.perf_counter() - started
    if result.cached or not await trio.to_thread.run_sync(store.has_model, result.model_id):
        raise ServiceError(f"the pull of {reference} did not download into the fresh store {destination}")
    return elapsed


async def _pull_skopeo(reference: str, destination: Path) -> float:
    command = [
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{reference}",
        f"oci:{destination}:latest",
    ]
    started = time.perf_counter()
    with trio.fail_after(COPY_TIMEOUT):
        proc = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise ServiceError(f"skopeo copy failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


async def run(ctx: BenchContext) -> ScenarioReport:
    stamp = ctx.begin(NAME)
    rounds = ctx.scale(6, 2)
    size = ctx.scale(ARTIFACT_BYTES, 20 * 1000 * 1000)
    with work_dir(NAME) as root, run_registry(root / "registry") as registry:
        ctx.log(NAME, f"writing a {size / 1e6:.0f} MB random GGUF and pushing it to {registry.host}")
        source = root / "random.gguf"
        await trio.to_thread.run_sync(write_random_gguf, source, size)
        staging = ModelStore(root / "staging")
        packaged = await trio.to_thread.run_sync(lambda: package_gguf(staging, source, tags=["bench/random"]))
        source.unlink()
        reference = f"{registry.host}/{REPOSITORY}:latest"
        async with RegistryClient.open(RegistryConfig()) as client:
            await client.push(reference, staging, source=packaged.model_id)
        model = staging.get(packaged.model_id)
        manifest_bytes = staging.read_blob(model.id)
        manifest = json.loads(manifest_bytes)
        total_bytes = (
            len(manifest_bytes)
            + manifest["config"]["size"]
            + sum(layer["size"] for layer in manifest["layers"])
        )
        shutil.rmtree(root / "staging")

        destinations = root / "pulls"
        destinations.mkdir()

        async def candidate(index: int) -> float:
            target = destinations / f"store-{index}"
            try:
                return await _pull_modelrunner(reference, target)
            finally:
                shutil.rmtree(target, ignore_errors=True)

        async def baseline(index: int) -> float:
            target = destinations / f"oci-{index}"
            try:
                return await _pull_skopeo(reference, target)
            finally:
                shutil.rmtree(target, ignore_errors=True)

        ctx.log(NAME, "warm-up round")
        await candidate(-1)
        await baseline(-1)
        ctx.log(NAME, f"{rounds} rounds, A B A B ...")
        paired = await alternate(rounds, candidate, baseline, time_budget=ctx.scale(60, 20))

    ours = [total_bytes / seconds for seconds in paired.candidate]
    theirs = [total_bytes / seconds for seconds in paired.baseline]
    ratio = summarize_ratios(ours, theirs)
    time_ratio = percentile(paired.candidate, 50) / percentile(paired.baseline, 50)
    rows = (
        Row(
            "throughput, median",
            format_bytes_rate(percentile(ours, 50)),
            format_bytes_rate(percentile(theirs, 50)),
            ratio.format(),
            f">= {TARGET_RATIO:.1f}x",
            Verdict.MET if ratio.median >= TARGET_RATIO else Verdict.MISSED,
        ),
        Row(
            "wall time per pull, median",
            f"{percentile(paired.candidate, 50):.2f} s",
            f"{percentile(paired.baseline, 50):.2f} s",
            f"{time_ratio:.2f}x the time (ratio of medians)",
        ),
    )
    return stamp.report(
        title="model pull from a local registry",
        candidate_label="modelrunner pull (distribution/) into a new store",
        baseline_label="skopeo copy into an OCI dir",
        method=(
            f"A {total_bytes / 1e6:.0f} MB model (one GGUF layer of random bytes) is pulled from a private "
            "docker-registry on 127.0.0.1 into an empty destination, alternating A and B for "
            f"{paired.rounds} rounds after one warm-up round; throughput = blob bytes / wall time. The "
            "ratio is the median of per-round A/B throughput ratios (higher is better for A)."
        ),
        rows=rows,
        notes=(("the time budget cut the run to fewer rounds than planned",) if paired.stopped_early else ()),
    )
