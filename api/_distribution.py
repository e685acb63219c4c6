"""`DistributionModels`: the `ModelManager` port over distribution/'s store and registry client.

distribution/ offers building blocks: a blocking `ModelStore` (files, locks, fsync), an async
`RegistryClient` (pull, push, inspect) and blocking archive and packaging functions. This adapter
puts them together the way DMR's model manager does, running every blocking call in a worker
thread so the event loop (and the inference hot path) never waits on the disk.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import trio
from modelrunner.api.ports import ProgressSink, PullOutcome
from modelrunner.distribution.archive import iter_export_tar, load_tar
from modelrunner.distribution.packaging import repackage
from modelrunner.distribution.registry import RegistryClient
from modelrunner.distribution.store import ModelStore

__all__ = ["DistributionModels"]

_END = object()


class DistributionModels:
    """DMR's model operations over a `ModelStore` and a `RegistryClient`."""

    def __init__(self, store: ModelStore, registry: RegistryClient) -> None:
        self.store = store
        self.registry = registry

    async def list_models(self) -> list[dict[str, Any]]:
        models = await trio.to_thread.run_sync(self.store.list)
        return [model.to_dmr_json() for model in models]

    async def get_model(self, reference: str) -> dict[str, Any]:
        model = await trio.to_thread.run_sync(self.store.get, reference)
        return model.to_dmr_json()

    async def get_remote_model(self, reference: str, *, bearer_token: str | None = None) -> dict[str, Any]:
        remote = await self.registry.inspect_remote(reference, bearer_token=bearer_token)
        return remote.to_dmr_json()

    async def pull(
        self, reference: str, *, progress: ProgressSink, bearer_token: str | None = None
    ) -> PullOutcome:
        return await self.registry.pull(reference, self.store, progress=progress, bearer_token=bearer_token)

    async def push(self, reference: str, *, progress: ProgressSink, bearer_token: str | None = None) -> None:
        await self.registry.push(reference, self.store, progress=progress, bearer_token=bearer_token)

    async def delete(self, reference: str, *, force: bool = False) -> list[dict[str, str]]:
        actions = await trio.to_thread.run_sync(lambda: self.store.delete(reference, force=force))
        return [action.to_json() for action in actions]

    async def tag(self, source: str, target: str) -> str:
        return await trio.to_thread.run_sync(self.store.tag, source, target)

    async def repackage(self, source: str, target: str, *, context_size: int) -> str:
        return await trio.to_thread.run_sync(
            lambda: repackage(self.store, source, target, context_size=context_size)
        )

    async def export(self, reference: str) -> AsyncGenerator[bytes, None]:
        # The archive is produced by a blocking generator; each step runs in a worker thread.
        chunks: Iterator[bytes] = iter_export_tar(self.store, reference)
        try:
            while True:
                chunk = await trio.to_thread.run_sync(next, chunks, _END)
                if chunk is _END:
                    return
                assert isinstance(chunk, bytes)
                yield chunk
        finally:
            close = getattr(chunks, "close", None)  # a generator: release its open blob file now
            if close is not None:
                close()

    async def load(self, chunks: AsyncIterator[bytes]) -> str:
        """Feed the uploaded chunks through a small channel to `load_tar` running in a thread."""
        send, receive = trio.open_memory_channel[bytes](4)
        upload_error: list[BaseException] = []
        result: list[str] = []
        load_error: list[BaseException] = []

        async def feed() -> None:
            async with send:
                try:
                    async for chunk in chunks:
                        await send.send(chunk)
                except Exception as exc:  # the client went away mid-upload
                    upload_error.append(exc)

        def load_blocking() -> str:
            reader = io.BufferedReader(_ChannelReader(receive), buffer_size=1 << 20)
            return load_tar(self.store, reader)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            try:
                result.append(await trio.to_thread.run_sync(load_blocking))
            except Exception as exc:
                load_error.append(exc)
            nursery.cancel_scope.cancel()
            await receive.aclose()
        if upload_error:
            raise upload_error[0]
        if load_error:
            raise load_error[0]
        return result[0]

    async def purge(self) -> None:
        await trio.to_thread.run_sync(self.store.purge)


class _ChannelReader(io.RawIOBase):
    """A blocking reader (for a worker thread) over a trio memory channel of byte chunks."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        super().__init__()
        self._receive = receive
        self._pending = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending and not self._eof:
            try:
                self._pending = trio.from_thread.run(self._receive.receive)
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._eof = True
        if not self._pending:
            return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
