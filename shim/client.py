"""The containerd client: one gRPC channel, the namespace header on every call, and the event hub.

Use it as ``async with open_containerd(address, namespace) as client:``. Leaving the block stops the
event thread and closes the channel. The client checks on entry that containerd answers, that the
namespace exists (creating it) and that the plugins modelrunner needs loaded without error, so a
misconfigured host fails at startup with a sentence instead of at the first model load.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, final

import grpc
import trio
from google.protobuf import empty_pb2
from modelrunner.shim import _rpc
from modelrunner.shim._hub import EventHub, TaskWatch
from modelrunner.shim._pb import validate_identifier
from modelrunner.shim.errors import AlreadyExists, FailedPrecondition, Unavailable
from modelrunner.shim.events import Event
from modelrunner.shim.proto import (
    containerd_containers_pb2_grpc,
    containerd_content_pb2_grpc,
    containerd_diff_pb2_grpc,
    containerd_events_pb2,
    containerd_events_pb2_grpc,
    containerd_images_pb2_grpc,
    containerd_introspection_pb2,
    containerd_introspection_pb2_grpc,
    containerd_leases_pb2_grpc,
    containerd_namespaces_pb2,
    containerd_namespaces_pb2_grpc,
    containerd_snapshots_pb2_grpc,
    containerd_tasks_pb2,
    containerd_tasks_pb2_grpc,
    containerd_version_pb2_grpc,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SNAPSHOTTER",
    "Containerd",
    "PluginStatus",
    "VersionInfo",
    "open_containerd",
]

DEFAULT_NAMESPACE = "modelrunner"
DEFAULT_SNAPSHOTTER = "overlayfs"
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

# Plugins without which modelrunner cannot run engines: (type, id).
REQUIRED_PLUGINS = (
    ("io.containerd.snapshotter.v1", DEFAULT_SNAPSHOTTER),
    ("io.containerd.runtime.v2", "task"),
    ("io.containerd.differ.v1", "walking"),
    ("io.containerd.grpc.v1", "tasks"),
    ("io.containerd.grpc.v1", "containers"),
    ("io.containerd.grpc.v1", "snapshots"),
    ("io.containerd.grpc.v1", "content"),
    ("io.containerd.grpc.v1", "images"),
    ("io.containerd.grpc.v1", "leases"),
    ("io.containerd.grpc.v1", "events"),
    ("io.containerd.grpc.v1", "diff"),
)

_CHANNEL_OPTIONS = (
    # containerd restarts (ours is supervised) should be picked up within a second, not after
    # grpc's default exponential backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class PluginStatus:
    type: str
    id: str
    error: str  # empty when the plugin loaded


def grpc_target(address: str | os.PathLike[str]) -> str:
    """The grpc target for a containerd address: a socket path or a ``unix://`` URL."""
    text = os.fspath(address)
    if text.startswith("unix://"):
        return text
    if text.startswith("unix:"):
        return "unix://" + text[len("unix:") :]
    return "unix://" + os.path.abspath(text)


def socket_path(address: str | os.PathLike[str]) -> str:
    """The filesystem path of a containerd address (for ``ctr --address``)."""
    return grpc_target(address)[len("unix://") :]


def _stub(factory: Any, channel: Any) -> Any:
    # The generated *_pb2_grpc modules have no type stubs; the stubs are used as Any.
    return factory(channel)


@final
class Containerd:
    """A connection to one containerd, scoped to one namespace. Create with :func:`open_containerd`.

    Attributes:
        address: the socket path.
        namespace: sent as ``containerd-namespace`` on every call.
        runc_root: runc's state directory for tasks this client creates (None: containerd's default).
        snapshotter: the snapshotter engine images are unpacked into and viewed from.
        opened_at: when the client connected.
    """

    def __init__(self, channel: Any, address: str, namespace: str, runc_root: str | None) -> None:
        self.address = address
        self.namespace = namespace
        self.runc_root = runc_root
        self.snapshotter = DEFAULT_SNAPSHOTTER
        # Temporary leases created before this moment cannot be this client's (cleanup_orphans).
        self.opened_at = dt.datetime.now(dt.UTC)
        self.version_stub = _stub(containerd_version_pb2_grpc.VersionStub, channel)
        self.namespaces_stub = _stub(containerd_namespaces_pb2_grpc.NamespacesStub, channel)
        self.containers_stub = _stub(containerd_containers_pb2_grpc.ContainersStub, channel)
        self.tasks_stub = _stub(containerd_tasks_pb2_grpc.TasksStub, channel)
        self.snapshots_stub = _stub(containerd_snapshots_pb2_grpc.SnapshotsStub, channel)
        self.content_stub = _stub(containerd_content_pb2_grpc.ContentStub, channel)
        self.images_stub = _stub(containerd_images_pb2_grpc.ImagesStub, channel)
        self.leases_stub = _stub(containerd_leases_pb2_grpc.LeasesStub, channel)
        self.diff_stub = _stub(containerd_diff_pb2_grpc.DiffStub, channel)
        self.events_stub = _stub(containerd_events_pb2_grpc.EventsStub, channel)
        self.introspection_stub = _stub(containerd_introspection_pb2_grpc.IntrospectionStub, channel)
        self.hub = EventHub(self.events_stub, namespace, self._publish, self._list_tasks)

    # -- low level ------------------------------------------------------------------------------

    def metadata(self, lease: str | None = None) -> _rpc.Metadata:
        """gRPC metadata for a call in this namespace, optionally under a lease."""
        if lease:
            return ((NAMESPACE_HEADER, self.namespace), (LEASE_HEADER, lease))
        return ((NAMESPACE_HEADER, self.namespace),)

    async def unary(
        self,
        method: Any,
        request: Any,
        operation: str,
        *,
        lease: str | None = None,
        wait_for_ready: bool = False,
    ) -> Any:
        """Call a unary RPC of one of the stubs in this namespace.

        A checkpoint; cancelling it cancels the RPC.

        Raises:
            ContainerdError: the typed error for the gRPC status.
        """
        return await _rpc.unary(
            method, request, self.metadata(lease), operation, wait_for_ready=wait_for_ready
        )

    # -- queries --------------------------------------------------------------------------------

    async def version(self) -> VersionInfo:
        """containerd's version. Raises Unavailable when it cannot be reached."""
        response = await _rpc.unary(
            self.version_stub.Version, empty_pb2.Empty(), (), "asking containerd's version"
        )
        return VersionInfo(response.version, response.revision)

    async def plugins(self) -> list[PluginStatus]:
        """Every plugin containerd knows, with its init error if it failed to load."""
        response = await self.unary(
            self.introspection_stub.Plugins, containerd_introspection_pb2.PluginsRequest(), "listing plugins"
        )
        return [
            PluginStatus(p.type, p.id, p.init_err.message if p.HasField("init_err") else "")
            for p in response.plugins
        ]

    # -- events ---------------------------------------------------------------------------------

    def subscribe(
        self, buffer: int = 256
    ) -> contextlib.AbstractAsyncContextManager[trio.MemoryReceiveChannel[Event]]:
        """``async with client.subscribe() as events: async for event in events: ...``

        Typed task events of this namespace from now on. A subscriber that falls ``buffer`` events
        behind loses events and then receives :class:`~modelrunner.shim.events.EventsLost`.
        """
        return self.hub.subscribe(buffer)

    def watch_task(self, container_id: str) -> TaskWatch:
        return self.hub.watch(container_id)

    def unwatch_task(self, container_id: str) -> None:
        self.hub.unwatch(container_id)

    async def _publish(self, topic: str, event: Any) -> None:
        await self.unary(
            self.events_stub.Publish,
            containerd_events_pb2.PublishRequest(topic=topic, event=event),
            "publishing an event",
        )

    async def _list_tasks(self) -> list[Any]:
        response = await self.unary(
            self.tasks_stub.List, containerd_tasks_pb2.ListTasksRequest(), "listing tasks"
        )
        return list(response.tasks)

    # -- setup ----------------------------------------------------------------------------------

    async def _ensure_namespace(self) -> None:
        request = containerd_namespaces_pb2.CreateNamespaceRequest(
            namespace=containerd_namespaces_pb2.Namespace(name=self.namespace)
        )
        # The header must name the new namespace: containerd publishes the creation event in it.
        with contextlib.suppress(AlreadyExists):
            await self.unary(self.namespaces_stub.Create, request, f"creating namespace {self.namespace}")

    async def _check_plugins(self) -> None:
        plugins = {(p.type, p.id): p for p in await self.plugins()}
        for key in REQUIRED_PLUGINS:
            plugin = plugins.get(key)
            if plugin is None:
                raise FailedPrecondition(
                    f"checking containerd at {self.address}",
                    f"plugin {key[0]}.{key[1]} is not loaded; enable it in containerd's config",
                )
            if plugin.error:
                raise FailedPrecondition(
                    f"checking containerd at {self.address}",
                    f"plugin {key[0]}.{key[1]} failed to load: {plugin.error}",
                )


@contextlib.asynccontextmanager
async def open_containerd(
    address: str | os.PathLike[str],
    namespace: str = DEFAULT_NAMESPACE,
    *,
    runc_root: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Containerd]:
    """Connect to containerd at ``address`` (a socket path or ``unix://`` URL) for ``namespace``.

    On entry: checks containerd answers, creates the namespace if needed, checks required plugins,
    and starts the event stream (live before this returns). The caller owns the deadline.

    Raises:
        Unavailable: nothing answers at ``address``.
        FailedPrecondition: a plugin modelrunner needs is missing or failed to load.
        InvalidArgument: ``namespace`` is not a valid containerd identifier.
    """
    validate_identifier("namespace", namespace)
    target = grpc_target(address)
    channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    try:
        client = Containerd(
            channel, socket_path(address), namespace, os.fspath(runc_root) if runc_root else None
        )
        try:
            await client.version()
        except Unavailable as exc:
            raise Unavailable(
                f"connecting to containerd at {client.address}",
                f"{exc.detail}; is containerd running there? Point --containerd-address at a running "
                "daemon, or leave it unset so modelrunner starts its own",
            ) from exc
        await client._ensure_namespace()
        await client._check_plugins()
        started = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(client.hub.run)
                started = True
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A failure to start the event stream is the open's own error: report it bare. Errors of
            # the caller's block stay grouped, as with any trio nursery.
            if not started and len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        channel.close()
