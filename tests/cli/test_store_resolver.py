"""The daemon's ModelResolver over a real store: bundles, names, and cache invalidation on change."""

from __future__ import annotations

from pathlib import Path

import pytest
import testmodels
from modelrunner.cli.daemon import StoreResolver
from modelrunner.distribution.errors import ModelNotFound
from modelrunner.distribution.packaging import package_gguf
from modelrunner.distribution.store import ModelStore


def test_resolves_to_a_bundle_and_follows_store_changes(
    tmp_path: Path, test_models: testmodels.TestModelSet
) -> None:
    store = ModelStore(tmp_path / "models")
    packaged = package_gguf(store, test_models.chat, tags=["ai/chat"])
    resolver = StoreResolver(store)

    spec = resolver.resolve("ai/chat")
    assert spec.id == packaged.model_id
    assert spec.name == "docker.io/ai/chat:latest"
    assert spec.format == "gguf"
    assert spec.gguf_path == spec.bundle_dir / "model.gguf"
    assert spec.gguf_path.read_bytes() == test_models.chat.read_bytes()
    assert resolver.resolve("ai/chat") is spec  # cached while the store is unchanged

    assert resolver.disk_usage() >= test_models.chat.stat().st_size

    store.tag("ai/chat", "ai/other")
    assert resolver.resolve("ai/other").id == packaged.model_id

    store.delete("ai/other")
    store.delete("ai/chat")
    with pytest.raises(ModelNotFound):
        resolver.resolve("ai/chat")
    assert resolver.disk_usage() == 0
