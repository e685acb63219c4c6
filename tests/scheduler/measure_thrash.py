"""The thrash scenario: 3 models, memory for 1, 300 interleaved requests from 8 clients.

Each client sends its own fixed, seeded random sequence of requests one after another (the next
once the previous answered). The scheduler must serve all of them (failures must be 0) while never
holding two models at once, and should load models far less often than once per change of model.

Reported: failures, loads, the ledger's peak against its budget, wall (or virtual) time, and the
*offline minimum* number of loads: the fewest phases (one model loaded per phase) in which the
clients' sequences can be served if the whole future were known. It is the length of the shortest
common supersequence of the clients' run-compressed sequences, found exactly by a breadth-first
search over the clients' positions with Pareto pruning (a state whose positions are all behind
another's is never better). No online policy can load fewer times.

Usage (from the repository root):

    .venv/bin/python tests/scheduler/measure_thrash.py            # fake engines, virtual clock
    .venv/bin/python tests/scheduler/measure_thrash.py --real     # containerd + llama-server

Options: ``--requests 300 --clients 8 --seed 1 --min-residency 2.0 --idle-grace 0.25`` and, for the
fakes, ``--load-seconds 0.5 --request-seconds 0.05``. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import trio
import trio.testing

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "hack" / "lib"), str(REPO)]

from modelrunner.engines import MemoryEstimate, Mode, ModelSpec, RunnerConfig  # noqa: E402
from modelrunner.engines.registry import BackendRegistry  # noqa: E402
from modelrunner.sandbox.gpus import GpuInventory  # noqa: E402
from modelrunner.scheduler import ModelNotFound, Scheduler, SchedulerSettings, open_scheduler  # noqa: E402

MODELS = 3
NO_GPUS = GpuInventory(devices=(), source="none", notes=("measurement",))


def client_sequences(requests: int, clients: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    sequences: list[list[int]] = [[] for _ in range(clients)]
    for n in range(requests):
        sequences[n % clients].append(rng.randrange(MODELS))
    return sequences


def runs(sequence: Sequence[int]) -> list[int]:
    compressed: list[int] = []
    for model in sequence:
        if not compressed or compressed[-1] != model:
            compressed.append(model)
    return compressed


def offline_minimum_loads(sequences: Sequence[Sequence[int]], cap: int = 200_000) -> tuple[int, bool]:
    """Fewest loads that can serve every client's sequence in order; (loads, exact).

    If the Pareto frontier ever grows past ``cap`` states it is cut to the most advanced ones, and
    the answer is then an upper bound (``exact`` False).
    """
    compressed = [runs(s) for s in sequences]
    goal = tuple(len(c) for c in compressed)
    frontier = {tuple(0 for _ in compressed)}
    exact = True
    loads = 0
    while goal not in frontier:
        loads += 1
        following: set[tuple[int, ...]] = set()
        for state in frontier:
            for model in range(MODELS):
                advanced = tuple(
                    pos + 1 if pos < len(c) and c[pos] == model else pos
                    for pos, c in zip(state, compressed, strict=True)
                )
                if advanced != state:
                    following.add(advanced)
        frontier = _pareto(following)
        if len(frontier) > cap:
            exact = False
            frontier = set(sorted(frontier, key=sum, reverse=True)[:cap])
    return loads, exact


def _pareto(states: set[tuple[int, ...]]) -> set[tuple[int, ...]]:
    import numpy

    ordered = sorted(states, key=sum, reverse=True)
    kept = numpy.empty((len(ordered), len(ordered[0]) if ordered else 0), dtype=numpy.int32)
    count = 0
    for state in ordered:
        row = numpy.asarray(state, dtype=numpy.int32)
        if count and bool(numpy.all(kept[:count] >= row, axis=1).any()):
            continue  # another state is at least as far along for every client
        kept[count] = row
        count += 1
    return {tuple(int(v) for v in row) for row in kept[:count]}


@dataclass
class Result:
    mode: str
    requests: int
    failures: int
    loads: int
    offline_minimum: int
    offline_exact: bool
    model_changes_per_client_max: int
    peak_reserved: int
    budget: int
    seconds: float
    seconds_kind: str
    evictions: int
    min_residency: float
    idle_grace: float


async def drive(scheduler: Scheduler, names: list[str], sequences: list[list[int]], request: Any) -> int:
    failures = 0

    async def client(sequence: list[int]) -> None:
        nonlocal failures
        for model in sequence:
            try:
                async with scheduler.acquire(names[model]) as lease:
                    await request(lease, names[model])
            except Exception as exc:
                failures += 1
                print(f"request for {names[model]} failed: {exc!r}", file=sys.stderr)

    async with trio.open_nursery() as nursery:
        for sequence in sequences:
            nursery.start_soon(client, sequence)
    return failures


# -- fakes ---------------------------------------------------------------------------------------------


async def run_fake(args: argparse.Namespace, sequences: list[list[int]]) -> Result:
    from tests.scheduler.fakes import FakeBackend, FakeResolver, GiB

    backend = FakeBackend(load_seconds=args.load_seconds, stop_seconds=0.05)
    resolver = FakeResolver()
    names = []
    for n in range(MODELS):
        spec = resolver.add(f"ai/thrash-{n}", n + 1)
        backend.estimates[spec.id] = MemoryEstimate(ram=3 * GiB)
        names.append(spec.name)
    settings = SchedulerSettings(
        memory_budget={"ram": 4 * GiB}, min_residency=args.min_residency, residency_idle_grace=args.idle_grace
    )

    async def request(lease: Any, name: str) -> None:
        await trio.sleep(args.request_seconds)

    registry = BackendRegistry([backend], default=backend.name)
    start = trio.current_time()
    async with open_scheduler(registry, resolver, settings, gpus=NO_GPUS, host_memory=lambda: 0) as scheduler:
        failures = await drive(scheduler, names, sequences, request)
        stats = scheduler.statistics()
    return _result("fake", sequences, failures, stats, trio.current_time() - start, "virtual", args)


# -- real engines ---------------------------------------------------------------------------------------


@asynccontextmanager
async def real_backend(workdir: Path) -> AsyncIterator[Any]:
    from modelrunner.engines.environment import EngineEnvironment, EngineImageSource
    from modelrunner.engines.llamacpp.backend import open_llamacpp_backend
    from modelrunner.shim.client import open_containerd
    from modelrunner.shim.embedded import open_embedded_containerd

    build = await trio.run_process([str(REPO / "hack" / "build-engine-llamacpp")], capture_stdout=True)
    image_tar = Path(build.stdout.decode().strip().splitlines()[-1])
    tag = image_tar.name.split("-")[1]
    image = EngineImageSource(ref=f"docker.io/modelrunner/llama.cpp:{tag}-cpu", tarball=image_tar)
    async with open_embedded_containerd(workdir / "containerd") as daemon, open_containerd(
        daemon.address, "measure-thrash", runc_root=daemon.runc_root
    ) as client:
        environment = EngineEnvironment(
            containerd=client, state_dir=workdir / "state", llamacpp_image=image, threads=1, stop_grace=2.0
        )
        async with open_llamacpp_backend(environment) as backend:
            yield backend


class _Resolver:
    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = specs

    def resolve(self, ref: str) -> ModelSpec:
        for spec in self.specs:
            if ref in (spec.name, spec.id):
                return spec
        raise ModelNotFound(ref)


async def run_real(args: argparse.Namespace, sequences: list[list[int]]) -> Result:
    import hashlib

    import httpx
    import testmodels

    workdir = Path(tempfile.mkdtemp(prefix="mr-thr-", dir="/tmp"))
    try:
        specs = []
        for n in range(MODELS):
            bundle = workdir / "bundles" / f"m{n}"
            bundle.mkdir(parents=True)
            gguf = testmodels.write_chat_model(bundle / "model.gguf", seed=n, name=f"thrash-{n}")
            bundle.chmod(0o755)
            digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
            specs.append(
                ModelSpec(id=f"sha256:{digest}", name=f"ai/thrash-{n}:latest", bundle_dir=bundle,
                          format="gguf", config=MappingProxyType({"context_size": 1024}), gguf_path=gguf)
            )
        names = [spec.name for spec in specs]
        async with real_backend(workdir) as backend:
            estimates = [backend.estimate_memory(s, Mode.COMPLETION, RunnerConfig()).ram for s in specs]
            budget = max(estimates) + min(estimates) // 2
            settings = SchedulerSettings(
                memory_budget={"ram": budget}, min_residency=args.min_residency,
                residency_idle_grace=args.idle_grace, stop_grace=2.0,
            )
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})

            async def request(lease: Any, name: str) -> None:
                transport = httpx.AsyncHTTPTransport(uds=str(lease.socket_path))
                async with httpx.AsyncClient(transport=transport, base_url="http://e", timeout=60) as client:
                    response = await client.post("/v1/chat/completions", content=body,
                                                 headers={"content-type": "application/json"})
                if response.status_code != 200 or response.json()["model"] != name:
                    raise RuntimeError(f"bad answer {response.status_code}: {response.text[:200]}")

            start = time.monotonic()
            registry = BackendRegistry([backend])
            async with open_scheduler(registry, _Resolver(specs), settings, gpus=NO_GPUS) as sched:
                failures = await drive(sched, names, sequences, request)
                stats = sched.statistics()
            return _result("real", sequences, failures, stats, time.monotonic() - start, "wall", args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _result(mode: str, sequences: list[list[int]], failures: int, stats: Any, seconds: float, kind: str,
            args: argparse.Namespace) -> Result:
    minimum, exact = offline_minimum_loads(sequences)
    return Result(
        mode=mode,
        requests=sum(len(s) for s in sequences),
        failures=failures,
        loads=stats.loads_started,
        offline_minimum=minimum,
        offline_exact=exact,
        model_changes_per_client_max=max(len(runs(s)) for s in sequences),
        peak_reserved=stats.ledger.peak_reserved["ram"],
        budget=stats.ledger.budget["ram"],
        seconds=round(seconds, 2),
        seconds_kind=kind,
        evictions=stats.unloads.get("evicted", 0),
        min_residency=args.min_residency,
        idle_grace=args.idle_grace,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="containerd + llama-server instead of fakes")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-residency", type=float, default=2.0)
    parser.add_argument("--idle-grace", type=float, default=0.25)
    parser.add_argument("--load-seconds", type=float, default=0.5, help="fakes: engine load time")
    parser.add_argument("--request-seconds", type=float, default=0.05, help="fakes: request time")
    args = parser.parse_args(argv)
    sequences = client_sequences(args.requests, args.clients, args.seed)
    if args.real:
        result = trio.run(run_real, args, sequences)
    else:
        result = trio.run(run_fake, args, sequences, clock=trio.testing.MockClock(autojump_threshold=0))
    print(json.dumps(result.__dict__, indent=2))
    return 1 if result.failures or result.peak_reserved > result.budget else 0


if __name__ == "__main__":
    raise SystemExit(main())
