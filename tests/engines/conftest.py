"""Fixtures for the engines tests: a llama.cpp backend on a fresh containerd namespace, and model
bundles laid out the way the store lays them out (``model.gguf`` hard-linked, optional template)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from modelrunner.engines import ModelSpec
from modelrunner.engines.environment import EngineEnvironment, EngineImageSource
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.shim.client import Containerd, open_containerd

from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.engine import EngineBuild


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: runner sockets live below it and Unix socket paths max out at 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mr-eng-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def engine_client(
    containerd: ContainerdInstance, containerd_namespace: str
) -> AsyncIterator[Containerd]:
    address, runc_root = containerd.address, containerd.runc_root
    async with open_containerd(address, containerd_namespace, runc_root=runc_root) as client:
        yield client


def make_environment(
    client: Containerd, state_dir: Path, engine: EngineBuild, **overrides: Any
) -> EngineEnvironment:
    settings: dict[str, Any] = {
        "containerd": client,
        "state_dir": state_dir,
        "llamacpp_image": EngineImageSource(ref=engine.image_ref, tarball=engine.image_tar),
        "threads": 2,
        "load_timeout": 60.0,
        "stop_grace": 4.0,
    }
    settings.update(overrides)
    return EngineEnvironment(**settings)


@pytest.fixture
async def llamacpp(
    engine_client: Containerd, short_tmp: Path, llamacpp_engine: EngineBuild
) -> AsyncIterator[LlamaCppBackend]:
    environment = make_environment(engine_client, short_tmp / "state", llamacpp_engine)
    async with open_llamacpp_backend(environment) as backend:
        yield backend


BundleFactory = Callable[..., ModelSpec]


@pytest.fixture
def make_bundle(short_tmp: Path) -> BundleFactory:
    """``make_bundle(gguf_path, name=..., template=..., config=...)`` -> a ModelSpec whose bundle dir
    holds ``model.gguf`` (hard link, or copy across filesystems) and the optional template."""
    counter = iter(range(1_000_000))

    def make(gguf: Path, *, name: str = "ai/test-model:latest", template: str | None = None,
             config: dict[str, Any] | None = None, model_id: str | None = None) -> ModelSpec:
        bundle = short_tmp / "bundles" / f"b{next(counter)}"
        bundle.mkdir(parents=True)
        target = bundle / "model.gguf"
        try:
            os.link(gguf, target)
        except OSError:
            shutil.copyfile(gguf, target)
        if template is not None:
            (bundle / "template.jinja").write_text(template)
        bundle.chmod(0o755)
        return ModelSpec(
            id=model_id or "sha256:" + format(next(counter), "064x"),
            name=name,
            bundle_dir=bundle,
            format="gguf",
            config=MappingProxyType(dict(config or {})),
            gguf_path=target,
        )

    return make
