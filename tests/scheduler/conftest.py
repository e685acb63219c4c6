"""Fixtures for the scheduler's tests against real containerd + runc + llama-server: the llama.cpp
backend in a fresh containerd namespace, and three generated chat models laid out as store bundles."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
import testmodels
from modelrunner.engines import ModelSpec
from modelrunner.engines.environment import EngineEnvironment, EngineImageSource
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.shim.client import Containerd, open_containerd

from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.engine import EngineBuild


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: runner sockets live below it (Unix socket paths max out at 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mr-sch-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def scheduler_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three distinct tiny chat models (different weights, so different model IDs)."""
    directory = tmp_path_factory.mktemp("scheduler-models")
    return [
        testmodels.write_chat_model(directory / f"chat-{n}.gguf", seed=n, name=f"tiny-sched-{n}")
        for n in range(3)
    ]


@pytest.fixture
def model_specs(scheduler_models: list[Path], short_tmp: Path) -> list[ModelSpec]:
    specs = []
    for n, gguf in enumerate(scheduler_models):
        bundle = short_tmp / "bundles" / f"m{n}"
        bundle.mkdir(parents=True)
        shutil.copyfile(gguf, bundle / "model.gguf")
        bundle.chmod(0o755)
        digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
        specs.append(
            ModelSpec(
                id=f"sha256:{digest}",
                name=f"ai/sched-{n}:latest",
                bundle_dir=bundle,
                format="gguf",
                config=MappingProxyType({"context_size": 1024}),
                gguf_path=bundle / "model.gguf",
            )
        )
    return specs


@pytest.fixture
async def engine_client(
    containerd: ContainerdInstance, containerd_namespace: str
) -> AsyncIterator[Containerd]:
    address, runc_root = containerd.address, containerd.runc_root
    async with open_containerd(address, containerd_namespace, runc_root=runc_root) as client:
        yield client


@pytest.fixture
async def llamacpp(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild
) -> AsyncIterator[LlamaCppBackend]:
    environment = EngineEnvironment(
        containerd=engine_client,
        state_dir=short_tmp / "state",
        llamacpp_image=EngineImageSource(ref=llamacpp_engine.image_ref, tarball=llamacpp_engine.image_tar),
        threads=1,
        load_timeout=60.0,
        stop_grace=2.0,
    )
    async with open_llamacpp_backend(environment) as backend:
        yield backend
