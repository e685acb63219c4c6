"""Fixtures for the from-inside tests: the probe image, a client on the session containerd, and a
containerd of its own for user namespace tests."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from modelrunner.shim import images
from modelrunner.shim.client import open_containerd
from modelrunner.shim.embedded import open_embedded_containerd

from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.images import TestImage, pack_test_image
from tests.sandbox.harness import SandboxHarness, build_probe


@pytest.fixture(scope="session")
def sandbox_workspace() -> Iterator[Path]:
    """Host directories for bundles and engine dirs, mode 0711 all the way down.

    Not under pytest's temp dir, which is 0700: under user namespace remapping runc resolves mount
    sources as the mapped, unprivileged root, which must be able to traverse their parents.
    """
    base = Path(tempfile.mkdtemp(prefix="mr-sandbox-", dir="/tmp"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    """The busybox test image plus the probe and a mount point for the fake CDI library."""
    build = tmp_path_factory.mktemp("probe")
    probe = build_probe(build)
    return pack_test_image(
        build / "probe.oci.tar",
        "docker.io/modelrunner/sandbox-probe:1",
        extra_files={"bin/probe": probe.read_bytes(), "usr/lib/libfake.so.1": b""},
    )


@pytest.fixture
def workdir(sandbox_workspace: Path) -> Iterator[Path]:
    path = sandbox_workspace / uuid.uuid4().hex[:8]
    path.mkdir(mode=0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def sandbox(
    containerd: ContainerdInstance, containerd_namespace: str, probe_image: TestImage, workdir: Path
) -> AsyncIterator[SandboxHarness]:
    """Runs requests in the session containerd; fails the test if a container, task, snapshot or
    lease is left behind (a test that imports another image is checked on the rest)."""
    runc_root = containerd.runc_root
    async with open_containerd(containerd.address, containerd_namespace, runc_root=runc_root) as client:
        image = await images.import_tarball(client, probe_image.path)
        before = containerd.counts(containerd_namespace)
        yield SandboxHarness(client, image, workdir)
        after = containerd.counts(containerd_namespace)
        if after.images != before.images:  # the test imported an image: its layers are no leak
            after = dataclasses.replace(
                after, images=before.images, content=before.content, snapshots=before.snapshots
            )
        assert after == before, f"the test leaked containerd objects: {before} -> {after}"


@pytest.fixture
async def userns_sandbox(
    sandbox_workspace: Path, probe_image: TestImage, workdir: Path
) -> AsyncIterator[SandboxHarness]:
    """A containerd of its own whose state dir the remapped root can traverse (the session one
    lives under pytest's 0700 temp dir); runc resolves the bundle's rootfs as that root."""
    state = sandbox_workspace / f"ctd-{uuid.uuid4().hex[:6]}"
    namespace = f"sandbox-userns-{uuid.uuid4().hex[:6]}"
    try:
        async with (
            open_embedded_containerd(state) as daemon,
            open_containerd(daemon.address, namespace, runc_root=daemon.runc_root) as client,
        ):
            image = await images.import_tarball(client, probe_image.path)
            yield SandboxHarness(client, image, workdir)
    finally:
        remove_cgroup_parent(namespace)


def remove_cgroup_parent(namespace: str) -> None:
    """The tasks' own cgroups go with the tasks; the per-namespace parent is left to us."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        with contextlib.suppress(OSError):
            (controller / namespace).rmdir()
