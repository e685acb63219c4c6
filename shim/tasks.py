"""Runner tasks: start, wait, kill, stop and release, list by label, re-adopt, clean up orphans.

Start (each creating RPC runs to completion even when the caller is cancelled, because containerd
could still carry out a cancelled RPC after our undo; the resource is recorded *before* the RPC so a
time-out still gets it released; an ALREADY_EXISTS reply un-records it, so a collision never
deletes someone else's object):

    lease -> read-only Snapshots.View of the image's chain ID -> Containers.Create (runc v2, labels)
    -> Tasks.Create (the view's mounts as rootfs, stdout+stderr to the log file) -> Tasks.Wait
    (issued before Start, so even an instant exit is seen) -> Tasks.Start

Stop: SIGTERM, a grace period, SIGKILL to every process, wait for the exit, then release in
reverse: Tasks.Delete -> Containers.Delete -> Snapshots.Remove -> Leases.Delete. The container
record is deleted only after its task is: containerd 1.6 would let it go first and leave an
orphaned task nobody can reach. If a deletion fails the release stops there; the labelled leftovers
are found by :func:`cleanup_orphans`.

``Tasks.Wait`` is the authority on the exit code. Whether the kernel's OOM killer struck comes from
the task's memory cgroup counter (read after the exit, before the delete), or from the ``/tasks/oom``
event when the cgroup cannot be read (see ``cgroups.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, final

import trio
from modelrunner.shim import _rpc
from modelrunner.shim._pb import make_any, pack_message, to_datetime, validate_identifier
from modelrunner.shim._shims import ShimProcess, find_shims, process_gone
from modelrunner.shim.cgroups import default_cgroups_path, oom_kill_count
from modelrunner.shim.client import Containerd
from modelrunner.shim.errors import (
    AlreadyExists,
    ContainerdError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from modelrunner.shim.health import probe_health
from modelrunner.shim.images import Image
from modelrunner.shim.labels import (
    CONTAINER_LABEL,
    LEASE_LABEL,
    ROLE_LABEL,
    ROLE_RUNNER,
    RUNNER_FILTER,
    RunnerLabels,
)
from modelrunner.shim.leases import PURPOSE_LABEL, create_lease, delete_lease, list_leases
from modelrunner.shim.lifecycle import TaskLifecycle, TaskPhase
from modelrunner.shim.proto import containerd_containers_pb2 as containers_pb
from modelrunner.shim.proto import containerd_runc_options_pb2 as runc_pb
from modelrunner.shim.proto import containerd_snapshots_pb2 as snapshots_pb
from modelrunner.shim.proto import containerd_task_types_pb2 as task_types
from modelrunner.shim.proto import containerd_tasks_pb2 as tasks_pb

__all__ = [
    "DEFAULT_RUNTIME",
    "LOST_EXIT",
    "ExitStatus",
    "Reconciliation",
    "RunnerRecord",
    "RunningTask",
    "TaskRequest",
    "TaskStatus",
    "adopt",
    "cleanup_orphans",
    "list_runners",
    "reconcile_runners",
    "start_task",
]

log = logging.getLogger("modelrunner.shim.tasks")

T = TypeVar("T")

DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_RUNC_ROOT = "/run/containerd/runc"  # the runc shim's state root when Options.root is unset
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
DEFAULT_STOP_GRACE_SECONDS = 10.0
CLEANUP_GRACE_SECONDS = 1.0
KILL_WAIT_SECONDS = 10.0  # after SIGKILL to all, the exit must come within this
RELEASE_SECONDS = 15.0  # budget for the deletions of one task, shielded from cancellation
STEP_SECONDS = 30.0  # budget for one creating step (Tasks.Create spawns the shim and runs runc)
OOM_SETTLE_SECONDS = 1.0  # how long wait() lets the event stream catch up with an exit
RUNNER_LEASE_TTL = dt.timedelta(hours=24)  # the container references the snapshot; this is a backstop


class TaskStatus(enum.Enum):
    """A runner's task as containerd reports it (NO_TASK: the container has none)."""

    NO_TASK = "no task"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a task ended. ``code`` is 128+N when signal N killed it (137: SIGKILL, also the OOM killer)."""

    code: int
    oom_killed: bool
    exited_at: dt.datetime | None

    @property
    def signal(self) -> int | None:
        return self.code - 128 if self.code > 128 else None


# What stop() reports for a task that vanished before its exit was seen (deleted behind our back).
LOST_EXIT = ExitStatus(255, False, None)


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """Everything needed to start one runner task.

    Attributes:
        container_id: unique ID (containerd identifier rules; also the snapshot key and lease ID).
        image: the unpacked engine image (from :mod:`modelrunner.shim.images`).
        spec: a JSON-ready OCI runtime spec from sandbox/. The shim sets ``root.path`` to the bundle's
            ``rootfs`` (keeping ``root.readonly``, default true) and, if missing,
            ``linux.cgroupsPath`` to ``/<namespace>/<container_id>``; nothing else is changed.
        labels: the runner's labels (what re-adoption reads back).
        log_path: absolute host path; the shim appends the task's stdout and stderr to it (created
            if missing). Complete once the task is released: the shim finishes copying before it
            deletes the task, so right after ``wait()`` the last lines may still be in flight.
        runtime: the containerd runtime (runc v2 by default).
    """

    container_id: str
    image: Image
    spec: Mapping[str, Any]
    labels: RunnerLabels
    log_path: Path
    runtime: str = DEFAULT_RUNTIME


@dataclass
class _Resources:
    """Which containerd objects may exist for a task (so release knows what to delete)."""

    lease_id: str
    snapshotter: str
    snapshot_key: str
    lease: bool = False
    snapshot: bool = False
    container: bool = False
    task: bool = False


def _prepare_spec(request: TaskRequest, namespace: str) -> tuple[bytes, str]:
    """The spec as sent to containerd, and its cgroups path."""
    try:
        spec = json.loads(json.dumps(request.spec))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"starting task {request.container_id}", f"the spec is not JSON-ready: {exc}"
        ) from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
        raise InvalidArgument(f"starting task {request.container_id}", "the spec has no 'process' object")
    root = spec.get("root")
    if not isinstance(root, dict):
        root = {}
    spec["root"] = {"path": "rootfs", "readonly": bool(root.get("readonly", True))}
    linux = spec.setdefault("linux", {})
    if not isinstance(linux, dict):
        raise InvalidArgument(f"starting task {request.container_id}", "the spec's 'linux' is not an object")
    linux.setdefault("cgroupsPath", default_cgroups_path(namespace, request.container_id))
    return json.dumps(spec, separators=(",", ":")).encode(), str(linux["cgroupsPath"])


def _validate_request(request: TaskRequest) -> None:
    validate_identifier("container id", request.container_id)
    if not request.log_path.is_absolute():
        raise InvalidArgument(
            f"starting task {request.container_id}", f"log path {request.log_path} is not absolute"
        )
    if not request.image.chain_id:
        raise InvalidArgument(
            f"starting task {request.container_id}", "the image has no chain ID (not unpacked)"
        )


@final
class RunningTask:
    """A runner task this client started or adopted. Not created directly: see :func:`start_task`.

    Attributes:
        container_id, pid, labels, image_ref, log_path, lifecycle (its :class:`TaskLifecycle`).
    """

    def __init__(
        self,
        client: Containerd,
        container_id: str,
        labels: RunnerLabels | None,
        image_ref: str,
        log_path: Path | None,
        resources: _Resources,
        lifecycle: TaskLifecycle,
        cgroups_path: str = "",
    ) -> None:
        self.container_id = container_id
        self.cgroups_path = cgroups_path
        self.labels = labels
        self.image_ref = image_ref
        self.log_path = log_path
        self.lifecycle = lifecycle
        self.pid = 0
        self._client = client
        self._resources = resources
        self._watch = client.watch_task(container_id)
        self._wait_future: Any = None
        self._exit: ExitStatus | None = None

    def __repr__(self) -> str:
        return f"<RunningTask {self.container_id} pid={self.pid} {self.lifecycle.phase.value}>"

    @property
    def phase(self) -> TaskPhase:
        return self.lifecycle.phase

    @property
    def exit_status(self) -> ExitStatus | None:
        """The exit status once :meth:`wait` has seen it, else None."""
        return self._exit

    # -- waiting --------------------------------------------------------------------------------

    def _issue_wait(self, *, wait_for_ready: bool = False) -> None:
        try:
            self._wait_future = self._client.tasks_stub.Wait.future(
                tasks_pb.WaitRequest(container_id=self.container_id),
                metadata=self._client.metadata(),
                wait_for_ready=wait_for_ready,
            )
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            raise Unavailable(
                f"waiting for task {self.container_id}", "the containerd client it came from is closed"
            ) from exc

    async def wait(self) -> ExitStatus:
        """Wait until the task exits and return how. Safe to call from several tasks at once.

        If containerd restarts meanwhile the wait is re-issued once it is back. A checkpoint;
        cancelling it leaves the task alone.

        Raises:
            NotFound: the task was deleted by someone else; its exit status is lost.
        """
        operation = f"waiting for task {self.container_id}"
        while True:
            known = self.exit_status
            if known is not None:
                return known
            if self._wait_future is None:
                self._issue_wait(wait_for_ready=True)
            future = self._wait_future
            try:
                response = await _rpc.await_future(future, operation, cancel_on_abort=False)
            except NotFound as exc:
                raise NotFound(
                    operation, "the task was deleted by someone else; its exit status is lost"
                ) from exc
            except Unavailable:
                if self._wait_future is future:
                    self._issue_wait(wait_for_ready=True)
                continue
            oom_killed = await self._oom_killed()
            known = self.exit_status
            if known is not None:  # another waiter got there first
                return known
            status = ExitStatus(response.exit_status, oom_killed, to_datetime(response.exited_at))
            self._exit = status
            if self.lifecycle.can(TaskPhase.EXITED):
                self.lifecycle.advance(TaskPhase.EXITED)
            return status

    async def _oom_killed(self) -> bool:
        """Whether the OOM killer struck in the task's cgroup (asked after the exit, before delete)."""
        if self._watch.oom_killed:
            return True
        count = oom_kill_count(self.cgroups_path) if self.cgroups_path else None
        if count is not None:
            return count > 0
        # No readable cgroup (systemd path, other host layout): fall back on the event stream. The
        # /tasks/oom event usually comes before /tasks/exit; give the stream a moment to show it.
        with trio.move_on_after(OOM_SETTLE_SECONDS):
            await self._watch.exit_seen.wait()
        return self._watch.oom_killed

    # -- signals --------------------------------------------------------------------------------

    async def kill(self, signum: int = signal.SIGTERM, *, all_processes: bool = False) -> None:
        """Send ``signum`` to the init process (or every process). A task that already exited is fine.

        Note that a PID 1 without a handler ignores SIGTERM; :meth:`stop` follows up with SIGKILL.
        """
        with contextlib.suppress(NotFound):  # "process already finished"
            await self._client.unary(
                self._client.tasks_stub.Kill,
                tasks_pb.KillRequest(container_id=self.container_id, signal=int(signum), all=all_processes),
                f"signalling task {self.container_id}",
            )

    async def stop(self, grace: float = DEFAULT_STOP_GRACE_SECONDS) -> ExitStatus:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL every process, wait, then release.

        Cancellation during the grace period skips to SIGKILL; the kill and the release are
        shielded (bounded by KILL_WAIT_SECONDS and RELEASE_SECONDS), so nothing is leaked. A task
        that vanished behind our back reports :data:`LOST_EXIT` (255, no exit time).

        Raises:
            Unavailable: the task did not exit after SIGKILL, or containerd was unreachable.
            ContainerdError: a deletion failed; leftovers keep their labels for cleanup_orphans.
        """
        if self.lifecycle.can(TaskPhase.STOPPING):
            self.lifecycle.advance(TaskPhase.STOPPING)
        try:
            if self._exit is None and self._resources.task:
                await self.kill(signal.SIGTERM)
                with trio.move_on_after(grace):
                    await self.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self._kill_and_release()
        assert self._exit is not None
        return self._exit

    async def _kill_and_release(self) -> None:
        if self._exit is None and self._resources.task:
            await self.kill(signal.SIGKILL, all_processes=True)
            with trio.move_on_after(KILL_WAIT_SECONDS):
                try:
                    await self.wait()
                except NotFound:
                    # No task: Tasks.Create failed before making one, or someone deleted it.
                    self._resources.task = False
                    self._exit = LOST_EXIT
            if self._exit is None:
                self.lifecycle.advance(TaskPhase.RELEASING)
                self.lifecycle.advance(TaskPhase.FAILED)
                raise Unavailable(
                    f"stopping task {self.container_id}", f"no exit within {KILL_WAIT_SECONDS}s of SIGKILL"
                )
        await self.release()

    # -- release --------------------------------------------------------------------------------

    async def release(self) -> None:
        """Delete the exited task, its container, snapshot and lease, in that order.

        Each step tolerates NOT_FOUND. A failing step stops the release (deleting the container
        before its task would orphan the task) and raises; the phase is then FAILED.
        """
        if self.lifecycle.phase is TaskPhase.RELEASED:
            return
        self.lifecycle.advance(TaskPhase.RELEASING)
        client, res, cid = self._client, self._resources, self.container_id
        try:
            with trio.fail_after(RELEASE_SECONDS):
                if res.task:
                    await _ignore_missing(
                        client.unary(
                            client.tasks_stub.Delete,
                            tasks_pb.DeleteTaskRequest(container_id=cid),
                            f"deleting task {cid}",
                        )
                    )
                    res.task = False
                if res.container:
                    await _ignore_missing(
                        client.unary(
                            client.containers_stub.Delete,
                            containers_pb.DeleteContainerRequest(id=cid),
                            f"deleting container {cid}",
                        )
                    )
                    res.container = False
                if res.snapshot:
                    await _ignore_missing(
                        client.unary(
                            client.snapshots_stub.Remove,
                            snapshots_pb.RemoveSnapshotRequest(
                                snapshotter=res.snapshotter, key=res.snapshot_key
                            ),
                            f"removing snapshot {res.snapshot_key}",
                        )
                    )
                    res.snapshot = False
                if res.lease:
                    await delete_lease(client, res.lease_id)
                    res.lease = False
        except trio.TooSlowError:
            self.lifecycle.advance(TaskPhase.FAILED)
            raise Unavailable(
                f"releasing task {cid}", f"containerd did not finish within {RELEASE_SECONDS}s"
            ) from None
        except BaseException:
            self.lifecycle.advance(TaskPhase.FAILED)
            raise
        self.lifecycle.advance(TaskPhase.RELEASED)
        client.unwatch_task(cid)

    # -- state ----------------------------------------------------------------------------------

    async def process_status(self) -> task_types.Status:
        """containerd's view of the init process (RUNNING, STOPPED...)."""
        response = await self._client.unary(
            self._client.tasks_stub.Get,
            tasks_pb.GetRequest(container_id=self.container_id),
            f"getting task {self.container_id}",
        )
        status: task_types.Status = response.process.status
        return status


def _prepare_log(path: Path, container_id: str) -> tuple[str, str]:
    """Create the task's log file and return the stdout and stderr paths to give the shim.

    Both name the same file, spelled differently on purpose. When the shim is handed the same
    string twice (or a ``file://`` URI, which it turns into that), it shares one writer between
    the stdout and stderr copiers, and the copier that reaches EOF first closes the file under the
    other: the tail of one stream is lost (containerd 1.6 to 2.x, pkg/process/io.go). Two spellings
    make it open the file twice, each with O_APPEND, so both streams land whole and interleaved.
    The shim opens plain paths without O_CREAT, hence the file is created here first. The shim (not
    modelrunner) holds the file open, so logging survives a modelrunner restart.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
        os.chmod(path, 0o644)
    except OSError as exc:
        raise InvalidArgument(
            f"starting task {container_id}", f"cannot create log file {path}: {exc}"
        ) from exc
    return str(path), f"{path.parent}/./{path.name}"


async def _ignore_missing(call: Awaitable[Any]) -> None:
    with contextlib.suppress(NotFound):
        await call


async def _create_step(
    res: _Resources, resource: str | None, cid: str, call: Callable[[], Awaitable[T]]
) -> T:
    """Run one creating RPC to completion even if the caller is cancelled, then honour the cancel.

    A cancelled RPC may still be carried out by containerd after the delete meant to undo it, so
    creations are never cancelled mid-flight; cancellation takes effect between steps. The resource
    is recorded first (a time-out leaves it "maybe created", which release tolerates); a reply of
    ALREADY_EXISTS un-records it, because then the object is someone else's.
    """
    if resource is not None:
        setattr(res, resource, True)
    try:
        with trio.CancelScope(shield=True), trio.fail_after(STEP_SECONDS):
            result = await call()
    except AlreadyExists:
        if resource is not None:
            setattr(res, resource, False)
        raise
    except trio.TooSlowError:
        raise Unavailable(
            f"starting task {cid}", f"containerd did not answer within {STEP_SECONDS}s"
        ) from None
    await trio.lowlevel.checkpoint_if_cancelled()
    return result


async def start_task(client: Containerd, request: TaskRequest) -> RunningTask:
    """Start a runner task; returns once containerd reports it started.

    The caller owns the deadline. On any failure or cancellation, what was created is released
    (shielded) before the error propagates.

    Raises:
        InvalidArgument: the request breaks a rule (ID, spec, labels, log path).
        AlreadyExists: a container or lease with this ID exists.
        Internal: runc could not create or start the task (the detail has runc's message).
        ContainerdError: another containerd failure.
    """
    _validate_request(request)
    cid = request.container_id
    stdout, stderr = await trio.to_thread.run_sync(_prepare_log, request.log_path, cid)
    labels = request.labels.to_labels(cid, cid)
    spec, cgroups_path = _prepare_spec(request, client.namespace)
    res = _Resources(lease_id=cid, snapshotter=request.image.snapshotter, snapshot_key=cid)
    task = RunningTask(
        client,
        cid,
        request.labels,
        request.image.ref,
        request.log_path,
        res,
        TaskLifecycle(cid),
        cgroups_path,
    )
    lifecycle = task.lifecycle
    try:
        await _create_step(
            res,
            "lease",
            cid,
            lambda: create_lease(
                client, cid, {ROLE_LABEL: ROLE_RUNNER, CONTAINER_LABEL: cid}, ttl=RUNNER_LEASE_TTL
            ),
        )
        lifecycle.advance(TaskPhase.LEASED)

        view = await _create_step(
            res,
            "snapshot",
            cid,
            lambda: client.unary(
                client.snapshots_stub.View,
                snapshots_pb.ViewSnapshotRequest(
                    snapshotter=res.snapshotter,
                    key=cid,
                    parent=request.image.chain_id,
                    labels={ROLE_LABEL: ROLE_RUNNER, CONTAINER_LABEL: cid},
                ),
                f"creating the rootfs view for {cid}",
                lease=cid,
            ),
        )
        lifecycle.advance(TaskPhase.SNAPSHOT_READY)

        container = containers_pb.Container(
            id=cid,
            labels=labels,
            image=request.image.ref,
            runtime=containers_pb.Container.Runtime(name=request.runtime),
            spec=make_any(SPEC_TYPE_URL, spec),
            snapshotter=res.snapshotter,
            snapshot_key=cid,
        )
        await _create_step(
            res,
            "container",
            cid,
            lambda: client.unary(
                client.containers_stub.Create,
                containers_pb.CreateContainerRequest(container=container),
                f"creating container {cid}",
            ),
        )
        lifecycle.advance(TaskPhase.CONTAINER_CREATED)

        create = tasks_pb.CreateTaskRequest(
            container_id=cid,
            rootfs=list(view.mounts),
            stdout=stdout,
            stderr=stderr,
        )
        if client.runc_root:
            create.options.CopyFrom(pack_message(runc_pb.Options(root=client.runc_root)))
        created = await _create_step(
            res, "task", cid, lambda: client.unary(client.tasks_stub.Create, create, f"creating task {cid}")
        )
        task.pid = created.pid
        lifecycle.advance(TaskPhase.TASK_CREATED)

        task._issue_wait()
        started = await _create_step(
            res,
            None,
            cid,
            lambda: client.unary(
                client.tasks_stub.Start, tasks_pb.StartRequest(container_id=cid), f"starting task {cid}"
            ),
        )
        task.pid = started.pid
        lifecycle.advance(TaskPhase.RUNNING)
        return task
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            try:
                await task._kill_and_release()
            except ContainerdError as cleanup_error:
                log.warning("cleaning up after failing to start %s: %s", cid, cleanup_error)
                exc.add_note(f"cleanup also failed (cleanup_orphans will retry): {cleanup_error}")
        raise


# --- listing, adoption, cleanup -------------------------------------------------------------------


_STATUS = {
    task_types.CREATED: TaskStatus.CREATED,
    task_types.RUNNING: TaskStatus.RUNNING,
    task_types.STOPPED: TaskStatus.STOPPED,
    task_types.PAUSED: TaskStatus.PAUSED,
    task_types.PAUSING: TaskStatus.PAUSED,
}


@dataclass(frozen=True, slots=True)
class RunnerRecord:
    """A runner container as containerd knows it, joined with its task.

    ``labels`` is None when the container has the runner role but malformed labels (it cannot be
    adopted, only removed).
    """

    container_id: str
    labels: RunnerLabels | None
    image_ref: str
    status: TaskStatus
    pid: int
    exit_status: int | None
    created_at: dt.datetime | None
    snapshotter: str
    snapshot_key: str
    lease_id: str
    raw_labels: Mapping[str, str] = field(default_factory=dict)
    cgroups_path: str = ""


async def _list_tasks(client: Containerd) -> dict[str, Any]:
    response = await client.unary(client.tasks_stub.List, tasks_pb.ListTasksRequest(), "listing tasks")
    # containerd fills a listed process's `id` with the container ID and leaves `container_id` empty.
    return {process.id or process.container_id: process for process in response.tasks}


async def _list_containers(client: Containerd, *filters: str) -> list[Any]:
    response = await client.unary(
        client.containers_stub.List,
        containers_pb.ListContainersRequest(filters=list(filters)),
        "listing containers",
    )
    return list(response.containers)


async def list_runners(client: Containerd) -> list[RunnerRecord]:
    """Every runner container in the namespace (by its role label), with its task's state."""
    containers = await _list_containers(client, RUNNER_FILTER)
    processes = await _list_tasks(client)
    records = []
    for container in containers:
        raw = dict(container.labels)
        try:
            labels: RunnerLabels | None = RunnerLabels.from_labels(raw)
        except InvalidArgument as exc:
            log.warning("runner container %s has malformed labels: %s", container.id, exc)
            labels = None
        process = processes.get(container.id)
        if process is None:
            status, pid, exit_status = TaskStatus.NO_TASK, 0, None
        else:
            status = _STATUS.get(process.status, TaskStatus.UNKNOWN)
            pid = process.pid
            exit_status = process.exit_status if status is TaskStatus.STOPPED else None
        records.append(
            RunnerRecord(
                container_id=container.id,
                labels=labels,
                image_ref=container.image,
                status=status,
                pid=pid,
                exit_status=exit_status,
                created_at=to_datetime(container.created_at),
                snapshotter=container.snapshotter,
                snapshot_key=container.snapshot_key,
                lease_id=raw.get(LEASE_LABEL, container.id),
                raw_labels=raw,
                cgroups_path=_spec_cgroups_path(container.spec),
            )
        )
    return sorted(records, key=lambda r: r.container_id)


def _spec_cgroups_path(spec: Any) -> str:
    """``linux.cgroupsPath`` from a container's stored spec; empty if it cannot be read."""
    if spec.type_url != SPEC_TYPE_URL:
        return ""
    try:
        path = json.loads(spec.value).get("linux", {}).get("cgroupsPath", "")
    except (ValueError, AttributeError):
        return ""
    return path if isinstance(path, str) else ""


def adopt(client: Containerd, record: RunnerRecord) -> RunningTask:
    """Take over a runner found by :func:`list_runners` (e.g. after a restart) without touching it.

    The returned task can be waited for, stopped and released like one this client started.
    """
    res = _Resources(
        lease_id=record.lease_id,
        snapshotter=record.snapshotter,
        snapshot_key=record.snapshot_key,
        lease=True,
        snapshot=bool(record.snapshot_key),
        container=True,
        task=record.status is not TaskStatus.NO_TASK,
    )
    phase = (
        TaskPhase.RUNNING if record.status in (TaskStatus.RUNNING, TaskStatus.PAUSED) else TaskPhase.EXITED
    )
    log_path = None
    task = RunningTask(
        client,
        record.container_id,
        record.labels,
        record.image_ref,
        log_path,
        res,
        TaskLifecycle(record.container_id, phase),
        record.cgroups_path or default_cgroups_path(client.namespace, record.container_id),
    )
    task.pid = record.pid
    if phase is TaskPhase.EXITED:
        task._exit = ExitStatus(record.exit_status if record.exit_status is not None else 255, False, None)
    else:
        task._issue_wait(wait_for_ready=True)
    return task


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What :func:`reconcile_runners` did: runners adopted, and the IDs of everything removed."""

    adopted: tuple[RunningTask, ...]
    removed: tuple[str, ...]


HealthProbe = Callable[[RunnerRecord], Awaitable[bool]]


async def _probe_socket(record: RunnerRecord) -> bool:
    return record.labels is not None and await probe_health(record.labels.socket_path)


async def reconcile_runners(
    client: Containerd,
    *,
    is_healthy: HealthProbe = _probe_socket,
    grace: float = CLEANUP_GRACE_SECONDS,
) -> Reconciliation:
    """At startup: adopt every running runner whose engine is healthy, remove everything else.

    "Everything else" is what :func:`cleanup_orphans` removes: stopped or unhealthy runners,
    orphaned tasks, stray runner leases and snapshots, and import leases older than the client
    (an import a killed daemon was in the middle of). The caller owns the deadline.
    """
    records = await list_runners(client)
    healthy: dict[str, bool] = {}

    async def check(record: RunnerRecord) -> None:
        healthy[record.container_id] = await is_healthy(record)

    async with trio.open_nursery() as nursery:
        for record in records:
            if record.status is TaskStatus.RUNNING and record.labels is not None:
                nursery.start_soon(check, record)
    adopted = tuple(adopt(client, r) for r in records if healthy.get(r.container_id))
    for task in adopted:
        log.info(
            "adopted runner %s (pid %d, engine %s)",
            task.container_id,
            task.pid,
            task.labels.engine if task.labels else "?",
        )
    removed = await cleanup_orphans(
        client, keep={t.container_id for t in adopted}, grace=grace, temporary_leases_before=client.opened_at
    )
    return Reconciliation(adopted, tuple(removed))


async def cleanup_orphans(
    client: Containerd,
    *,
    keep: Collection[str] = (),
    grace: float = CLEANUP_GRACE_SECONDS,
    temporary_leases_before: dt.datetime | None = None,
) -> list[str]:
    """Remove runner leftovers not in ``keep``; returns what was removed (container/lease/snapshot IDs).

    In order: runner containers (their tasks stopped with ``grace``, then deleted with snapshot and
    lease); tasks whose container record is gone (containerd 1.6 allows that; a stand-in record is
    created so the task can be killed and deleted); shim processes containerd lost track of (see
    ``_shims.py``; named ``shim/<id>`` in the result); runner leases and snapshots left without a
    container; and, if ``temporary_leases_before`` is given, import leases created before then.

    Meant for startup: a runner this client is starting meanwhile would count as a leftover.
    """
    removed: list[str] = []
    for record in await list_runners(client):
        if record.container_id in keep:
            continue
        task = adopt(client, record)
        try:
            await task.stop(grace=grace)
        except ContainerdError as exc:
            log.warning("could not remove runner %s: %s", record.container_id, exc)
            continue
        removed.append(record.container_id)

    container_ids = {c.id for c in await _list_containers(client)}
    for container_id, process in (await _list_tasks(client)).items():
        if container_id in container_ids or container_id in keep:
            continue
        try:
            await _remove_orphan_task(client, container_id, process)
        except ContainerdError as exc:
            log.warning("could not remove orphaned task %s: %s", container_id, exc)
            continue
        removed.append(container_id)

    container_ids = {c.id for c in await _list_containers(client)}
    # A "shim start" command orphaned by a dead containerd may still be about to spawn a shim.
    with trio.move_on_after(KILL_WAIT_SECONDS):
        starters = await trio.to_thread.run_sync(
            functools.partial(find_shims, client.address, client.namespace, starting=True)
        )
        while not all(process_gone(s.pid) for s in starters):  # noqa: ASYNC110 - not our children
            await trio.sleep(0.02)
    known_tasks = set(await _list_tasks(client))
    for shim in await trio.to_thread.run_sync(find_shims, client.address, client.namespace):
        if (
            shim.container_id in known_tasks
            or shim.container_id in container_ids
            or shim.container_id in keep
        ):
            continue
        await _reap_shim(client, shim)
        removed.append(f"shim/{shim.container_id}")

    for lease in await list_leases(client, f'labels."{ROLE_LABEL}"=={ROLE_RUNNER}'):
        owner = lease.labels.get(CONTAINER_LABEL, lease.id)
        if owner in keep or owner in container_ids:
            continue
        await delete_lease(client, lease.id)
        removed.append(lease.id)
    if temporary_leases_before is not None:
        for lease in await list_leases(client, f'labels."{PURPOSE_LABEL}"'):
            if lease.created_at is not None and lease.created_at < temporary_leases_before:
                await delete_lease(client, lease.id)
                removed.append(lease.id)

    for key in await _list_runner_snapshots(client):
        if key in keep or key in container_ids:
            continue
        try:
            await _ignore_missing(
                client.unary(
                    client.snapshots_stub.Remove,
                    snapshots_pb.RemoveSnapshotRequest(snapshotter=client.snapshotter, key=key),
                    f"removing snapshot {key}",
                )
            )
        except ContainerdError as exc:
            log.warning("could not remove snapshot %s: %s", key, exc)
            continue
        removed.append(key)
    return removed


def _runc_state_dir(client: Containerd, container_id: str) -> str | None:
    # The runc shim runs runc with --root <Options.root or containerd's default>/<namespace>.
    root = os.path.join(client.runc_root or DEFAULT_RUNC_ROOT, client.namespace)
    return root if os.path.isdir(os.path.join(root, container_id)) else None


async def _reap_shim(client: Containerd, shim: ShimProcess) -> None:
    """Kill a shim containerd lost track of, and delete the runc container it may have created."""
    log.warning("killing shim %d of %s, which containerd lost track of", shim.pid, shim.container_id)
    with contextlib.suppress(ProcessLookupError):
        os.kill(shim.pid, signal.SIGKILL)
    with trio.move_on_after(KILL_WAIT_SECONDS):
        while not process_gone(shim.pid):  # noqa: ASYNC110 - not our child: nothing to wait on
            await trio.sleep(0.02)
    runc_root = _runc_state_dir(client, shim.container_id)
    if runc_root is not None:
        result = await trio.run_process(
            ["runc", "--root", runc_root, "delete", "--force", shim.container_id],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
        if result.returncode != 0:
            log.warning(
                "runc delete %s: %s", shim.container_id, result.stderr.decode(errors="replace").strip()
            )


async def _list_runner_snapshots(client: Containerd) -> list[str]:
    keys: list[str] = []

    def handle(response: Any) -> None:
        keys.extend(info.name for info in response.info if info.labels.get(ROLE_LABEL) == ROLE_RUNNER)

    await _rpc.consume_stream(
        lambda: client.snapshots_stub.List(
            snapshots_pb.ListSnapshotsRequest(snapshotter=client.snapshotter), metadata=client.metadata()
        ),
        handle,
        "listing snapshots",
    )
    return keys


async def _remove_orphan_task(client: Containerd, container_id: str, process: Any) -> None:
    """Kill and delete a task whose container record was deleted under it."""
    stand_in = containers_pb.Container(
        id=container_id,
        labels={ROLE_LABEL: "orphan-cleanup"},
        runtime=containers_pb.Container.Runtime(name=DEFAULT_RUNTIME),
        spec=make_any(SPEC_TYPE_URL, b"{}"),
    )
    with contextlib.suppress(AlreadyExists):  # a stand-in from an earlier attempt
        await client.unary(
            client.containers_stub.Create,
            containers_pb.CreateContainerRequest(container=stand_in),
            f"re-creating the record of orphaned task {container_id}",
        )
    res = _Resources(
        lease_id=container_id, snapshotter=client.snapshotter, snapshot_key="", container=True, task=True
    )
    running = process.status != task_types.STOPPED
    task = RunningTask(
        client,
        container_id,
        None,
        "",
        None,
        res,
        TaskLifecycle(container_id, TaskPhase.RUNNING if running else TaskPhase.EXITED),
    )
    if running:
        task._issue_wait(wait_for_ready=True)
    else:
        task._exit = ExitStatus(process.exit_status, False, to_datetime(process.exited_at))
    await task.stop(grace=0)
