"""The per-client event hub: one thread reads ``Events.Subscribe``, trio fans the events out.

Theory of operation:

* A plain thread owns the server stream (grpc's iterator blocks, and a trio worker thread would hold
  a limiter slot forever). It hands each envelope to trio through a small bounded channel, so a slow
  consumer slows the stream instead of growing memory. On a stream error (containerd restarted) it
  reports the break, waits a short backoff and subscribes again.
* A subscription only becomes live when containerd registers it, which the client cannot observe
  directly: containerd sends no headers before the first event. So after every (re)subscribe the
  trio side publishes a marker event with a fresh nonce to a modelrunner topic until that marker comes
  back through the stream. From then on no event can be missed, and the hub reconciles with
  ``Tasks.List``: exits and deletions that happened during the gap are sent as synthetic events,
  followed by :class:`EventsResynced`.
* The hub also keeps, for each task a :class:`RunningTask` watches, whether an OOM kill was seen and
  whether the exit was seen. containerd publishes ``/tasks/oom`` before ``/tasks/exit``, so once the
  exit event went through, the OOM flag is final.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, final

import grpc
import trio
from modelrunner.shim._pb import make_any, to_datetime
from modelrunner.shim.errors import ContainerdError
from modelrunner.shim.events import (
    TASK_TOPICS,
    Event,
    EventsLost,
    TaskDelete,
    TaskExit,
    TaskOOM,
    TaskSnapshot,
    TaskStart,
    decode_event,
    reconcile,
)
from modelrunner.shim.proto import containerd_events_pb2 as events_pb
from modelrunner.shim.proto import containerd_task_types_pb2 as task_types

log = logging.getLogger("modelrunner.shim.events")

SYNC_TOPIC = "/modelrunner/events-sync"
SYNC_TYPE_URL = "modelrunner.EventsSync"
STREAM_BUFFER = 64  # envelopes between the stream thread and the dispatcher
SUBSCRIBER_BUFFER = 256  # typed events per subscriber before it starts losing them
MARKER_RETRY_SECONDS = 0.25
RESUBSCRIBE_BACKOFF = (0.05, 2.0)  # first and longest pause between subscribe attempts


@dataclass
class TaskWatch:
    """What the event stream told us about one task; read by RunningTask.wait()."""

    oom_killed: bool = False
    exit_seen: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Subscriber:
    send: trio.MemorySendChannel[Event]
    dropped: int = 0


@dataclass(frozen=True)
class _Subscribed:
    generation: int


@dataclass(frozen=True)
class _Broken:
    generation: int
    reason: str


@final
class EventHub:
    """Owned by :class:`~modelrunner.shim.client.Containerd`; use its ``subscribe()``."""

    def __init__(
        self,
        stub: Any,
        namespace: str,
        publish: Callable[[str, Any], Awaitable[None]],
        list_tasks: Callable[[], Awaitable[list[Any]]],
    ) -> None:
        self._stub = stub
        self._namespace = namespace
        self._publish = publish
        self._list_tasks = list_tasks
        self._subscribers: list[_Subscriber] = []
        self._watches: dict[str, TaskWatch] = {}
        self._running: set[str] = set()
        self._generation = 0
        self._nonce = ""
        self._synced = trio.Event()
        self._first_sync = True
        self._stopping = threading.Event()
        self._call_lock = threading.Lock()
        self._call: Any = None
        self.resyncs = 0

    # -- public to the client -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(
        self, buffer: int = SUBSCRIBER_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        send, receive = trio.open_memory_channel[Event](buffer)
        subscriber = _Subscriber(send)
        self._subscribers.append(subscriber)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.remove(subscriber)
            send.close()

    def watch(self, container_id: str) -> TaskWatch:
        return self._watches.setdefault(container_id, TaskWatch())

    def unwatch(self, container_id: str) -> None:
        self._watches.pop(container_id, None)

    async def wait_synced(self) -> None:
        """Return once the current subscription is live and reconciled. A checkpoint."""
        await self._synced.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the stream thread and the dispatcher until cancelled; started once the stream is live."""
        send, receive = trio.open_memory_channel[Any](STREAM_BUFFER)
        token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(
            target=self._pump, args=(token, send), name=f"containerd-events-{self._namespace}", daemon=True
        )
        thread.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dispatch, receive, nursery)
                await self._synced.wait()
                task_status.started()
        finally:
            self._stopping.set()
            with self._call_lock:
                if self._call is not None:
                    self._call.cancel()
            receive.close()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio.to_thread.run_sync(thread.join)

    # -- stream thread ----------------------------------------------------------------------------

    def _pump(self, token: trio.lowlevel.TrioToken, send: trio.MemorySendChannel[Any]) -> None:
        request = events_pb.SubscribeRequest(
            filters=[
                f'namespace=={self._namespace},topic~="{TASK_TOPICS}"',
                f'namespace=={self._namespace},topic=="{SYNC_TOPIC}"',
            ]
        )
        backoff = RESUBSCRIBE_BACKOFF[0]
        generation = 0
        try:
            while not self._stopping.is_set():
                generation += 1
                with self._call_lock:
                    if self._stopping.is_set():
                        return
                    call = self._stub.Subscribe(request, wait_for_ready=True)
                    self._call = call
                trio.from_thread.run(send.send, _Subscribed(generation), trio_token=token)
                reason = "containerd closed the event stream"
                try:
                    for envelope in call:
                        trio.from_thread.run(send.send, envelope, trio_token=token)
                        backoff = RESUBSCRIBE_BACKOFF[0]
                except grpc.RpcError as exc:
                    if self._stopping.is_set():
                        return
                    reason = f"event stream failed: {exc.code().name}: {exc.details()}"
                trio.from_thread.run(send.send, _Broken(generation, reason), trio_token=token)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, RESUBSCRIBE_BACKOFF[1])
        except (trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    # -- trio side ------------------------------------------------------------------------------

    async def _dispatch(self, receive: trio.MemoryReceiveChannel[Any], nursery: trio.Nursery) -> None:
        async for item in receive:
            if isinstance(item, _Subscribed):
                self._generation = item.generation
                self._nonce = f"{item.generation}-{secrets.token_hex(8)}"
                if self._synced.is_set():
                    self._synced = trio.Event()
                nursery.start_soon(self._send_markers, item.generation, self._nonce)
            elif isinstance(item, _Broken):
                log.warning("containerd %s; resubscribing", item.reason)
                self._deliver(EventsLost(item.reason))
            else:
                await self._on_envelope(item)

    async def _send_markers(self, generation: int, nonce: str) -> None:
        synced = self._synced
        while generation == self._generation and not synced.is_set():
            with contextlib.suppress(ContainerdError):
                await self._publish(SYNC_TOPIC, make_any(SYNC_TYPE_URL, nonce.encode()))
            with trio.move_on_after(MARKER_RETRY_SECONDS):
                await synced.wait()

    async def _on_envelope(self, envelope: Any) -> None:
        if envelope.topic == SYNC_TOPIC:
            if envelope.event.value.decode(errors="replace") == self._nonce and not self._synced.is_set():
                await self._resync()
            return
        event = decode_event(envelope.event.type_url, envelope.event.value, to_datetime(envelope.timestamp))
        if event is None:
            return
        self._track(event)
        self._deliver(event)

    async def _resync(self) -> None:
        while True:
            try:
                processes = await self._list_tasks()
                break
            except ContainerdError as exc:  # containerd went away again; the stream will say so too
                log.warning("reconciling tasks after an event gap failed: %s", exc)
                await trio.sleep(MARKER_RETRY_SECONDS)
        # Tasks.List fills a process's `id` (the container ID) and leaves `container_id` empty.
        snapshots = {
            (p.id or p.container_id): TaskSnapshot(
                p.pid,
                p.status == task_types.RUNNING,
                p.exit_status if p.status == task_types.STOPPED else None,
                to_datetime(p.exited_at),
            )
            for p in processes
        }
        events, running = reconcile(frozenset(self._running), snapshots)
        if not self._first_sync:
            for event in events:
                self._track(event)
                self._deliver(event)
            self.resyncs += 1
        self._first_sync = False
        self._running = set(running)
        self._synced.set()

    def _track(self, event: Event) -> None:
        if isinstance(event, TaskStart):
            self._running.add(event.container_id)
            return
        if isinstance(event, TaskOOM):
            watch = self._watches.get(event.container_id)
            if watch is not None:
                watch.oom_killed = True
            return
        if isinstance(event, TaskExit) and not event.is_init:
            return
        if isinstance(event, TaskExit | TaskDelete):
            self._running.discard(event.container_id)
            watch = self._watches.get(event.container_id)
            if watch is not None:
                watch.exit_seen.set()

    def _deliver(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                if subscriber.dropped:
                    subscriber.send.send_nowait(
                        EventsLost("subscriber fell behind; events were dropped", subscriber.dropped)
                    )
                    subscriber.dropped = 0
                subscriber.send.send_nowait(event)
            except trio.WouldBlock:
                subscriber.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(subscriber)
