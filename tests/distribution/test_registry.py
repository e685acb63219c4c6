"""The registry client against Debian's docker-registry: push/pull round trips with every auth
variant, resume after a cut connection, tamper rejection, single-flight and the pull limit."""

from __future__ import annotations

import base64
import json
import os
import stat
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trio
from modelrunner.distribution import (
    DigestMismatch,
    ModelStore,
    ProgressEvent,
    RegistryClient,
    RegistryConfig,
    RegistryError,
    RegistryUnauthorized,
    RemoteNotFound,
    UnsupportedMediaType,
    package_gguf,
)
from modelrunner.distribution.oci import sha256_digest

from tests.distribution.helpers import write_gguf
from tests.fixtures.registry import Registry, TcpProxy, write_docker_config

pytestmark = pytest.mark.integration
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _big_gguf(path: Path, megabytes: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = megabytes * 1024 * 1024 // (1024 * 4)
    return write_gguf(path, tensors={"blk.0.ffn_up.weight": rng.random((rows, 1024), dtype=np.float32)},
                      file_type=0, seed=seed)


@pytest.fixture
def source(tmp_path: Path) -> tuple[ModelStore, str]:
    store = ModelStore(tmp_path / "source")
    license_path = tmp_path / "LICENSE"
    license_path.write_text("MIT\n")
    result = package_gguf(store, _big_gguf(tmp_path / "w.gguf", 4), licenses=[license_path], tags=["tiny"])
    return store, result.model_id


def _bundle_bytes(store: ModelStore, ref: str) -> dict[str, bytes]:
    bundle = store.bundle(ref)
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir())}


def _blob_gets(proxy: TcpProxy, digest: str) -> list[str]:
    return [r for r in proxy.requests if r.startswith("GET ") and f"/blobs/{digest}" in r.split("\r\n")[0]]


@pytest.mark.parametrize("auth", ["none", "basic", "token"])
async def test_round_trip_is_byte_identical(auth: str, start_registry: Callable[..., Registry],
                                            source: tuple[ModelStore, str], tmp_path: Path) -> None:
    registry = start_registry(auth)
    store, model_id = source
    docker_config = None
    if auth != "none":
        docker_config = write_docker_config(tmp_path / "docker" / "config.json", registry)
    ref = f"{registry.host}/ai/tiny:v1"
    events: list[ProgressEvent] = []

    async def progress(event: ProgressEvent) -> None:
        events.append(event)

    async with RegistryClient.open(RegistryConfig(docker_config_path=docker_config)) as client:
        pushed = await client.push(ref, store, source="tiny", progress=progress)
        assert pushed.model_id == model_id
        assert events[-1].to_json()["message"] == "Model pushed successfully"
        before = _bundle_bytes(store, "tiny")
        store.delete("tiny")
        assert store.list() == []
        result = await client.pull(ref, store, progress=progress)
    assert result.model_id == model_id and not result.cached
    assert store.get(ref).tags == (ref,)
    assert _bundle_bytes(store, ref) == before
    assert store.check(verify_digests=True) == []
    lines = [json.loads(e.to_json_line()) for e in events]
    assert lines[-1] == {"type": "success", "message": "Model pulled successfully", "total": 0,
                         "layer": {"size": 0, "current": 0}, "mode": "pull"}
    pulls = [line for line in lines if line["type"] == "progress" and line["mode"] == "pull"]
    total = sum(layer.size for layer in store.get(ref).manifest.layers)
    assert pulls and all(line["total"] == total for line in pulls)
    layer_ids = {layer.digest for layer in store.get(ref).manifest.layers}
    assert {line["layer"]["id"] for line in pulls} == layer_ids
    assert pulls[-1]["layer"]["current"] == pulls[-1]["layer"]["size"] or any(
        line["layer"]["current"] == line["layer"]["size"] for line in pulls)
    if auth == "token":
        assert registry.token_server is not None
        assert any(r["account"] == registry.username and "push" in r["scope"]
                   for r in registry.token_server.requests)


async def test_explicit_bearer_token(registry_token: Registry, source: tuple[ModelStore, str],
                                     tmp_path: Path) -> None:
    store, model_id = source
    assert registry_token.token_server is not None
    scope = "repository:ai/tiny:pull,push"
    url = f"{registry_token.token_server.url}?service=modelrunner-test-registry&scope={scope}"
    request = urllib.request.Request(url, headers={
        "Authorization": "Basic " + base64.b64encode(
            f"{registry_token.username}:{registry_token.password}".encode()).decode()})
    with urllib.request.urlopen(request) as response:  # noqa: ASYNC210 - fixture-style setup
        token = json.loads(response.read())["token"]
    ref = f"{registry_token.host}/ai/tiny:bearer"
    async with RegistryClient.open(RegistryConfig()) as client:
        await client.push(ref, store, source="tiny", bearer_token=token)
        other = ModelStore(tmp_path / "other")
        result = await client.pull(ref, other, bearer_token=token)
        assert result.model_id == model_id
        with pytest.raises(RegistryUnauthorized) as info:
            await client.pull(ref, ModelStore(tmp_path / "third"))  # anonymous: nothing granted
        assert info.value.status_hint == 401


async def test_wrong_credentials_are_401(registry_basic: Registry, source: tuple[ModelStore, str],
                                         tmp_path: Path) -> None:
    store, _ = source
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {registry_basic.host: {
        "auth": base64.b64encode(b"alice:wrong").decode()}}}))
    async with RegistryClient.open(RegistryConfig(docker_config_path=config)) as client:
        with pytest.raises(RegistryUnauthorized):
            await client.push(f"{registry_basic.host}/ai/tiny:x", store, source="tiny")
    async with RegistryClient.open(RegistryConfig()) as client:
        with pytest.raises(RegistryUnauthorized):
            await client.pull(f"{registry_basic.host}/ai/tiny:x", store)


async def test_credential_helper(registry_basic: Registry, source: tuple[ModelStore, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store, model_id = source
    helper_dir = tmp_path / "bin"
    helper_dir.mkdir()
    helper = helper_dir / "docker-credential-mrtest"
    answer = json.dumps({"ServerURL": registry_basic.host, "Username": registry_basic.username,
                         "Secret": registry_basic.password})
    helper.write_text(f"#!/bin/sh\nread server\n[ \"$server\" = \"{registry_basic.host}\" ] || exit 1\n"
                      f"echo '{answer}'\n")
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "mrtest"}))
    ref = f"{registry_basic.host}/ai/tiny:helper"
    async with RegistryClient.open(RegistryConfig(docker_config_path=config)) as client:
        await client.push(ref, store, source="tiny")
        assert (await client.inspect_remote(ref)).id == model_id


async def test_not_found_is_404(registry: Registry, tmp_path: Path) -> None:
    async with RegistryClient.open() as client:
        with pytest.raises(RemoteNotFound) as info:
            await client.pull(f"{registry.host}/ai/missing:latest", ModelStore(tmp_path / "s"))
    assert info.value.status_hint == 404


def _put(url: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
    urllib.request.urlopen(request).close()


def _push_blob(registry: Registry, repository: str, data: bytes) -> str:
    digest = sha256_digest(data)
    start = urllib.request.Request(f"{registry.url}/v2/{repository}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(start) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    _put(f"{location}{'&' if '?' in location else '?'}digest={digest}", data)
    return digest


def _push_container_image(registry: Registry, repository: str, tag: str) -> str:
    """A (tiny) container image, which is not a model."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = _push_blob(registry, repository, config.encode())
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": []}).encode()
    _put(f"{registry.url}/v2/{repository}/manifests/{tag}", manifest, OCI_MANIFEST)
    return sha256_digest(manifest)


async def test_container_images_are_422(registry: Registry, tmp_path: Path) -> None:
    _push_container_image(registry, "library/busybox", "latest")
    store = ModelStore(tmp_path / "s")
    async with RegistryClient.open() as client:
        with pytest.raises(UnsupportedMediaType) as info:
            await client.pull(f"{registry.host}/library/busybox:latest", store)
    assert info.value.status_hint == 422
    assert "application/vnd.docker.ai.model.config.v0.1+json" in str(info.value)
    assert store.list() == [] and list((store.root / "blobs" / "sha256").iterdir()) == []


async def test_index_entry_holding_the_model(registry: Registry, source: tuple[ModelStore, str],
                                             tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/multi:model", store, source="tiny")
        image = _push_container_image(registry, "ai/multi", "image")
        manifest_size = len(store.blob_path(model_id).read_bytes())
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [
                                {"mediaType": OCI_MANIFEST, "digest": image, "size": 100},
                                {"mediaType": OCI_MANIFEST, "digest": model_id, "size": manifest_size},
                            ]}).encode()
        _put(f"{registry.url}/v2/ai/multi/manifests/index", index, "application/vnd.oci.image.index.v1+json")
        result = await client.pull(f"{registry.host}/ai/multi:index", ModelStore(tmp_path / "s"))
    assert result.model_id == model_id


async def test_pull_resumes_after_the_connection_is_cut(registry: Registry, source: tuple[ModelStore, str],
                                                        tcp_proxy: Callable[..., TcpProxy],
                                                        tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:cut", store, source="tiny")
    layer = store.get("tiny").manifest.layers[0]
    proxy = tcp_proxy(registry.host, cut_after=layer.size // 2)
    target = ModelStore(tmp_path / "target")
    async with RegistryClient.open() as client:
        result = await client.pull(f"{proxy.host}/ai/tiny:cut", target)
    assert result.model_id == model_id
    gets = _blob_gets(proxy, layer.digest)
    assert len(gets) == 2
    assert "range: bytes=" not in gets[0].lower()
    assert "range: bytes=" in gets[1].lower()
    # The second request fetched about half the layer, not all of it again.
    assert proxy.bytes_to_client < layer.size * 1.6
    assert target.check(verify_digests=True) == []


async def test_partial_download_resumes_in_the_next_pull(registry: Registry, source: tuple[ModelStore, str],
                                                         tcp_proxy: Callable[..., TcpProxy],
                                                         tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:resume", store, source="tiny")
    layer = store.get("tiny").manifest.layers[0]
    cutting = tcp_proxy(registry.host, cut_after=layer.size // 3, refuse_after_cut=True)
    target = ModelStore(tmp_path / "target")
    async with RegistryClient.open(RegistryConfig(max_attempts=2)) as client:
        with pytest.raises(RegistryError):
            await client.pull(f"{cutting.host}/ai/tiny:resume", target)
    partial = target.incomplete_size(layer.digest)
    assert 0 < partial < layer.size
    assert target.list() == [] and not target.has_blob(layer.digest)
    clean = tcp_proxy(registry.host)
    async with RegistryClient.open() as client:
        result = await client.pull(f"{clean.host}/ai/tiny:resume", target)
    assert result.model_id == model_id
    gets = _blob_gets(clean, layer.digest)
    assert len(gets) == 1 and f"range: bytes={partial}-" in gets[0].lower()
    assert target.check(verify_digests=True) == []


async def test_tampered_blob_is_rejected(registry: Registry, source: tuple[ModelStore, str],
                                         tmp_path: Path) -> None:
    store, _ = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:bad", store, source="tiny")
    layer = store.get("tiny").manifest.layers[0]
    data_path = registry.blob_data_path(layer.digest)
    tampered = bytearray(data_path.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    data_path.write_bytes(bytes(tampered))
    target = ModelStore(tmp_path / "target")
    async with RegistryClient.open() as client:
        with pytest.raises(DigestMismatch):
            await client.pull(f"{registry.host}/ai/tiny:bad", target)
    assert target.list() == []
    assert not target.has_blob(layer.digest)
    assert target.incomplete_size(layer.digest) == 0
    assert target.check() == []


async def test_concurrent_pulls_of_one_ref_download_once(registry: Registry, source: tuple[ModelStore, str],
                                                         tcp_proxy: Callable[..., TcpProxy],
                                                         tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:once", store, source="tiny")
    layer = store.get("tiny").manifest.layers[0]
    proxy = tcp_proxy(registry.host, rate=8 * 1024 * 1024)
    target = ModelStore(tmp_path / "target")
    results = []
    async with RegistryClient.open() as client:

        async def pull() -> None:
            results.append(await client.pull(f"{proxy.host}/ai/tiny:once", target))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pull)
            nursery.start_soon(pull)
    assert [r.model_id for r in results] == [model_id, model_id]
    assert sorted(r.shared for r in results) == [False, True]
    assert len(_blob_gets(proxy, layer.digest)) == 1


async def test_at_most_two_pulls_run_at_once(registry: Registry, tmp_path: Path,
                                             tcp_proxy: Callable[..., TcpProxy]) -> None:
    store = ModelStore(tmp_path / "source")
    refs = []
    async with RegistryClient.open() as client:
        for i in range(3):
            package_gguf(store, _big_gguf(tmp_path / f"m{i}.gguf", 1, seed=i), tags=[f"m{i}"])
            await client.push(f"{registry.host}/ai/m{i}:latest", store, source=f"m{i}")
            refs.append(f"ai/m{i}:latest")
    proxy = tcp_proxy(registry.host, rate=2 * 1024 * 1024)
    target = ModelStore(tmp_path / "target")
    seen = []
    async with RegistryClient.open() as client, trio.open_nursery() as nursery:
        for ref in refs:
            nursery.start_soon(client.pull, f"{proxy.host}/{ref}", target)
        while len(target.list()) < 3:
            stats = client.statistics()
            seen.append((stats.pulls_running, stats.pulls_waiting))
            await trio.sleep(0.02)
    assert max(running for running, _ in seen) == 2
    assert (2, 1) in seen
    assert len(target.list()) == 3


async def test_cached_pull_moves_no_blob(registry: Registry, source: tuple[ModelStore, str],
                                         tcp_proxy: Callable[..., TcpProxy], tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:c", store, source="tiny")
        proxy = tcp_proxy(registry.host)
        target = ModelStore(tmp_path / "target")
        await client.pull(f"{proxy.host}/ai/tiny:c", target)
        before = len(proxy.requests)
        events: list[ProgressEvent] = []

        async def progress(event: ProgressEvent) -> None:
            events.append(event)

        again = await client.pull(f"{proxy.host}/ai/tiny:c", target, progress=progress)
    assert again.cached and again.model_id == model_id
    assert [r.split("\r\n")[0].split(" ")[0] for r in proxy.requests[before:]] == ["GET"]  # the manifest only
    assert "/manifests/" in proxy.requests[-1].split("\r\n")[0]
    assert events[-1].message == f"Using cached model: {target.get(model_id).config.size}"


async def test_mirrors_are_tried_first(registry: Registry, source: tuple[ModelStore, str],
                                       tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:latest", store, source="tiny")
    # A dead mirror first, then the real one; Docker Hub itself is never reached (no network here).
    dead = "http://127.0.0.1:9"
    config = RegistryConfig(mirrors=(dead, registry.url))
    async with RegistryClient.open(config) as client:
        result = await client.pull("ai/tiny", ModelStore(tmp_path / "target"))
    assert result.model_id == model_id
    assert result.reference == "docker.io/ai/tiny:latest"


async def test_chunked_push_and_skip_existing(registry: Registry, source: tuple[ModelStore, str],
                                              tmp_path: Path) -> None:
    store, model_id = source
    config = RegistryConfig(chunked_upload_threshold=1024 * 1024, upload_chunk_size=700 * 1024)
    ref = f"{registry.host}/ai/tiny:chunked"
    async with RegistryClient.open(config) as client:
        first = await client.push(ref, store, source="tiny")
        second = await client.push(ref, store, source="tiny")
        assert first.uploaded_bytes > 4 * 1024 * 1024 and first.skipped_blobs == 0
        assert second.uploaded_bytes == 0 and second.skipped_blobs == 3
        remote = await client.inspect_remote(ref)
        target = ModelStore(tmp_path / "target")
        await client.pull(ref, target)
    assert remote.id == model_id
    assert remote.to_dmr_json()["config"]["format"] == "gguf"
    assert _bundle_bytes(target, ref) == _bundle_bytes(store, "tiny")


def test_config_from_environment(tmp_path: Path) -> None:
    config = RegistryConfig.from_environ({
        "INSECURE_REGISTRY": "true",
        "MODEL_RUNNER_REGISTRY_MIRRORS": " m1.example:5000 , https://m2.example ",
        "DOCKER_CONFIG": str(tmp_path), "DEFAULT_REGISTRY": "registry.local:5000"})
    assert config.insecure
    assert config.mirrors == ("m1.example:5000", "https://m2.example")
    assert config.docker_config_path == tmp_path / "config.json"
    assert config.default_registry == "registry.local:5000"
    plain = RegistryConfig.from_environ({}, home="/home/u")
    assert not plain.insecure and plain.mirrors == ()
    assert plain.docker_config_path == Path("/home/u/.docker/config.json")


async def test_cancelled_pull_hands_over_to_a_waiter(registry: Registry, source: tuple[ModelStore, str],
                                                     tcp_proxy: Callable[..., TcpProxy],
                                                     tmp_path: Path) -> None:
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:handover", store, source="tiny")
    proxy = tcp_proxy(registry.host, rate=4 * 1024 * 1024)
    target = ModelStore(tmp_path / "target")
    results = []
    async with RegistryClient.open() as client, trio.open_nursery() as nursery:
        leader_scope = trio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await client.pull(f"{proxy.host}/ai/tiny:handover", target)

        async def follower() -> None:
            results.append(await client.pull(f"{proxy.host}/ai/tiny:handover", target))

        nursery.start_soon(leader)
        await trio.sleep(0.3)
        nursery.start_soon(follower)
        await trio.sleep(0.2)
        leader_scope.cancel()
    assert [r.model_id for r in results] == [model_id]
    assert not results[0].shared
    assert target.check(verify_digests=True) == []


@pytest.mark.parametrize("range_mode", ["strip", "zero"])
async def test_resume_is_refused_unless_the_server_honours_the_range(
        range_mode: str, registry: Registry, source: tuple[ModelStore, str],
        tcp_proxy: Callable[..., TcpProxy], tmp_path: Path) -> None:
    """A 200 to a Range request, or a 206 from another offset, restarts the blob from zero."""
    store, model_id = source
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/tiny:range", store, source="tiny")
    layer = store.get("tiny").manifest.layers[0]
    cutting = tcp_proxy(registry.host, cut_after=layer.size // 2, refuse_after_cut=True)
    target = ModelStore(tmp_path / "target")
    async with RegistryClient.open(RegistryConfig(max_attempts=1)) as client:
        with pytest.raises(RegistryError):
            await client.pull(f"{cutting.host}/ai/tiny:range", target)
    partial = target.incomplete_size(layer.digest)
    assert partial > 0
    odd = tcp_proxy(registry.host, range_mode=range_mode)
    async with RegistryClient.open() as client:
        result = await client.pull(f"{odd.host}/ai/tiny:range", target)
    assert result.model_id == model_id
    gets = _blob_gets(odd, layer.digest)
    assert f"range: bytes={partial}-" in gets[0].lower()  # what we asked for
    assert odd.bytes_to_client >= layer.size  # the whole blob came again
    assert target.check(verify_digests=True) == []
