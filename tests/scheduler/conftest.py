"""Fixtures for the scheduler's tests against real containerd + runc + llama-server: the llama.cpp
backend in a fresh containerd namespace, and three generated chat models laid out as store bundles."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType

import pytest
import testmodels
from modelrunner.engines import ModelSpec
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.shim.client import Containerd

from tests.fixtures.engine import EngineBuild
from tests.fixtures.engines import make_environment


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
async def llamacpp(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild
) -> AsyncIterator[LlamaCppBackend]:
    environment = make_environment(
        engine_client, short_tmp / "state", llamacpp_engine, threads=1, stop_grace=2.0
    )
    async with open_llamacpp_backend(environment) as backend:
        yield backend
