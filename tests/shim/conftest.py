"""Fixtures for the shim tests: a client on a fresh namespace of the session containerd."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from modelrunner.shim import images
from modelrunner.shim.client import Containerd, open_containerd

from tests.fixtures.containerd import ContainerdInstance
from tests.fixtures.images import TestImage


@pytest.fixture
async def client(containerd: ContainerdInstance, containerd_namespace: str) -> AsyncIterator[Containerd]:
    async with open_containerd(containerd.address, containerd_namespace, runc_root=containerd.runc_root) as c:
        yield c


@pytest.fixture
async def busybox(client: Containerd, busybox_image: TestImage) -> images.Image:
    """The busybox test image, imported into the test's namespace."""
    return await images.import_tarball(client, busybox_image.path)
