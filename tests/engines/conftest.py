"""Fixtures for the engines tests: a llama.cpp backend on a fresh containerd namespace, and model
bundles laid out the way the store lays them out (``model.gguf`` hard-linked, optional template)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from modelrunner.engines import ModelSpec
from modelrunner.engines.llamacpp.backend import LlamaCppBackend, open_llamacpp_backend
from modelrunner.shim.client import Containerd

from tests.fixtures.engine import EngineBuild
from tests.fixtures.engines import make_environment


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
