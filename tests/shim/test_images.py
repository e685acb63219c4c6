"""Engine images: import from an OCI layout tarball, pull from a registry, resolve, remove."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from modelrunner.shim import content, images
from modelrunner.shim.client import Containerd
from modelrunner.shim.errors import FailedPrecondition, InvalidArgument, NotFound
from modelrunner.shim.proto import containerd_snapshots_pb2 as snapshots_pb

from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.images import TestImage
from tests.shim.helpers import count_resources

pytestmark = pytest.mark.integration


async def test_import_unpacks_and_labels_like_containerd(
    client: Containerd, busybox_image: TestImage, containerd: ContainerdInstance
) -> None:
    image = await images.import_tarball(client, busybox_image.path)
    assert image.ref == busybox_image.ref
    assert image.digest == busybox_image.manifest_digest
    assert image.config_digest == busybox_image.config_digest
    assert image.config.diff_ids == busybox_image.diff_ids
    assert image.chain_id == busybox_image.chain_id
    assert image.config.entrypoint == ("/bin/sh",)
    stat = await client.unary(
        client.snapshots_stub.Stat,
        snapshots_pb.StatSnapshotRequest(snapshotter="overlayfs", key=image.chain_id),
        "stat",
    )
    assert stat.info.kind == snapshots_pb.COMMITTED
    config = await content.blob_info(client, image.config_digest)
    assert config is not None
    assert config.labels["containerd.io/gc.ref.snapshot.overlayfs"] == image.chain_id
    manifest = await content.blob_info(client, image.digest)
    assert manifest is not None
    assert manifest.labels["containerd.io/gc.ref.content.config"] == image.config_digest
    for i, (layer, diff_id) in enumerate(
        zip(busybox_image.layer_digests, busybox_image.diff_ids, strict=True)
    ):
        assert manifest.labels[f"containerd.io/gc.ref.content.l.{i}"] == layer
        info = await content.blob_info(client, layer)
        assert info is not None and info.labels["containerd.io/uncompressed"] == diff_id
    # ctr sees the same image, and no temporary lease is left.
    assert busybox_image.ref in containerd.ctr("images", "ls", "-q", namespace=client.namespace)
    counts = containerd.counts(client.namespace)
    assert (counts.images, counts.content, counts.snapshots, counts.leases) == (1, 4, 2, 0)
    assert await images.get(client, image.ref) == image


async def test_reimport_is_idempotent(client: Containerd, busybox_image: TestImage) -> None:
    first = await images.import_tarball(client, busybox_image.path)
    before = await count_resources(client)
    assert await images.import_tarball(client, busybox_image.path) == first
    assert await count_resources(client) == before


async def test_remove_collects_content_and_snapshots(client: Containerd, busybox_image: TestImage) -> None:
    before = await count_resources(client)
    image = await images.import_tarball(client, busybox_image.path)
    await images.remove(client, image.ref)
    assert await count_resources(client) == before
    with pytest.raises(NotFound, match="not installed"):
        await images.get(client, image.ref)
    with pytest.raises(NotFound):
        await images.remove(client, image.ref)


async def test_import_under_another_name_and_unnamed_layouts(
    client: Containerd, test_image_factory: Callable[..., TestImage]
) -> None:
    unnamed = test_image_factory("unnamed", name_annotation=False)
    with pytest.raises(InvalidArgument, match="say which reference"):
        await images.import_tarball(client, unnamed.path)
    image = await images.import_tarball(client, unnamed.path, "example.com/engines/bb:2")
    assert image.ref == "example.com/engines/bb:2"
    assert image.chain_id == unnamed.chain_id
    named = test_image_factory("named")
    with pytest.raises(InvalidArgument, match="no image named"):
        await images.import_tarball(client, named.path, "example.com/other:1")


def _rewrite_tar(source: Path, dest: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    with tarfile.open(source) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None:
                new = change(member.name, data)
                if new is None:
                    continue
                member.size = len(new)
                out.addfile(member, io.BytesIO(new))
            else:
                out.addfile(member)


async def test_corrupt_tarballs_are_refused_and_leave_nothing(
    client: Containerd, busybox_image: TestImage, tmp_path: Path
) -> None:
    before = await count_resources(client)
    layer_hex = busybox_image.layer_digests[0].split(":")[1]

    def flip_layer_byte(name: str, data: bytes) -> bytes:
        if name.endswith(layer_hex):
            return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        return data

    corrupt = tmp_path / "corrupt.tar"
    _rewrite_tar(busybox_image.path, corrupt, flip_layer_byte)
    with pytest.raises(InvalidArgument, match="does not match"):
        await images.import_tarball(client, corrupt)

    missing = tmp_path / "missing.tar"
    _rewrite_tar(busybox_image.path, missing, lambda name, data: None if name.endswith(layer_hex) else data)
    with pytest.raises(InvalidArgument, match="lacks blob"):
        await images.import_tarball(client, missing)

    no_layout = tmp_path / "nolayout.tar"
    _rewrite_tar(busybox_image.path, no_layout, lambda name, data: None if name == "oci-layout" else data)
    with pytest.raises(InvalidArgument, match="not an OCI image layout"):
        await images.import_tarball(client, no_layout)

    bad_index = tmp_path / "badindex.tar"
    _rewrite_tar(busybox_image.path, bad_index, lambda name, data: b"{nope" if name == "index.json" else data)
    with pytest.raises(InvalidArgument, match="not JSON"):
        await images.import_tarball(client, bad_index)

    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"hello" * 100)
    with pytest.raises(InvalidArgument, match="tar"):
        await images.import_tarball(client, not_tar)
    with pytest.raises(NotFound):
        await images.import_tarball(client, tmp_path / "absent.tar")
    assert await count_resources(client) == before


async def test_get_reports_an_image_that_is_not_unpacked(
    client: Containerd, busybox_image: TestImage
) -> None:
    image = await images.import_tarball(client, busybox_image.path)
    await client.unary(
        client.snapshots_stub.Remove,
        snapshots_pb.RemoveSnapshotRequest(snapshotter="overlayfs", key=image.chain_id),
        "remove",
    )
    with pytest.raises(FailedPrecondition, match="not unpacked"):
        await images.get(client, image.ref)
    # Importing again repairs it.
    assert await images.import_tarball(client, busybox_image.path) == image


async def test_cancelled_import_leaves_no_lease(client: Containerd, busybox_image: TestImage) -> None:
    before = await count_resources(client)
    for delay in (0.005, 0.02, 0.05):
        with trio.move_on_after(delay):
            await images.import_tarball(client, busybox_image.path)
        assert (await count_resources(client))["leases"] == before["leases"]


async def test_pull_from_a_registry(client: Containerd, busybox_image: TestImage, registry: object) -> None:
    host = registry.host  # type: ignore[attr-defined]
    ref = f"{host}/engines/busybox:1"
    await trio.run_process(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci-archive:{busybox_image.path}",
            f"docker://{ref}",
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    image = await images.pull(client, ref)
    assert image.ref == ref
    assert image.chain_id == busybox_image.chain_id
    assert image.config_digest == busybox_image.config_digest
    assert await images.get(client, ref) == image
    with pytest.raises(NotFound):
        await images.pull(client, f"{host}/engines/absent:1")


async def test_installer_reports_states(client: Containerd, busybox_image: TestImage, tmp_path: Path) -> None:
    installer = images.ImageInstaller(client)
    ref = busybox_image.ref
    assert installer.status(ref).state is images.InstallState.NOT_INSTALLED
    assert (await installer.refresh(ref)).state is images.InstallState.NOT_INSTALLED
    seen: list[images.InstallState] = []

    async def watch() -> None:
        while True:
            seen.append(installer.status(ref).state)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        first, second = await _both(
            installer.install_tarball(ref, busybox_image.path),
            installer.install_tarball(ref, busybox_image.path),
        )
        nursery.cancel_scope.cancel()
    assert first == second
    assert images.InstallState.INSTALLING in seen
    status = installer.status(ref)
    assert status.state is images.InstallState.INSTALLED and status.image == first
    broken = tmp_path / "broken.tar"
    broken.write_text("x")
    with pytest.raises(InvalidArgument):
        await installer.install_tarball("example.com/broken:1", broken)
    failed = installer.status("example.com/broken:1")
    assert failed.state is images.InstallState.ERROR and "tar" in failed.error


async def _both(a: object, b: object) -> tuple[object, object]:
    results: list[object] = [None, None]

    async def run(i: int, coro: object) -> None:
        results[i] = await coro  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, a)
        nursery.start_soon(run, 1, b)
    return results[0], results[1]


def test_tarball_index_is_parsed_from_the_engine_format(busybox_image: TestImage) -> None:
    with tarfile.open(busybox_image.path) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == busybox_image.ref
