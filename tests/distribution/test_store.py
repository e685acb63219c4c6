"""The OCI layout store: resolution, tags, DMR's delete rules, bundles, locking, consistency."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from modelrunner.distribution import (
    AmbiguousReference,
    Conflict,
    DigestMismatch,
    IngestBusy,
    InvalidReference,
    ModelNotFound,
    ModelStore,
    StoreCorrupted,
    default_models_path,
    package_gguf,
    repackage,
)
from modelrunner.distribution.oci import sha256_digest

from tests.distribution.helpers import write_gguf

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def _package(store: ModelStore, tmp_path: Path, name: str, seed: int = 0, tags: tuple[str, ...] = ()) -> str:
    path = write_gguf(tmp_path / f"{name}-{seed}.gguf", seed=seed)
    return package_gguf(store, path, tags=tags or (name,)).model_id


def test_new_store_is_an_oci_layout(store: ModelStore) -> None:
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    assert (store.root / "blobs" / "sha256").is_dir()
    assert store.list() == []


def test_refuses_a_directory_that_is_not_a_layout(tmp_path: Path) -> None:
    root = tmp_path / "dmr"
    root.mkdir()
    (root / "models.json").write_text("{}")
    with pytest.raises(StoreCorrupted, match="Docker Model Runner"):
        ModelStore(root)


def test_index_holds_one_descriptor_per_tag(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "smollm2", tags=("smollm2", "ai/smollm2:v1"))
    index = json.loads((store.root / "index.json").read_text())
    names = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert names == ["docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:v1"]
    assert {m["digest"] for m in index["manifests"]} == {model_id}
    # Model ID = sha256 of the raw manifest bytes, which is the manifest blob.
    assert sha256_digest(store.blob_path(model_id).read_bytes()) == model_id


def test_resolve_by_every_kind_of_reference(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "smollm2")
    hex_id = model_id.partition(":")[2]
    for ref in ("smollm2", "ai/smollm2", "ai/smollm2:latest", "docker.io/ai/smollm2:latest", model_id,
                hex_id, hex_id[:12], f"ai/smollm2@{model_id}", "  SmolLM2  "):
        assert store.resolve(ref) == model_id, ref
    with pytest.raises(ModelNotFound):
        store.resolve("ai/other")
    with pytest.raises(ModelNotFound):
        store.resolve("0123456789ab")
    with pytest.raises(InvalidReference):
        store.resolve("  ")


def test_partial_name_fallback(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "x", tags=("myorg/qwen:v1",))
    assert store.resolve("qwen") == model_id
    assert store.resolve("qwen:v1") == model_id
    with pytest.raises(ModelNotFound):
        store.resolve("qwen:v2")
    with pytest.raises(ModelNotFound):
        store.resolve("qwen", partial=False)
    _package(store, tmp_path, "y", seed=1, tags=("otherorg/qwen:v1",))
    with pytest.raises(AmbiguousReference) as info:
        store.resolve("qwen")
    assert info.value.status_hint == 409


def test_get_returns_dmr_model_object(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "smollm2")
    model = store.get("smollm2")
    body = model.to_dmr_json()
    assert body["id"] == model_id
    assert body["tags"] == ["docker.io/ai/smollm2:latest"]
    assert body["created"] == 0
    assert body["config"]["format"] == "gguf"
    assert model.short_id == model_id[7:19]
    assert model.size == sum(layer.size for layer in model.manifest.layers)


def test_tag_is_unique_and_moving_it_leaves_the_old_model_untagged(store: ModelStore, tmp_path: Path) -> None:
    first = _package(store, tmp_path, "m", seed=1)
    second = _package(store, tmp_path, "n", seed=2)
    assert store.tag(second, "m") == "docker.io/ai/m:latest"
    assert store.resolve("m") == second
    models = {m.id: m.tags for m in store.list()}
    assert models[first] == ()  # untagged, still listed and reachable by ID
    assert store.get(first).id == first
    assert set(models[second]) == {"docker.io/ai/m:latest", "docker.io/ai/n:latest"}
    with pytest.raises(InvalidReference):
        store.tag(second, f"ai/x@{second}")


def test_delete_follows_dmr(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "a", tags=("a", "b"))
    # A tag of a model with two tags: untag only.
    assert [x.to_json() for x in store.delete("a")] == [{"Untagged": "docker.io/ai/a:latest"}]
    assert store.resolve("b") == model_id
    store.tag("b", "c")
    # The ID of a model with several tags: 409 without force.
    with pytest.raises(Conflict, match="must be forced") as info:
        store.delete(model_id)
    assert info.value.status_hint == 409
    actions = [x.to_json() for x in store.delete(model_id, force=True)]
    assert actions == [{"Untagged": "docker.io/ai/b:latest"}, {"Untagged": "docker.io/ai/c:latest"},
                       {"Deleted": model_id}]
    assert store.list() == []
    assert not store.blob_path(model_id).exists()
    assert list((store.root / "blobs" / "sha256").iterdir()) == []


def test_deleting_the_last_tag_deletes_the_model(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "a")
    store.bundle("a")
    actions = [x.to_json() for x in store.delete("a")]
    assert actions == [{"Untagged": "docker.io/ai/a:latest"}, {"Deleted": model_id}]
    assert not (store.root / "bundles" / "sha256" / model_id[7:]).exists()
    with pytest.raises(ModelNotFound):
        store.delete("a")


def test_shared_blobs_survive_deletion(store: ModelStore, tmp_path: Path) -> None:
    original = _package(store, tmp_path, "base")
    derived = repackage(store, "base", "ai/base:ctx512", context_size=512)
    store.delete(original, force=True)
    model = store.get(derived)
    for blob in model.manifest.blobs():
        assert store.has_blob(blob.digest)
    bundle = store.bundle(derived)
    assert (bundle / "model.gguf").stat().st_size == model.manifest.layers[0].size
    assert store.check(verify_digests=True) == []


def test_bundle_is_hard_links_to_read_only_blobs(store: ModelStore, tmp_path: Path) -> None:
    gguf_path = write_gguf(tmp_path / "w.gguf")
    mmproj = write_gguf(tmp_path / "mmproj.gguf", arch="clip", seed=5)
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    result = package_gguf(store, gguf_path, chat_template=template, mmproj=mmproj, tags=["vision"])
    bundle = store.bundle("vision")
    assert sorted(os.listdir(bundle)) == ["config.json", "model.gguf", "model.mmproj", "template.jinja"]
    model = store.get(result.model_id)
    by_type = {layer.media_type: layer.digest for layer in model.manifest.layers}
    expected = {
        "model.gguf": by_type["application/vnd.docker.ai.gguf.v3"],
        "model.mmproj": by_type["application/vnd.docker.ai.mmproj"],
        "template.jinja": by_type["application/vnd.docker.ai.chat.template.jinja"],
        "config.json": model.manifest.config.digest,
    }
    for name, digest in expected.items():
        linked = (bundle / name).stat()
        assert linked.st_ino == store.blob_path(digest).stat().st_ino
        assert stat.S_IMODE(linked.st_mode) == 0o444
    assert (bundle / "model.gguf").read_bytes() == gguf_path.read_bytes()
    # A damaged bundle is rebuilt.
    (bundle / "model.gguf").unlink()
    assert store.bundle("vision") == bundle
    assert (bundle / "model.gguf").stat().st_ino == store.blob_path(expected["model.gguf"]).stat().st_ino


def test_missing_blob_is_reported(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "a")
    layer = store.get("a").manifest.layers[0]
    os.unlink(store.blob_path(layer.digest))
    problems = store.check()
    assert any(layer.digest in p for p in problems)
    with pytest.raises(StoreCorrupted):
        store.bundle(model_id)


def test_tampered_blob_found_by_check(store: ModelStore, tmp_path: Path) -> None:
    _package(store, tmp_path, "a")
    layer = store.get("a").manifest.layers[0]
    path = store.blob_path(layer.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("does not match" in p for p in store.check(verify_digests=True))


def test_corrupt_index_is_a_typed_error(store: ModelStore) -> None:
    (store.root / "index.json").write_text("{not json")
    with pytest.raises(StoreCorrupted, match=r"index\.json"):
        store.list()


def test_no_temp_files_left_behind(store: ModelStore, tmp_path: Path) -> None:
    _package(store, tmp_path, "a")
    store.tag("a", "b")
    store.bundle("a")
    store.delete("b")
    leftovers = [p.name for p in store.root.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []


def test_purge(store: ModelStore, tmp_path: Path) -> None:
    _package(store, tmp_path, "a")
    store.bundle("a")
    store.purge()
    assert store.list() == []
    assert list((store.root / "blobs" / "sha256").iterdir()) == []
    assert (store.root / "oci-layout").is_file()


def test_ingest_resumes_and_verifies(store: ModelStore) -> None:
    data = os.urandom(300_000)
    digest = sha256_digest(data)
    ingest = store.open_ingest(digest, len(data))
    assert ingest is not None
    ingest.write(data[:100_000])
    with pytest.raises(IngestBusy):
        store.open_ingest(digest, len(data))  # one writer per blob
    ingest.close()
    assert store.incomplete_size(digest) == 100_000
    assert not store.has_blob(digest)
    resumed = store.open_ingest(digest, len(data))
    assert resumed is not None and resumed.offset == 100_000
    resumed.write(data[100_000:])
    resumed.commit()
    assert store.has_blob(digest) and store.incomplete_size(digest) == 0
    assert store.open_ingest(digest, len(data)) is None


def test_ingest_rejects_wrong_content(store: ModelStore) -> None:
    data = os.urandom(1000)
    digest = sha256_digest(data)
    ingest = store.open_ingest(digest, len(data))
    assert ingest is not None
    ingest.write(os.urandom(1000))
    with pytest.raises(DigestMismatch):
        ingest.commit()
    assert not store.has_blob(digest)
    assert store.incomplete_size(digest) == 0
    too_long = store.open_ingest(digest, len(data))
    assert too_long is not None
    with pytest.raises(DigestMismatch):
        too_long.write(b"x" * 1001)
    too_long.discard()


def test_concurrent_processes_lose_no_tag(store: ModelStore, tmp_path: Path) -> None:
    """Eight processes each add ten tags at once: every one of the 80 tags survives."""
    model_id = _package(store, tmp_path, "base")
    script = (
        "import sys\n"
        "from modelrunner.distribution import ModelStore\n"
        "store = ModelStore(sys.argv[1])\n"
        "for i in range(10):\n"
        "    store.tag(sys.argv[2], f'ai/p{sys.argv[3]}:t{i}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(store.root), model_id, str(n)], cwd=REPO)
             for n in range(8)]
    assert [p.wait(60) for p in procs] == [0] * 8
    tags = set(store.get(model_id).tags)
    assert len(tags) == 81
    assert store.check() == []


def test_default_models_path() -> None:
    assert default_models_path({"MODELS_PATH": "/srv/models"}) == Path("/srv/models")
    assert default_models_path({}, uid=0) == Path("/var/lib/modelrunner/models")
    assert default_models_path({"XDG_DATA_HOME": "/x"}, uid=1000) == Path("/x/modelrunner/models")
    expected = Path("/home/u/.local/share/modelrunner/models")
    assert default_models_path({}, uid=1000, home="/home/u") == expected


def test_cleanup_removes_only_old_unused_leftovers(store: ModelStore, tmp_path: Path) -> None:
    model_id = _package(store, tmp_path, "kept")
    data = os.urandom(5000)
    digest = sha256_digest(data)
    stale = store.open_ingest(digest, len(data))
    assert stale is not None
    stale.write(data[:100])
    stale.close()
    busy_data = os.urandom(5000)
    busy = store.open_ingest(sha256_digest(busy_data), len(busy_data))
    assert busy is not None
    busy.write(busy_data[:100])
    orphan = store.write_blob(b"orphan blob")
    assert store.cleanup() == []  # everything is fresh
    past = 1_000_000_000
    for path in [*(store.root / "ingest" / "sha256").iterdir(), store.blob_path(orphan)]:
        os.utime(path, (past, past))
    removed = {p.name for p in store.cleanup()}
    assert f"{digest[7:]}.incomplete" in removed and f"{digest[7:]}.lock" in removed
    assert orphan[7:] in removed
    assert store.incomplete_size(sha256_digest(busy_data)) == 100  # held by a writer: kept
    busy.close()
    assert store.get(model_id).id == model_id
    assert store.check(verify_digests=True) == []


def test_default_registry_applies_to_names_without_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", default_registry="registry.local:5000")
    model_id = package_gguf(store, write_gguf(tmp_path / "w.gguf"), tags=["m"]).model_id
    assert store.get(model_id).tags == ("registry.local:5000/ai/m:latest",)
    assert store.resolve("ai/m") == store.resolve("registry.local:5000/ai/m:latest") == model_id
