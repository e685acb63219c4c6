"""Typed containerd task events and their decoding from event envelopes (pure).

Events are hints: they are not replayed after a stream break, and after a resync the same exit may be
reported twice (once synthesised from ``Tasks.List``, once for real). ``Tasks.Wait`` is the authority
on a task's exit status; :class:`TaskOOM` is the only signal that the kernel's OOM killer struck.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from modelrunner.shim._pb import to_datetime
from modelrunner.shim.proto import containerd_event_types_pb2 as event_types

__all__ = [
    "TASK_TOPICS",
    "Event",
    "EventsLost",
    "EventsResynced",
    "TaskCreate",
    "TaskDelete",
    "TaskExit",
    "TaskOOM",
    "TaskSnapshot",
    "TaskStart",
    "decode_event",
    "reconcile",
]

# The topics modelrunner subscribes to (containerd's filter syntax: a regexp match on the topic).
TASK_TOPICS = r"^/tasks/"


@dataclass(frozen=True, slots=True)
class TaskCreate:
    """runc created the task's init process (not started yet)."""

    container_id: str
    pid: int
    timestamp: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskStart:
    container_id: str
    pid: int
    timestamp: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskExit:
    """A process of the task exited. ``process_id == container_id`` for the init process.

    ``synthetic`` marks an exit found by reconciling with ``Tasks.List`` after events were lost.
    """

    container_id: str
    process_id: str
    pid: int
    exit_status: int
    exited_at: dt.datetime | None
    timestamp: dt.datetime | None = None
    synthetic: bool = False

    @property
    def is_init(self) -> bool:
        return self.process_id in ("", self.container_id)


@dataclass(frozen=True, slots=True)
class TaskOOM:
    """The kernel OOM killer killed a process in the task's memory cgroup; it precedes the exit."""

    container_id: str
    timestamp: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskDelete:
    """The task is gone. ``exit_status`` is None when a resync found it missing without a record."""

    container_id: str
    pid: int
    exit_status: int | None
    exited_at: dt.datetime | None
    timestamp: dt.datetime | None = None
    synthetic: bool = False


@dataclass(frozen=True, slots=True)
class EventsLost:
    """Events may have been missed: the stream broke (``reason`` says why) or a subscriber was slow.

    An :class:`EventsResynced` follows once the stream is back and reconciled.
    """

    reason: str
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class EventsResynced:
    """The stream is live again; synthetic events for what changed meanwhile were sent before this.

    ``running`` holds the IDs of the namespace's tasks that were running at the resync.
    """

    running: frozenset[str]


Event = TaskCreate | TaskStart | TaskExit | TaskOOM | TaskDelete | EventsLost | EventsResynced


def _decode_create(msg: Any, ts: dt.datetime | None) -> Event:
    return TaskCreate(msg.container_id, msg.pid, ts)


def _decode_start(msg: Any, ts: dt.datetime | None) -> Event:
    return TaskStart(msg.container_id, msg.pid, ts)


def _decode_exit(msg: Any, ts: dt.datetime | None) -> Event:
    return TaskExit(msg.container_id, msg.id, msg.pid, msg.exit_status, to_datetime(msg.exited_at), ts)


def _decode_oom(msg: Any, ts: dt.datetime | None) -> Event:
    return TaskOOM(msg.container_id, ts)


def _decode_delete(msg: Any, ts: dt.datetime | None) -> Event:
    return TaskDelete(msg.container_id, msg.pid, msg.exit_status, to_datetime(msg.exited_at), ts)


_DECODERS: dict[str, tuple[Any, Any]] = {
    "containerd.events.TaskCreate": (event_types.TaskCreate, _decode_create),
    "containerd.events.TaskStart": (event_types.TaskStart, _decode_start),
    "containerd.events.TaskExit": (event_types.TaskExit, _decode_exit),
    "containerd.events.TaskOOM": (event_types.TaskOOM, _decode_oom),
    "containerd.events.TaskDelete": (event_types.TaskDelete, _decode_delete),
}


def decode_event(type_url: str, value: bytes, timestamp: dt.datetime | None = None) -> Event | None:
    """The typed event for an envelope's payload, or None for a type modelrunner does not use.

    Accepts both bare type URLs (what containerd sends) and ``type.googleapis.com/`` ones. A payload
    that does not parse is reported as None too: a hint we cannot read is a hint we do not have.
    """
    name = type_url.rsplit("/", 1)[-1]
    entry = _DECODERS.get(name)
    if entry is None:
        return None
    message_class, decode = entry
    message = message_class()
    try:
        message.ParseFromString(value)
    except DecodeError:
        return None
    event: Event = decode(message, timestamp)
    return event


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """One task as ``Tasks.List`` reports it, for :func:`reconcile`."""

    pid: int
    running: bool
    exit_status: int | None = None
    exited_at: dt.datetime | None = None


def reconcile(
    previously_running: frozenset[str], tasks: dict[str, TaskSnapshot]
) -> tuple[list[Event], frozenset[str]]:
    """The events that explain the difference between what we last knew and ``tasks`` (pure).

    Tasks that were running and are now stopped get a synthetic :class:`TaskExit`; tasks that are
    gone get a synthetic :class:`TaskDelete` without exit status; tasks that started meanwhile get a
    :class:`TaskStart`. The list ends with :class:`EventsResynced`. Also returns the running set.
    """
    running = frozenset(cid for cid, task in tasks.items() if task.running)
    events: list[Event] = []
    for container_id in sorted(previously_running - running):
        task = tasks.get(container_id)
        if task is not None and task.exit_status is not None:
            events.append(
                TaskExit(
                    container_id, container_id, task.pid, task.exit_status, task.exited_at, synthetic=True
                )
            )
        else:
            events.append(TaskDelete(container_id, 0, None, None, synthetic=True))
    for container_id in sorted(running - previously_running):
        events.append(TaskStart(container_id, tasks[container_id].pid))
    events.append(EventsResynced(running))
    return events, running
