"""The engine image tarball from hack/build-engine-llamacpp: structure, config, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pack_engine_image

from tests.fixtures.engine import EngineBuild


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _blob(members: dict[str, bytes], digest: str) -> bytes:
    data = members["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_image_layout_config_and_layer(llamacpp_engine: EngineBuild) -> None:
    members = _members(llamacpp_engine.image_tar)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"]["io.containerd.image.name"] == llamacpp_engine.image_ref
    manifest = json.loads(_blob(members, descriptor["digest"]))
    config = json.loads(_blob(members, manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/llama-server"]
    assert config["config"]["User"] == "65532:65532"
    labels = config["config"]["Labels"]
    assert labels["io.modelrunner.llamacpp.build"] == "11312"
    assert labels["io.modelrunner.llamacpp.variant"] == "cpu"

    (layer_desc,) = manifest["layers"]
    layer = gzip.decompress(_blob(members, layer_desc["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        entries = {m.name.rstrip("/"): m for m in tar.getmembers()}
        passwd = tar.extractfile(entries["etc/passwd"]).read().decode()  # type: ignore[union-attr]
        binary = tar.extractfile(entries["usr/local/bin/llama-server"]).read()  # type: ignore[union-attr]
    assert "engine:x:65532:65532:" in passwd
    for mount_point in ("models", "run/engine", "tmp"):
        assert entries[mount_point].isdir(), mount_point
    assert entries["tmp"].mode == 0o1777
    assert entries["usr/local/bin/llama-server"].mode == 0o755
    assert "usr/share/licenses/llama.cpp/LICENSE" in entries
    assert all(m.mtime == 0 and m.uid == 0 for m in entries.values())
    assert binary == llamacpp_engine.binary.read_bytes()


def test_static_binary_reports_its_build(llamacpp_engine: EngineBuild) -> None:
    version = subprocess.run(
        [str(llamacpp_engine.binary), "--version"], capture_output=True, text=True, check=True
    )
    assert "build 11312" in version.stdout + version.stderr
    ldd = subprocess.run(["ldd", str(llamacpp_engine.binary)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr


def test_packing_is_deterministic(llamacpp_engine: EngineBuild, tmp_path: Path) -> None:
    license_path = llamacpp_engine.binary.parent.parent / "LICENSE.llama.cpp"
    args = (str(llamacpp_engine.binary), str(license_path), "11312", "cpu", llamacpp_engine.image_ref)
    first = pack_engine_image.pack(*args)
    second = pack_engine_image.pack(*args)
    assert first == second
    assert first == llamacpp_engine.image_tar.read_bytes()
    other_ref = pack_engine_image.pack(*args[:4], "docker.io/modelrunner/llama.cpp:other")
    assert other_ref != first
