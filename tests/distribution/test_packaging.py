"""Packaging (DMR v0.1 artifacts), repackaging, and the export/load tar format."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from modelrunner.distribution import (
    DigestMismatch,
    InvalidArchive,
    InvalidArgument,
    InvalidGGUF,
    ModelStore,
    export_tar,
    iter_export_tar,
    load_tar,
    package_gguf,
    read_gguf,
    repackage,
)
from modelrunner.distribution.oci import sha256_digest

from tests.distribution.helpers import write_gguf, write_shards


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    license_path = tmp_path / "LICENSE"
    license_path.write_text("Apache-2.0\n")
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    return {
        "gguf": write_gguf(tmp_path / "weights.gguf"),
        "license": license_path,
        "template": template,
        "mmproj": write_gguf(tmp_path / "mmproj.gguf", arch="clip", seed=9),
    }


def _manifest(store: ModelStore, model_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads(store.blob_path(model_id).read_bytes())


def test_artifact_matches_dmr_format(store: ModelStore, inputs: dict[str, Path]) -> None:
    result = package_gguf(store, inputs["gguf"], licenses=[inputs["license"]],
                          chat_template=inputs["template"], mmproj=inputs["mmproj"], tags=["ai/tiny:q"])
    manifest = _manifest(store, result.model_id)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert "artifactType" not in manifest
    assert manifest["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.docker.ai.gguf.v3",
        "application/vnd.docker.ai.license",
        "application/vnd.docker.ai.chat.template.jinja",
        "application/vnd.docker.ai.mmproj",
    ]
    assert manifest["layers"][0]["annotations"] == {"org.cncf.model.filepath": "weights.gguf"}
    for layer, source in zip(manifest["layers"], ("gguf", "license", "template", "mmproj"), strict=True):
        data = inputs[source].read_bytes()
        assert layer["digest"] == sha256_digest(data) and layer["size"] == len(data)
    config = json.loads(store.blob_path(manifest["config"]["digest"]).read_bytes())
    info = read_gguf(inputs["gguf"])
    assert config["config"] == {
        "format": "gguf",
        "quantization": "F16",
        "parameters": info.parameters_label,
        "architecture": "llama",
        "size": info.size_label,
        "gguf": dict(sorted(info.metadata.items())),
        "context_size": 2048,
    }
    diff_ids = [layer["digest"] for layer in manifest["layers"]]
    assert config["rootfs"] == {"type": "rootfs", "diff_ids": diff_ids}
    assert result.tags == ("docker.io/ai/tiny:q",)


def test_same_input_same_digest(tmp_path: Path, inputs: dict[str, Path]) -> None:
    first = package_gguf(ModelStore(tmp_path / "a"), inputs["gguf"], licenses=[inputs["license"]])
    second = package_gguf(ModelStore(tmp_path / "b"), inputs["gguf"], licenses=[inputs["license"]])
    assert first.model_id == second.model_id
    moment = datetime(2025, 4, 3, 10, tzinfo=UTC)
    dated = package_gguf(ModelStore(tmp_path / "c"), inputs["gguf"], created=moment)
    assert dated.model_id != first.model_id
    store = ModelStore(tmp_path / "c")
    assert store.get(dated.model_id).created == int(datetime(2025, 4, 3, 10, tzinfo=UTC).timestamp())
    assert store.get(dated.model_id).config.created == "2025-04-03T10:00:00Z"


def test_sharded_gguf(store: ModelStore, tmp_path: Path) -> None:
    shards = write_shards(tmp_path, 3)
    result = package_gguf(store, shards[0], tags=["split"])
    manifest = _manifest(store, result.model_id)
    digests = [sha256_digest(p.read_bytes()) for p in shards]
    assert [layer["digest"] for layer in manifest["layers"]] == digests
    assert result.info.shard_count == 3
    bundle = store.bundle("split")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "config.json", "model-00001-of-00003.gguf", "model-00002-of-00003.gguf", "model-00003-of-00003.gguf"]
    assert (bundle / "model-00002-of-00003.gguf").read_bytes() == shards[1].read_bytes()


def test_context_size_override_and_validation(store: ModelStore, inputs: dict[str, Path]) -> None:
    result = package_gguf(store, inputs["gguf"], context_size=8192)
    assert store.get(result.model_id).config.context_size == 8192
    for bad in (0, -1, 2**31, True):
        with pytest.raises(InvalidArgument):
            package_gguf(store, inputs["gguf"], context_size=bad)  # type: ignore[arg-type]


def test_bad_inputs_are_refused(store: ModelStore, tmp_path: Path, inputs: dict[str, Path]) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"hello")
    with pytest.raises(InvalidGGUF):
        package_gguf(store, not_gguf)
    with pytest.raises(InvalidGGUF):
        package_gguf(store, inputs["gguf"], mmproj=not_gguf)
    template = tmp_path / "bad.jinja"
    template.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidArgument):
        package_gguf(store, inputs["gguf"], chat_template=template)
    assert store.list() == []


def test_repackage_shares_layers(store: ModelStore, inputs: dict[str, Path]) -> None:
    source = package_gguf(store, inputs["gguf"], tags=["base"]).model_id
    blobs_before = set((store.root / "blobs" / "sha256").iterdir())
    derived = repackage(store, "base", "base:ctx4k", context_size=4096)
    new_blobs = set((store.root / "blobs" / "sha256").iterdir()) - blobs_before
    assert derived != source
    assert len(new_blobs) == 2  # the new config and the new manifest; no layer copied
    old, new = store.get(source), store.get(derived)
    assert new.manifest.layers == old.manifest.layers
    assert new.config.context_size == 4096 and old.config.context_size == 2048
    assert new.tags == ("docker.io/ai/base:ctx4k",)
    with pytest.raises(InvalidArgument):
        repackage(store, "base", "base:bad", context_size=0)


def test_export_is_dmr_tar_and_deterministic(store: ModelStore, inputs: dict[str, Path]) -> None:
    model_id = package_gguf(store, inputs["gguf"], licenses=[inputs["license"]], tags=["m"]).model_id
    first = b"".join(iter_export_tar(store, "m"))
    second = b"".join(iter_export_tar(store, model_id))
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as archive:
        names = archive.getnames()
        manifest = archive.extractfile("manifest.json")
        assert manifest is not None
        raw = manifest.read()
    model = store.get("m")
    blob_names = [f"blobs/sha256/{b.digest[7:]}" for b in (*model.manifest.layers, model.manifest.config)]
    assert names == ["blobs", "blobs/sha256", *blob_names, "manifest.json"]
    assert sha256_digest(raw) == model_id  # the raw manifest, so the ID survives


def test_export_load_round_trip(tmp_path: Path, store: ModelStore, inputs: dict[str, Path]) -> None:
    model_id = package_gguf(store, inputs["gguf"], chat_template=inputs["template"], tags=["m"]).model_id
    buffer = io.BytesIO()
    export_tar(store, "m", buffer)
    other = ModelStore(tmp_path / "other")
    assert load_tar(other, io.BytesIO(buffer.getvalue())) == model_id
    assert other.get(model_id).tags == ()  # load applies no tag by itself
    assert load_tar(other, io.BytesIO(buffer.getvalue()), ["loaded"]) == model_id
    assert other.resolve("loaded") == model_id
    original, copy = store.bundle("m"), other.bundle("loaded")
    for name in ("model.gguf", "template.jinja", "config.json"):
        assert (original / name).read_bytes() == (copy / name).read_bytes()


def _archive(entries: list[tuple[str, bytes]], *, symlink: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    return buffer.getvalue()


def test_load_rejects_bad_archives(tmp_path: Path, store: ModelStore, inputs: dict[str, Path]) -> None:
    package_gguf(store, inputs["gguf"], tags=["m"])
    good = b"".join(iter_export_tar(store, "m"))
    with tarfile.open(fileobj=io.BytesIO(good)) as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers() if m.isfile()]  # type: ignore[union-attr]
    target = ModelStore(tmp_path / "target")
    blob_name, blob = members[0]
    tampered = bytearray(blob)
    tampered[100] ^= 0xFF
    with pytest.raises(DigestMismatch):
        load_tar(target, io.BytesIO(_archive([(blob_name, bytes(tampered)), *members[1:]])))
    assert not target.has_blob("sha256:" + blob_name.rsplit("/", 1)[1])
    assert target.list() == []
    with pytest.raises(InvalidArchive, match="lacks blob"):
        load_tar(target, io.BytesIO(_archive(members[1:])))
    with pytest.raises(InvalidArchive, match=r"no manifest\.json"):
        load_tar(target, io.BytesIO(_archive(members[:-1])))
    with pytest.raises(InvalidArchive, match="unexpected entry"):
        load_tar(target, io.BytesIO(_archive([*members, ("../escape", b"x")])))
    with pytest.raises(InvalidArchive, match="unexpected entry"):
        load_tar(target, io.BytesIO(_archive(members, symlink="blobs/sha256/link")))
    with pytest.raises(InvalidArchive):
        load_tar(target, io.BytesIO(good[: len(good) // 2]))
    with pytest.raises(InvalidArchive):
        load_tar(target, io.BytesIO(b"not a tar at all" * 100))
    assert target.list() == []
    assert target.check() == []
