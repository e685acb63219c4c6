"""An engine image's install state: refresh from containerd, install (import or pull), remove.

Used by every backend for ``install``, ``uninstall``, installing on first use and the status
string. Installs are serialized per image; a cancelled install leaves the previous state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import final

import trio
from modelrunner.engines.environment import EngineImageSource
from modelrunner.engines.errors import BackendNotInstalled
from modelrunner.engines.status import BackendStatus
from modelrunner.shim import images as shim_images
from modelrunner.shim.client import Containerd
from modelrunner.shim.errors import ContainerdError, NotFound
from modelrunner.shim.images import Image

__all__ = ["EngineImage"]

Progress = Callable[[str], None]


@final
class EngineImage:
    def __init__(
        self, client: Containerd, backend: str, source: EngineImageSource | None, *, missing_source: str
    ) -> None:
        self.client = client
        self.backend = backend
        self.source = source
        self.image: Image | None = None
        self._missing_source = missing_source
        self._lock = trio.Lock()
        self.status = (
            BackendStatus.not_installed(missing_source) if source is None else BackendStatus.not_installed()
        )

    def version(self) -> str:
        if self.image is None:
            return ""
        labels = self.image.config.labels
        return labels.get("org.opencontainers.image.version") or self.image.ref.rsplit(":", 1)[-1]

    def _installed(self, image: Image) -> None:
        self.image = image
        self.status = BackendStatus.running(f"{self.backend} {self.version()} ({image.digest})")

    async def refresh(self) -> None:
        """Read the install state from containerd."""
        if self.source is None:
            return
        try:
            image = await shim_images.get(self.client, self.source.ref)
        except NotFound:
            self.image = None
            self.status = BackendStatus.not_installed()
        except ContainerdError as exc:
            self.image = None
            self.status = BackendStatus.error(str(exc))
        else:
            self._installed(image)

    async def ensure(self, progress: Progress | None = None) -> Image:
        """The installed image, importing or pulling it first if needed.

        Raises:
            BackendNotInstalled: no source is configured, or the import/pull failed.
        """
        source = self.source
        if source is None:
            raise BackendNotInstalled(self.backend, self._missing_source)
        async with self._lock:
            if self.image is not None:
                return self.image
            report = progress or (lambda _line: None)
            report(f"Installing {self.backend} backend...")
            previous = self.status
            self.status = BackendStatus.installing(source.describe())
            try:
                if source.tarball is not None:
                    image = await shim_images.import_tarball(self.client, source.tarball, source.ref)
                else:
                    image = await shim_images.pull(self.client, source.ref, plain_http=source.plain_http)
            except ContainerdError as exc:
                self.status = BackendStatus.error(f"installing {source.describe()}: {exc}")
                report(f"backend installation failed: {exc}")
                detail = f"installing {source.describe()} failed: {exc}"
                raise BackendNotInstalled(self.backend, detail) from exc
            except BaseException:
                self.status = previous
                raise
            self._installed(image)
            report(f"{self.backend} backend installed successfully")
            return image

    async def remove(self) -> None:
        """Remove the image from containerd (runners still using its snapshot keep it alive)."""
        async with self._lock:
            if self.source is not None:
                with contextlib.suppress(NotFound):
                    await shim_images.remove(self.client, self.source.ref)
            self.image = None
            self.status = (
                BackendStatus.not_installed(self._missing_source)
                if self.source is None
                else BackendStatus.not_installed()
            )
