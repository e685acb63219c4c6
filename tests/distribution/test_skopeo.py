"""Interop with tools no one here wrote: skopeo reads our store as an OCI layout and copies to and
from the registry; what it pushes we pull, what we push it sees, byte for byte."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from modelrunner.distribution import ModelStore, RegistryClient, package_gguf
from modelrunner.distribution.oci import sha256_digest

from tests.distribution.helpers import write_gguf
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.integration


def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["skopeo", *args], capture_output=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    package_gguf(store, write_gguf(tmp_path / "w.gguf"), chat_template=template, tags=["tiny"])
    return store


async def test_skopeo_copies_our_store_to_a_registry_and_we_pull_it(store: ModelStore, registry: Registry,
                                                                    tmp_path: Path) -> None:
    model = store.get("tiny")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{store.root}:docker.io/ai/tiny:latest",
           f"docker://{registry.host}/ai/tiny:skopeo")
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/ai/tiny:skopeo").stdout
    assert sha256_digest(raw) == model.id  # skopeo kept our manifest bytes
    target = ModelStore(tmp_path / "target")
    async with RegistryClient.open() as client:
        result = await client.pull(f"{registry.host}/ai/tiny:skopeo", target)
    assert result.model_id == model.id
    original, pulled = store.bundle("tiny"), target.bundle(result.model_id)
    assert {p.name: p.read_bytes() for p in original.iterdir()} == {
        p.name: p.read_bytes() for p in pulled.iterdir()}


async def test_skopeo_sees_our_push_and_copies_it_back_into_the_store(store: ModelStore, registry: Registry,
                                                                      tmp_path: Path) -> None:
    model = store.get("tiny")
    ref = f"{registry.host}/ai/tiny:pushed"
    async with RegistryClient.open() as client:
        await client.push(ref, store, source="tiny")
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}").stdout
    manifest = json.loads(raw)
    assert sha256_digest(raw) == model.id
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.docker.ai.gguf.v3", "application/vnd.docker.ai.chat.template.jinja"]
    config = skopeo("inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}").stdout
    assert sha256_digest(config) == model.manifest.config.digest
    assert json.loads(config)["config"]["format"] == "gguf"
    # Back into a store of ours, by skopeo writing the OCI layout directly.
    other = ModelStore(tmp_path / "other")
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{other.root}:docker.io/ai/back:latest")
    assert other.resolve("back") == model.id
    assert other.get("ai/back:latest").tags == ("docker.io/ai/back:latest",)
    bundle = other.bundle("back")
    assert (bundle / "model.gguf").read_bytes() == (store.bundle("tiny") / "model.gguf").read_bytes()
    assert other.check(verify_digests=True) == []


def test_skopeo_reads_a_store_with_several_models(store: ModelStore, tmp_path: Path) -> None:
    package_gguf(store, write_gguf(tmp_path / "b.gguf", seed=3), tags=["second", "second:v2"])
    store.bundle("second")
    copy = tmp_path / "copy"
    skopeo("copy", f"oci:{store.root}:docker.io/ai/second:v2", f"oci:{copy}:x")
    index = json.loads((copy / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [store.resolve("second:v2")]
