"""The scheduler: routes requests to runners, admits loads against the memory ledger, holds requests
while memory is short, evicts idle runners, and notices dead ones.

Theory of operation
-------------------
State lives in two maps: ``_slots`` (one ``_Slot`` per runner key: the runner's lifecycle state,
reference count, timers) and ``_pending`` (one ``_Ticket`` per key that has requests waiting,
insertion-ordered, so the map itself is the FIFO queue). Every decision is made by ``_reschedule``, a
synchronous pass that never awaits: it expires idle runners, plans admission for queued loads in
arrival order (``plan_admission``), starts loads, evicts, drains, and hands leases to waiters of
runners that became ready. Whatever needs I/O (starting an engine, stopping one) runs afterwards in
the runner's own task, so no lock exists and none is held across an await.

Each runner is owned by one task in the scheduler's nursery (``_run_slot``): it waits for its memory
in the ledger (which is where a load waits for the runners it displaces to finish stopping), starts
the engine, supervises it (exit watch, measured-memory correction), and when asked to stop, or when
the engine dies, stops it and returns its memory. So there is always exactly one place that releases
a runner's memory, and it does so only once the engine is gone: the ledger never lends the same bytes
to two live engines.

A request (``acquire``) goes straight to a READY runner. Otherwise it joins the key's ticket and
waits; N concurrent first requests for one key share one ticket and one load (single flight). The
wait ends with a lease, an error shared by the ticket (the load failed), a ``QueueTimeout``
(``max_wait``), or cancellation, which leaves the queue at once.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter as _Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Protocol, cast, final, runtime_checkable

import trio
from modelrunner.engines import (
    Backend,
    EngineError,
    EngineStartError,
    ExitInfo,
    MemoryEstimate,
    Mode,
    ModelSpec,
    Runner,
    RunnerConfig,
)
from modelrunner.engines.registry import BackendRegistry
from modelrunner.sandbox.gpus import GpuInventory, discover_gpus
from modelrunner.scheduler._admission import Resident, plan_admission
from modelrunner.scheduler._budget import compute_budget, host_available_memory
from modelrunner.scheduler._config import ConfigStore, ConfigureRequest, ModelConfig, RunnerKey
from modelrunner.scheduler._errors import (
    InvalidConfiguration,
    ModelNotFound,
    ModelTooLarge,
    QueueFull,
    QueueTimeout,
    RunnerDied,
    RunnerInUse,
    SchedulerClosed,
    SchedulerError,
)
from modelrunner.scheduler._ledger import LedgerStatistics, MemoryLedger
from modelrunner.scheduler._lifecycle import (
    IllegalTransition,
    RunnerEvent,
    RunnerState,
    transition,
)
from modelrunner.scheduler._metrics import SchedulerMetrics
from modelrunner.scheduler._units import KEEP_ALIVE_FOREVER, RAM, format_keep_alive
from prometheus_client import CollectorRegistry

__all__ = [
    "DiskUsage",
    "DiskUsageReporter",
    "MemoryLimitedRunner",
    "ModelResolver",
    "ReportingRunner",
    "RunnerInfo",
    "RunnerLease",
    "Scheduler",
    "SchedulerSettings",
    "SchedulerStatistics",
    "open_scheduler",
]

log = logging.getLogger(__name__)

# After ``Runner.stop(grace)`` escalates to SIGKILL, removing the container, snapshot and lease
# takes a moment more; past this the engine is reported lost and its memory returned anyway.
_STOP_SLACK = 15.0
_MEASURE_TIMEOUT = 5.0
_GPU_PROBE_TIMEOUT = 10.0
_BROKEN_STOP_GRACE = 1.0
_CONFIGURE_PRELOAD_TIMEOUT = 60.0


# -- protocols the scheduler needs from its neighbours --------------------------------------------


class ModelResolver(Protocol):
    """Wired by the daemon to distribution's store."""

    def resolve(self, ref: str) -> ModelSpec:
        """The stored model named by ``ref`` (a reference or a ``sha256:`` model ID).

        Raises:
            ModelNotFound (scheduler's or distribution's; any error passes through unchanged).
        """
        ...


@runtime_checkable
class MemoryLimitedRunner(Protocol):
    """A runner whose cgroup memory limit can be changed while it runs.

    Only such runners get their reservation lowered to the measured use: lowering the ledger without
    lowering the limit would let a runner grow back into bytes the ledger lent to someone else.
    """

    async def set_memory_limit(self, ram_bytes: int) -> None: ...


@runtime_checkable
class ReportingRunner(Protocol):
    """A runner that knows its own memory use once ready (llama.cpp's buffer report)."""

    engine_report: MemoryEstimate | None


@runtime_checkable
class DiskUsageReporter(Protocol):
    """Optional: a resolver or backend that can say how many bytes it keeps on disk."""

    def disk_usage(self) -> int: ...


# -- public values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerSettings:
    """The scheduler's slice of the daemon configuration. Durations are seconds."""

    memory_budget: Mapping[str, int] | None = None
    """Device -> bytes, taken as is. Devices not named are detected (RAM: MemAvailable or the
    daemon's cgroup headroom; GPUs: free VRAM) minus ``margin``."""
    margin: int = 1 << 30
    max_queued: int = 512
    """Requests that may wait for a runner at once; beyond, ``QueueFull`` (503 + Retry-After)."""
    max_wait: float | None = None
    """Longest a request waits in the queue before ``QueueTimeout``; None waits as long as the client."""
    default_keep_alive: float = 300.0
    """Idle time before a runner is unloaded; ``-1`` never, ``0`` right after its last request."""
    min_residency: float = 2.0
    """A loaded runner is not swapped out for another model for this long (anti-thrash)."""
    residency_idle_grace: float = 0.25
    """...unless it has been idle this long: protection is for traffic that keeps coming."""
    config_path: Path | None = None
    """Where ``_configure`` settings persist (JSON); None keeps them in memory only."""
    stop_grace: float = 5.0
    measure_interval: float = 5.0
    """How often runners' cgroup memory is sampled for ``ps`` and metrics."""
    correct_to_measured: bool = True
    measured_headroom: float = 0.25
    measured_headroom_min: int = 256 << 20
    stop_runners_on_exit: bool = True
    """False leaves engines running when the daemon exits, for re-adoption by the next one."""
    shutdown_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_queued < 0:
            raise InvalidConfiguration(f"max_queued must be >= 0, not {self.max_queued}")
        if self.max_wait is not None and not self.max_wait > 0:
            raise InvalidConfiguration(f"max_wait must be positive or None, not {self.max_wait}")
        if self.margin < 0:
            raise InvalidConfiguration(f"margin must be >= 0, not {self.margin}")
        if self.min_residency < 0 or self.residency_idle_grace < 0:
            raise InvalidConfiguration("min_residency and residency_idle_grace must be >= 0")
        if math.isnan(self.default_keep_alive):
            raise InvalidConfiguration("default_keep_alive must be a number of seconds")
        for device, size in (self.memory_budget or {}).items():
            if size < 0:
                raise InvalidConfiguration(f"memory budget for {device!r} is negative")


@dataclass(frozen=True)
class RunnerInfo:
    """One row of ``ps`` (DMR's ``/engines/ps`` fields plus memory in bytes)."""

    backend_name: str
    model_name: str
    """The reference used for the first load (DMR: not normalised)."""
    model_id: str
    mode: Mode
    last_used: datetime | None
    """When its last request ended; None while in use (DMR renders the zero time)."""
    in_use: bool
    loading: bool
    keep_alive: float
    """Seconds; ``-1`` never unloads."""
    memory_reserved: int
    """Bytes reserved in the ledger, all devices."""
    memory_measured: int | None
    """Bytes its cgroup last reported, None if not measured."""
    state: RunnerState
    in_flight: int
    runner_id: str | None
    reserved_by_device: Mapping[str, int]
    socket_path: Path | None = None
    """The engine's HTTP socket on the host once it is ready (``/metrics`` scrapes it)."""

    @property
    def keep_alive_text(self) -> str:
        """DMR rendering: Go duration (``"5m0s"``) or ``"-1"``."""
        return format_keep_alive(self.keep_alive)


@dataclass(frozen=True)
class DiskUsage:
    """``/engines/df``."""

    models_disk_usage: int
    default_backend_disk_usage: int


@dataclass(frozen=True)
class SchedulerStatistics:
    queued_requests: int
    pending_loads: int
    in_flight: int
    runners_by_state: Mapping[str, int]
    ledger: LedgerStatistics
    memory_measured: int
    loads_started: int
    load_failures: int
    unloads: Mapping[str, int]
    """Runners stopped, by reason."""
    peak_queued: int


def ledger_amounts(estimate: MemoryEstimate) -> dict[str, int]:
    """A ``MemoryEstimate`` as ledger amounts: ``{"ram": ..., <gpu id>: ...}``."""
    amounts = {RAM: int(estimate.ram)}
    for device, size in estimate.vram.items():
        amounts[device] = amounts.get(device, 0) + int(size)
    return amounts


# -- internal records -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    arrived: float
    done: trio.Event = field(default_factory=trio.Event)
    lease: RunnerLease | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Ticket:
    """Requests waiting for one runner key (to load, or to finish loading)."""

    key: RunnerKey
    model_name: str
    spec: ModelSpec
    backend: Backend
    config: RunnerConfig
    estimate: MemoryEstimate
    need: dict[str, int]
    keep_alive: float
    keep_alive_override: float | None = None
    """The latest per-request ``keep_alive``; applied to the runner when it is handed out."""
    waiters: list[_Waiter] = field(default_factory=list)


@dataclass(eq=False)
class _Slot:
    key: RunnerKey
    model_name: str
    spec: ModelSpec | None
    backend: Backend
    config: RunnerConfig
    estimate: MemoryEstimate
    need: dict[str, int]
    keep_alive: float
    created_at: float
    state: RunnerState = RunnerState.STARTING
    runner: Runner | None = None
    refcount: int = 0
    ready_at: float | None = None
    last_used: float = 0.0
    last_used_wall: datetime | None = None
    holds_ledger: bool = False
    stop_reason: str | None = None
    stop_grace: float = 5.0
    exit_info: ExitInfo | None = None
    memory_measured: int | None = None
    adopted: bool = False
    stop_requested: trio.Event = field(default_factory=trio.Event)
    load_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    """Set once the runner is dead or gone (died, broken, stopped)."""


@final
class _LeaseScope:
    """``async with scheduler.acquire(...)``: a lease on entry, released on exit.

    A class, not an ``@asynccontextmanager``: a generator per request costs trio's async-generator
    hooks, and every inference request passes here.
    """

    __slots__ = ("_args", "_lease", "_scheduler")

    def __init__(
        self, scheduler: Scheduler, model: str, mode: Mode, backend: str | None, keep_alive: float | None
    ) -> None:
        self._scheduler = scheduler
        self._args = (model, mode, backend, keep_alive)
        self._lease: RunnerLease | None = None

    async def __aenter__(self) -> RunnerLease:
        if self._lease is not None:
            raise RuntimeError("a lease scope is entered once")
        self._lease = await self._scheduler._acquire(*self._args)
        return self._lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lease is not None:
            self._scheduler._release(self._lease)


class RunnerLease:
    """A request's hold on a ready runner, for the duration of ``async with scheduler.acquire(...)``.

    While any lease is held the runner is "in use": never evicted, unloaded or reconfigured.
    """

    def __init__(self, scheduler: Scheduler, slot: _Slot) -> None:
        assert slot.runner is not None
        self._scheduler = scheduler
        self._slot = slot
        self._released = False
        self.socket_path: Path = slot.runner.socket_path
        self.model_id: str = slot.key.model_id
        self.model_name: str = slot.model_name
        self.backend: str = slot.key.backend
        self.mode: Mode = slot.key.mode
        self.runner_id: str = slot.runner.runner_id

    def __repr__(self) -> str:
        return f"<RunnerLease {self.backend}/{self.model_name} ({self.mode}) state={self._slot.state}>"

    @property
    def died(self) -> bool:
        """True once the engine exited unexpectedly or was reported broken."""
        slot = self._slot
        return slot.ended.is_set() or slot.state is RunnerState.FAILED or slot.stop_reason == "broken"

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._slot.exit_info

    async def wait_died(self) -> ExitInfo:
        """Return how the engine ended, once it has (a checkpoint; waits forever for a healthy one).

        The api's proxy races this against a streamed body, or waits briefly for it after the
        upstream connection broke, to give the client a precise error.
        """
        await self._slot.ended.wait()
        return self._slot.exit_info or ExitInfo(code=None, oom_killed=False, message="")

    def died_error(self) -> RunnerDied:
        """A ``RunnerDied`` describing this runner's end, for the error body sent to the client."""
        info = self._slot.exit_info
        reason = _END_PHRASES.get(self._slot.stop_reason or "", "")
        if info is None:
            return RunnerDied(self.model_name, reason=reason or "stopped answering")
        return RunnerDied(
            self.model_name, exit_code=info.code, oom_killed=info.oom_killed, log_tail=info.message,
            reason=reason,
        )

    def mark_broken(self, reason: str) -> None:
        """The proxy saw the engine fail mid-request (connection reset, EOF): stop using it.

        The runner takes no new requests and is stopped (its other in-flight requests fail too;
        they share the dead engine); the next request starts a fresh one. Not a checkpoint.
        """
        self._scheduler._mark_broken(self._slot, reason)


# How a runner that requests were still using came to an end, for RunnerDied messages.
_END_PHRASES = {
    "broken": "stopped answering in the middle of a request",
    "shutdown": "was stopped because the daemon is shutting down",
    "internal error": "was stopped after an internal scheduler error",
}


# -- the scheduler ------------------------------------------------------------------------------------


@final
class Scheduler:
    """Use ``async with open_scheduler(registry, resolver, settings) as scheduler``."""

    def __init__(self, *, _private: object) -> None:
        if _private is not _TOKEN:
            raise TypeError("Scheduler has no public constructor; use `async with open_scheduler(...)`")
        self._slots: dict[RunnerKey, _Slot] = {}
        self._pending: dict[RunnerKey, _Ticket] = {}
        self._queued = 0
        self._peak_queued = 0
        self._closing = False
        self._detaching = False
        self._head_wake_at: float | None = None
        self._wakeup = trio.Event()
        self._timer_deadline = -math.inf
        """When the timer loop wakes on its own (-inf until it first sleeps)."""
        self._load_seconds_avg: float | None = None
        self._loads_started = 0
        self._load_failures = 0
        self._unloads: _Counter[str] = _Counter()
        self._config_write_lock = trio.Lock()
        # Set by open_scheduler:
        self._registry: BackendRegistry
        self._resolver: ModelResolver
        self._settings: SchedulerSettings
        self._ledger: MemoryLedger
        self._configs: ConfigStore
        self._nursery: trio.Nursery
        self._metrics: SchedulerMetrics

    # -- requests ---------------------------------------------------------------------------------

    def acquire(
        self,
        model: str,
        mode: Mode = Mode.COMPLETION,
        backend: str | None = None,
        *,
        keep_alive: float | None = None,
    ) -> AbstractAsyncContextManager[RunnerLease]:
        """Hold the runner for (backend, model, mode) for the duration of the ``async with``.

        Finds the ready runner, or waits for it to load (one load for any number of concurrent first
        requests), or waits for memory. ``keep_alive`` (seconds) overrides the runner's idle timeout
        from now on, like Ollama's per-request ``keep_alive``. Entering checks for cancellation; it
        yields only when it waits, and cancellation while waiting leaves the queue at once.

        Raises:
            ModelNotFound (or the resolver's own error), UnknownBackend, ModelTooLarge, QueueFull,
            QueueTimeout, EngineStartError (shared by every request that waited for that load),
            SchedulerClosed.
        """
        return self._lease(model, Mode(mode), backend, keep_alive)

    async def preload(self, model: str, mode: Mode = Mode.COMPLETION, backend: str | None = None) -> None:
        """Load the runner and return once it is ready (``X-Preload-Only: true``). Raises as ``acquire``."""
        async with self.acquire(model, mode, backend):
            pass

    def _lease(
        self, model: str, mode: Mode, backend: str | None, keep_alive: float | None
    ) -> _LeaseScope:
        return _LeaseScope(self, model, mode, backend, keep_alive)

    async def _acquire(
        self, model: str, mode: Mode, backend_name: str | None, keep_alive: float | None
    ) -> RunnerLease:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        spec = self._resolver.resolve(model)
        backend = self._registry.select_for_format(spec.format, backend_name)
        key = RunnerKey(backend.name, spec.id, mode)
        slot = self._slots.get(key)
        if slot is not None and slot.state is RunnerState.READY:
            # Straight through: never behind the queue of another model's load, and without a
            # yield: this is on every request's path to the engine, which yields soon enough.
            return self._grant(slot, keep_alive)
        ticket = self._pending.get(key)
        if ticket is None:
            ticket = self._new_ticket(key, model, spec, backend)
        if self._queued >= self._settings.max_queued:
            self._metrics.rejections.labels("queue_full").inc()
            raise QueueFull(
                f"server busy: {self._queued} requests are already waiting for a model to load "
                f"(limit {self._settings.max_queued}); retry later",
                retry_after=self._retry_after(),
            )
        if ticket.key not in self._pending:
            self._pending[key] = ticket
        if keep_alive is not None:
            ticket.keep_alive_override = keep_alive
        now = trio.current_time()
        waiter = _Waiter(arrived=now)
        ticket.waiters.append(waiter)
        self._queued += 1
        self._peak_queued = max(self._peak_queued, self._queued)
        self._reschedule()
        deadline = math.inf if self._settings.max_wait is None else now + self._settings.max_wait
        try:
            with trio.move_on_at(deadline):
                await waiter.done.wait()
        except BaseException:
            self._abandon(ticket, waiter)
            self._metrics.queue_wait_seconds.labels("cancelled").observe(trio.current_time() - now)
            raise
        if not waiter.done.is_set():
            self._abandon(ticket, waiter)
            self._metrics.rejections.labels("max_wait").inc()
            self._metrics.queue_wait_seconds.labels("timeout").observe(trio.current_time() - now)
            raise QueueTimeout(
                f"waited {self._settings.max_wait:g}s for {model!r} to load without getting memory; "
                "retry later",
                retry_after=self._retry_after(),
            )
        if waiter.error is not None:
            self._metrics.queue_wait_seconds.labels("failed").observe(trio.current_time() - now)
            raise _copy_error(waiter.error)
        assert waiter.lease is not None
        self._metrics.queue_wait_seconds.labels("ok").observe(trio.current_time() - now)
        return waiter.lease

    def _new_ticket(self, key: RunnerKey, model: str, spec: ModelSpec, backend: Backend) -> _Ticket:
        config, keep_alive = self._runner_settings(key)
        estimate = backend.estimate_memory(spec, key.mode, config)
        need = ledger_amounts(estimate)
        too_big = self._ledger.never_fits(need)
        if too_big:
            self._metrics.rejections.labels("too_large").inc()
            raise ModelTooLarge(model, too_big, self._ledger.budget)
        return _Ticket(key, model, spec, backend, config, estimate, need, keep_alive)

    def _abandon(self, ticket: _Ticket, waiter: _Waiter) -> None:
        if waiter in ticket.waiters:
            ticket.waiters.remove(waiter)
            self._queued -= 1
            if not ticket.waiters and self._pending.get(ticket.key) is ticket:
                del self._pending[ticket.key]
        if waiter.lease is not None:
            # Granted in the same instant the client went away.
            self._release(waiter.lease)
        self._reschedule()

    def _grant(self, slot: _Slot, keep_alive: float | None) -> RunnerLease:
        slot.refcount += 1
        slot.last_used_wall = None
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        return RunnerLease(self, slot)

    def _release(self, lease: RunnerLease) -> None:
        if lease._released:
            return
        lease._released = True
        slot = lease._slot
        slot.refcount -= 1
        if slot.refcount == 0:
            slot.last_used = trio.current_time()
            slot.last_used_wall = datetime.now(UTC)
        if self._settled() and slot.keep_alive != 0:
            # The common case on the hot path: nothing waits, so a release can only start this
            # runner's idle countdown, and the timer needs waking only if that ends sooner than
            # what it sleeps until (it re-checks everything when it wakes).
            idle_ends = slot.last_used + slot.keep_alive
            if slot.refcount == 0 and slot.keep_alive > 0 and idle_ends < self._timer_deadline:
                self._wakeup.set()
            return
        self._reschedule()

    def _settled(self) -> bool:
        """Nothing is queued, loading or draining: admission has no decision to make."""
        if self._pending or self._head_wake_at is not None or self._closing:
            return False
        return all(slot.state is RunnerState.READY for slot in self._slots.values())

    def _mark_broken(self, slot: _Slot, reason: str) -> None:
        if slot.state in (RunnerState.READY, RunnerState.DRAINING):
            log.warning("runner %s reported broken: %s", slot.key, reason)
            self._stop(slot, "broken", grace=_BROKEN_STOP_GRACE)
            slot.exit_info = slot.exit_info or ExitInfo(code=None, oom_killed=False, message=reason)
            self._reschedule()

    # -- decisions (synchronous: nothing here awaits) -----------------------------------------

    def _reschedule(self) -> None:
        if self._closing:
            return
        now = trio.current_time()
        # Hand out leases first: a runner that just became ready has waiters, so it is not idle.
        self._grant_ready()
        self._expire_idle(now)
        self._admit(now)
        self._grant_ready()  # runners that admission undrained
        self._wakeup.set()

    def _expire_idle(self, now: float) -> None:
        for slot in list(self._slots.values()):
            if (
                slot.state is RunnerState.READY
                and slot.refcount == 0
                and slot.keep_alive >= 0
                and now >= slot.last_used + slot.keep_alive
            ):
                self._stop(slot, "idle")

    def _admit(self, now: float) -> None:
        # What the ledger has free, plus what stopping runners will give back.
        available = {device: self._ledger.available(device) for device in self._ledger.budget}
        residents: list[Resident] = []
        admitted: list[_Slot] = []  # loads already started, still waiting in the ledger for memory
        for slot in self._slots.values():
            # The ledger, not the slot's flag, says who holds memory: a load is lent its bytes the
            # moment they are released, before its task runs again to note it.
            loan = self._ledger.loan(slot.key)
            if slot.state is RunnerState.STARTING and loan is None:
                admitted.append(slot)
            elif slot.state in (RunnerState.STOPPING, RunnerState.FAILED) and loan is not None:
                for device, size in loan.items():
                    available[device] = available.get(device, 0) + size
            elif slot.state in (RunnerState.READY, RunnerState.DRAINING) and loan is not None:
                residents.append(self._resident(slot, now))
        claimed: set[object] = set()
        desired_drain: set[object] = set()
        head_seen = False
        self._head_wake_at = None
        # Started loads come first (they are first in the ledger's line too), then queued ones in
        # arrival order. A started load normally fits in what its victims are returning; if not (a
        # correction grew another runner meanwhile), it makes room like the head of the queue.
        queue: list[_Slot | _Ticket] = [*admitted, *self._pending.values()]
        for entry in queue:
            if isinstance(entry, _Ticket) and entry.key in self._slots:
                continue  # loading (single flight), or its previous runner is still going away
            unclaimed = [r for r in residents if r.key not in claimed]
            plan = plan_admission(entry.need, available, unclaimed, now)
            available = dict(plan.remaining)
            claimed.update(plan.claimed)
            if plan.start:
                self._evict(plan.evict)
                if isinstance(entry, _Ticket):
                    self._start_load(entry, now)
            elif not head_seen:
                # Only the oldest waiting load acts to make room; later ones only claim, so they
                # cannot take what it waits for, yet may still start in memory nobody waits for.
                head_seen = True
                self._evict(plan.evict)
                desired_drain.update(plan.drain)
                self._head_wake_at = plan.wake_at
        for slot in list(self._slots.values()):
            if slot.state is RunnerState.DRAINING and slot.key not in desired_drain:
                self._advance(slot, RunnerEvent.UNDRAIN)
            elif slot.state is RunnerState.READY and slot.key in desired_drain:
                log.info("draining %s to make room for a queued model", slot.key)
                self._advance(slot, RunnerEvent.DRAIN)

    def _evict(self, keys: Sequence[object]) -> None:
        for key in keys:
            victim = self._slots.get(cast(RunnerKey, key))
            if victim is not None:
                log.info("evicting idle runner %s to make room", victim.key)
                self._stop(victim, "evicted")

    def _resident(self, slot: _Slot, now: float) -> Resident:
        settings = self._settings
        ready_at = slot.ready_at if slot.ready_at is not None else slot.created_at
        protected_until = ready_at + settings.min_residency
        if slot.refcount == 0:
            protected_until = min(protected_until, slot.last_used + settings.residency_idle_grace)
        return Resident(
            key=slot.key,
            holds=dict(self._ledger.loan(slot.key) or {}),
            busy=slot.refcount > 0,
            protected_until=protected_until,
            last_used=slot.last_used,
            pinned=slot.keep_alive < 0,
            draining=slot.state is RunnerState.DRAINING,
        )

    def _grant_ready(self) -> None:
        for key, ticket in list(self._pending.items()):
            slot = self._slots.get(key)
            if slot is None or slot.state is not RunnerState.READY:
                continue
            del self._pending[key]
            for waiter in ticket.waiters:
                waiter.lease = self._grant(slot, ticket.keep_alive_override)
                waiter.done.set()
            self._queued -= len(ticket.waiters)
            ticket.waiters.clear()

    def _start_load(self, ticket: _Ticket, now: float) -> None:
        slot = _Slot(
            key=ticket.key,
            model_name=ticket.model_name,
            spec=ticket.spec,
            backend=ticket.backend,
            config=ticket.config,
            estimate=ticket.estimate,
            need=ticket.need,
            keep_alive=(
                ticket.keep_alive if ticket.keep_alive_override is None else ticket.keep_alive_override
            ),
            created_at=now,
            last_used=now,
            stop_grace=self._settings.stop_grace,
        )
        self._slots[ticket.key] = slot
        self._loads_started += 1
        log.info("loading %s (%s)", ticket.key, _describe(ticket.need))
        self._nursery.start_soon(self._run_slot, slot, name=f"runner {ticket.key}")

    def _stop(self, slot: _Slot, reason: str, *, grace: float | None = None) -> None:
        if slot.state in (RunnerState.STOPPING, RunnerState.FAILED, RunnerState.STOPPED):
            return
        was_starting = slot.state is RunnerState.STARTING
        self._advance(slot, RunnerEvent.STOP)
        slot.stop_reason = reason
        if grace is not None:
            slot.stop_grace = grace
        if was_starting:
            slot.load_scope.cancel()
        slot.stop_requested.set()

    def _advance(self, slot: _Slot, event: RunnerEvent) -> None:
        try:
            slot.state = transition(slot.state, event)
        except IllegalTransition:
            # A scheduler bug: do not serve from a runner whose state we no longer trust.
            log.exception("runner %s: illegal lifecycle event; failing it", slot.key)
            slot.state = RunnerState.FAILED
            slot.stop_reason = slot.stop_reason or "internal error"
            slot.stop_requested.set()

    def _next_deadline(self) -> float:
        deadline = math.inf
        if self._head_wake_at is not None:
            deadline = self._head_wake_at
        for slot in self._slots.values():
            if slot.state is RunnerState.READY and slot.refcount == 0 and slot.keep_alive >= 0:
                deadline = min(deadline, slot.last_used + slot.keep_alive)
        return deadline

    def _retry_after(self) -> float:
        load = self._load_seconds_avg if self._load_seconds_avg is not None else 1.0
        return max(1.0, load + self._settings.min_residency)

    def _runner_settings(self, key: RunnerKey) -> tuple[RunnerConfig, float]:
        stored = self._configs.get(key)
        if stored is None and key.mode is Mode.RERANKING:
            # DMR: reranking falls back to the completion-mode configuration.
            stored = self._configs.get(key._replace(mode=Mode.COMPLETION))
        keep_alive = self._settings.default_keep_alive
        if stored is not None and stored.keep_alive is not None:
            keep_alive = stored.keep_alive
        config = stored.runner_config() if stored is not None else RunnerConfig()
        return config, (KEEP_ALIVE_FOREVER if keep_alive < 0 else keep_alive)

    def _check_open(self) -> None:
        if self._closing:
            raise SchedulerClosed()

    # -- runner tasks (the I/O) ---------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        runner = slot.runner
        exit_info: ExitInfo | None = None
        try:
            if runner is None:
                runner = await self._load(slot)
                if runner is None:
                    return
            exit_info = await self._supervise(slot, runner)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(slot, runner, exit_info)

    async def _load(self, slot: _Slot) -> Runner | None:
        started = trio.current_time()
        assert slot.spec is not None
        with slot.load_scope:
            # Waits here while the runners admission displaced finish stopping.
            await self._ledger.acquire_on_behalf_of(slot.key, slot.need)
            slot.holds_ledger = True
            load_started = trio.current_time()
            try:
                runner = await slot.backend.start_runner(slot.spec, slot.key.mode, slot.config, slot.estimate)
            except Exception as exc:
                # A supervisor boundary: one engine's failure (or a backend bug) must reach the
                # requests that waited for it, not tear down every other runner.
                self._on_load_failed(slot, exc)
                return None
            self._on_loaded(slot, runner, trio.current_time() - load_started)
            return runner
        self._metrics.loads.labels(slot.key.backend, slot.key.mode.value, "cancelled").inc()
        log.info("load of %s cancelled after %.2fs", slot.key, trio.current_time() - started)
        return None

    def _on_load_failed(self, slot: _Slot, exc: Exception) -> None:
        if isinstance(exc, EngineError | SchedulerError):
            error: Exception = exc
            log.warning("engine for %s failed to start: %s", slot.key, exc)
        else:
            log.error("engine for %s failed to start", slot.key, exc_info=exc)
            error = EngineStartError(f"engine for {slot.model_name!r} failed to start: {exc!r}")
            error.__cause__ = exc
        self._load_failures += 1
        self._metrics.loads.labels(slot.key.backend, slot.key.mode.value, "failed").inc()
        if slot.state is RunnerState.STARTING:
            self._advance(slot, RunnerEvent.LOAD_FAILED)
        if slot.holds_ledger:
            self._ledger.release_on_behalf_of(slot.key)
            slot.holds_ledger = False
        ticket = self._pending.pop(slot.key, None)
        if ticket is not None:
            for waiter in ticket.waiters:
                waiter.error = error
                waiter.done.set()
            self._queued -= len(ticket.waiters)
            ticket.waiters.clear()

    def _on_loaded(self, slot: _Slot, runner: Runner, seconds: float) -> None:
        slot.runner = runner
        self._metrics.loads.labels(slot.key.backend, slot.key.mode.value, "ok").inc()
        self._metrics.load_seconds.labels(slot.key.backend).observe(seconds)
        self._load_seconds_avg = (
            seconds if self._load_seconds_avg is None else 0.8 * self._load_seconds_avg + 0.2 * seconds
        )
        if slot.state is not RunnerState.STARTING:
            return  # stopped while loading; _supervise returns at once and _finish stops it
        now = trio.current_time()
        self._advance(slot, RunnerEvent.LOADED)
        slot.ready_at = now
        slot.last_used = now
        slot.last_used_wall = datetime.now(UTC)
        log.info("runner %s ready in %.2fs", slot.key, seconds)
        self._reschedule()

    async def _supervise(self, slot: _Slot, runner: Runner) -> ExitInfo | None:
        exit_info: ExitInfo | None = None

        async def watch_exit(cancel_scope: trio.CancelScope) -> None:
            nonlocal exit_info
            try:
                exit_info = await runner.wait_exit()
            except Exception as exc:
                exit_info = ExitInfo(code=None, oom_killed=False, message=f"lost track of the engine: {exc}")
            self._on_exited(slot, exit_info)
            cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_exit, nursery.cancel_scope)
            nursery.start_soon(self._correct_reservation, slot, runner)
            await slot.stop_requested.wait()
            nursery.cancel_scope.cancel()
        return exit_info

    def _on_exited(self, slot: _Slot, info: ExitInfo) -> None:
        if slot.state not in (RunnerState.READY, RunnerState.DRAINING):
            # Stopped on purpose, or reported broken by the proxy: keep the proxy's account unless
            # the engine's own exit says more (an OOM kill, a log tail); take its exit status.
            previous = slot.exit_info
            slot.exit_info = ExitInfo(
                code=info.code,
                oom_killed=info.oom_killed,
                message=info.message or (previous.message if previous is not None else ""),
            )
            return
        # Unexpected: crash, OOM kill, or killed from outside. Its memory is free now.
        self._advance(slot, RunnerEvent.EXITED)
        slot.exit_info = info
        slot.stop_reason = "oom" if info.oom_killed else "died"
        log.warning(
            "engine for %s exited unexpectedly (code %s%s): %s",
            slot.key, info.code, ", OOM killed" if info.oom_killed else "", info.message or "no log",
        )
        if slot.holds_ledger:
            self._ledger.release_on_behalf_of(slot.key)
            slot.holds_ledger = False
        slot.ended.set()
        slot.stop_requested.set()
        self._reschedule()

    async def _correct_reservation(self, slot: _Slot, runner: Runner) -> None:
        """Correct the ledger from the estimate to what the ready engine really uses.

        RAM: the larger of the cgroup measurement and the engine's own buffer report, plus headroom
        for growth. The loan grows at once if the estimate was low (the bytes are in use either way);
        it shrinks only for runners whose cgroup limit follows (``MemoryLimitedRunner``), so an
        engine can never grow back into bytes lent to another. VRAM (not limited by any cgroup)
        follows the engine's report both ways.
        """
        measured = await self._measure(runner)
        if measured is not None:
            slot.memory_measured = measured
        settings = self._settings
        if not settings.correct_to_measured or slot.adopted:
            return
        report = runner.engine_report if isinstance(runner, ReportingRunner) else None
        in_use = max(measured or 0, report.ram if report is not None else 0)
        if in_use <= 0:
            return
        loan = dict(self._ledger.loan(slot.key) or {})
        corrected = dict(loan)
        reserved = loan.get(RAM, 0)
        target = in_use + max(int(in_use * settings.measured_headroom), settings.measured_headroom_min)
        if in_use > reserved:
            log.warning("runner %s uses %d bytes of RAM, more than the %d reserved", slot.key, in_use,
                        reserved)
            corrected[RAM] = in_use
        elif target < reserved and isinstance(runner, MemoryLimitedRunner):
            try:
                await runner.set_memory_limit(target)
            except Exception as exc:
                log.warning("cannot lower the memory limit of %s: %s", slot.key, exc)
            else:
                corrected[RAM] = target
        if report is not None:
            for device, size in report.vram.items():
                if device in loan and size > 0:
                    corrected[device] = int(size)
        if corrected == loan:
            return
        if slot.holds_ledger and slot.state in (RunnerState.READY, RunnerState.DRAINING):
            log.info("runner %s: reservation corrected from %s to %s", slot.key, _describe(loan),
                     _describe(corrected))
            self._ledger.adjust_on_behalf_of(slot.key, corrected)
            self._reschedule()

    async def _measure(self, runner: Runner) -> int | None:
        with trio.move_on_after(_MEASURE_TIMEOUT):
            try:
                return await runner.measured_memory()
            except Exception as exc:
                log.debug("measuring %s failed: %s", runner.runner_id, exc)
        return None

    async def _finish(self, slot: _Slot, runner: Runner | None, exit_info: ExitInfo | None) -> None:
        if runner is not None and not self._detaching:
            with trio.move_on_after(slot.stop_grace + _STOP_SLACK) as scope:
                try:
                    await runner.stop(slot.stop_grace)
                except Exception:
                    log.exception("stopping the engine for %s failed", slot.key)
            if scope.cancelled_caught:
                log.error("engine for %s did not stop in time; returning its memory anyway", slot.key)
        if slot.holds_ledger:
            self._ledger.release_on_behalf_of(slot.key)
            slot.holds_ledger = False
        if slot.state in (RunnerState.STARTING, RunnerState.READY, RunnerState.DRAINING):
            self._advance(slot, RunnerEvent.STOP)
            slot.stop_reason = slot.stop_reason or ("detached" if self._detaching else "shutdown")
        if slot.state is not RunnerState.STOPPED:
            self._advance(slot, RunnerEvent.CLEANED_UP)
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        if slot.ready_at is not None or slot.adopted:
            reason = slot.stop_reason or "shutdown"
            self._unloads[reason] += 1
            self._metrics.unloads.labels(slot.key.backend, reason).inc()
            log.info("runner %s stopped (%s)", slot.key, reason)
        slot.ended.set()
        self._reschedule()

    async def _timer_loop(self) -> None:
        while not self._closing:
            self._wakeup = trio.Event()
            self._timer_deadline = self._next_deadline()
            with trio.move_on_at(self._timer_deadline) as scope:
                await self._wakeup.wait()
            if scope.cancelled_caught:
                self._reschedule()

    async def _measure_loop(self) -> None:
        while True:
            await trio.sleep(self._settings.measure_interval)
            for slot in list(self._slots.values()):
                if slot.runner is not None and slot.state in (RunnerState.READY, RunnerState.DRAINING):
                    measured = await self._measure(slot.runner)
                    if measured is not None:
                        slot.memory_measured = measured

    # -- adoption -----------------------------------------------------------------------------

    async def _collect_adoptable(self) -> list[tuple[Backend, Runner, int | None]]:
        found: list[tuple[Backend, Runner, int | None]] = []
        for backend in self._registry:
            try:
                runners = await backend.adopt_runners()
            except Exception as exc:
                log.warning("cannot re-adopt %s runners: %s", backend.name, exc)
                continue
            for runner in runners:
                found.append((backend, runner, await self._measure(runner)))
        return found

    async def _adopt(self, found: Sequence[tuple[Backend, Runner, int | None]]) -> None:
        now = trio.current_time()
        for backend, runner, measured in found:
            key = RunnerKey(runner.backend, runner.model_id, Mode(runner.mode))
            if key in self._slots:
                log.warning("two adopted runners for %s; stopping %s", key, runner.runner_id)
                grace = self._settings.stop_grace
                with trio.CancelScope(shield=True), trio.move_on_after(grace + _STOP_SLACK):
                    await runner.stop(grace)
                continue
            config, keep_alive = self._runner_settings(key)
            slot = _Slot(
                key=key,
                model_name=self._name_for(runner.model_id),
                spec=None,
                backend=backend,
                config=config,
                estimate=runner.reservation,
                need=ledger_amounts(runner.reservation),
                keep_alive=keep_alive,
                created_at=now,
                state=RunnerState.READY,
                runner=runner,
                ready_at=now,
                last_used=now,
                last_used_wall=datetime.now(UTC),
                holds_ledger=True,
                memory_measured=measured,
                adopted=True,
                stop_grace=self._settings.stop_grace,
            )
            self._ledger.force_on_behalf_of(key, slot.need)
            self._slots[key] = slot
            log.info("re-adopted runner %s (%s)", key, _describe(slot.need))
            self._nursery.start_soon(self._run_slot, slot, name=f"runner {key}")

    def _name_for(self, model_id: str) -> str:
        try:
            return self._resolver.resolve(model_id).name
        except Exception as exc:  # the model may be gone from the store; the runner still runs
            log.debug("no stored name for %s: %s", model_id, exc)
            return model_id

    # -- read models and admin --------------------------------------------------------------

    def ps(self) -> list[RunnerInfo]:
        """Runners that are loading, ready or draining (``/engines/ps``)."""
        rows = []
        for slot in self._slots.values():
            if slot.state not in (RunnerState.STARTING, RunnerState.READY, RunnerState.DRAINING):
                continue
            loan = self._ledger.loan(slot.key) or (slot.need if slot.state is RunnerState.STARTING else {})
            rows.append(
                RunnerInfo(
                    backend_name=slot.key.backend,
                    model_name=slot.model_name,
                    model_id=slot.key.model_id,
                    mode=slot.key.mode,
                    last_used=slot.last_used_wall if slot.refcount == 0 else None,
                    in_use=slot.refcount > 0,
                    loading=slot.state is RunnerState.STARTING,
                    keep_alive=slot.keep_alive,
                    memory_reserved=sum(loan.values()),
                    memory_measured=slot.memory_measured,
                    state=slot.state,
                    in_flight=slot.refcount,
                    runner_id=slot.runner.runner_id if slot.runner is not None else None,
                    reserved_by_device=MappingProxyType(dict(loan)),
                    socket_path=slot.runner.socket_path
                    if slot.runner is not None and slot.state is not RunnerState.STARTING
                    else None,
                )
            )
        return rows

    def df(self) -> DiskUsage:
        """``/engines/df``: bytes of stored models and of the default backend's install."""
        models = self._resolver.disk_usage() if isinstance(self._resolver, DiskUsageReporter) else 0
        try:
            default = self._registry.default
        except EngineError:
            return DiskUsage(models, 0)
        engine = default.disk_usage() if isinstance(default, DiskUsageReporter) else 0
        return DiskUsage(models, engine)

    def status(self) -> dict[str, str]:
        """Backend name -> DMR status string (``/engines/status``)."""
        return self._registry.statuses()

    def statistics(self) -> SchedulerStatistics:
        states = _Counter(slot.state.value for slot in self._slots.values())
        return SchedulerStatistics(
            queued_requests=self._queued,
            pending_loads=len(self._pending),
            in_flight=sum(slot.refcount for slot in self._slots.values()),
            runners_by_state=MappingProxyType(dict(states)),
            ledger=self._ledger.statistics(),
            memory_measured=sum(s.memory_measured or 0 for s in self._slots.values()),
            loads_started=self._loads_started,
            load_failures=self._load_failures,
            unloads=MappingProxyType(dict(self._unloads)),
            peak_queued=self._peak_queued,
        )

    def metrics(self) -> CollectorRegistry:
        """The registry holding this scheduler's metrics (not the global one)."""
        return self._metrics.registry

    @property
    def ledger(self) -> MemoryLedger:
        return self._ledger

    async def unload(
        self, *, all: bool = False, backend: str | None = None, models: Sequence[str] = ()
    ) -> int:
        """Stop idle runners (``/engines/unload``); in-use and loading runners survive.

        ``all`` unloads every idle runner and clears every stored ``_configure``; otherwise runners
        of ``backend`` and/or of ``models`` (every mode), and, when both are given, those models'
        configs for that backend (DMR). Returns the number of runners unloaded, once they are gone.

        Raises:
            ModelNotFound: a model names neither a stored model nor a running one.
        """
        configs_changed = False
        if all:
            targets = list(self._slots.values())
            configs_changed = bool(self._configs.all())
            for config in self._configs.all():
                self._configs.delete(config.key)
        elif backend is None and not models:
            return 0
        else:
            ids = self._model_ids(models) if models else None
            targets = [
                slot
                for slot in self._slots.values()
                if (backend is None or slot.key.backend == backend)
                and (ids is None or slot.key.model_id in ids)
            ]
            if ids is not None and backend is not None:
                configs_changed = self._configs.delete_matching(backend=backend, model_ids=ids) > 0
        stopping = [
            slot
            for slot in targets
            if slot.state in (RunnerState.READY, RunnerState.DRAINING) and slot.refcount == 0
        ]
        for slot in stopping:
            self._stop(slot, "unload")
        self._reschedule()
        if configs_changed:
            await self._persist_configs()
        for slot in stopping:
            await slot.ended.wait()
        return len(stopping)

    def _model_ids(self, models: Sequence[str]) -> set[str]:
        ids: set[str] = set()
        for ref in models:
            try:
                ids.add(self._resolver.resolve(ref).id)
                continue
            except Exception as exc:
                matches = {
                    s.key.model_id for s in self._slots.values() if ref in (s.model_name, s.key.model_id)
                }
                if not matches:
                    if isinstance(exc, SchedulerError | LookupError):
                        raise
                    raise ModelNotFound(ref) from exc
                ids |= matches
        return ids

    async def configure(self, request: ConfigureRequest, *, preload: bool = False) -> ModelConfig:
        """Store per-(backend, model, mode) settings (DMR's ``POST /engines/_configure``).

        An idle runner with different settings is unloaded so the next request gets the new ones; a
        change of ``keep_alive`` alone applies to the running runner without a restart. Settings are
        persisted before this returns. ``preload`` then loads the runner in the background (DMR's
        202 + background preload, 1 minute budget).

        Raises:
            ModelNotFound, UnknownBackend, InvalidRuntimeFlags, RunnerInUse (requests in flight or
            loading, and the change needs a restart), SchedulerClosed.
        """
        self._check_open()
        spec = self._resolver.resolve(request.model)
        backend = self._registry.select_for_format(spec.format, request.backend)
        flags = request.effective_runtime_flags()
        backend.validate_runtime_flags(flags)
        mode = request.effective_mode()
        key = RunnerKey(backend.name, spec.id, mode)
        new = ModelConfig(
            backend=backend.name,
            model_id=spec.id,
            model=request.model,
            mode=mode,
            context_size=request.context_size,
            runtime_flags=flags,
            keep_alive=request.keep_alive,
            extra=request.extra,
        )
        old = self._configs.get(key)
        if old == new:
            return new
        baseline = old or ModelConfig(backend.name, spec.id, request.model, mode)
        restart = not baseline.same_runner_settings(new)
        slot = self._slots.get(key)
        if restart and slot is not None and (slot.state is RunnerState.STARTING or slot.refcount > 0):
            raise RunnerInUse(request.model)
        ticket = self._pending.get(key) if key not in self._slots else None
        if ticket is not None:
            # Requests already queued for this key will load with the new settings; estimate them
            # before changing anything, so an unusable configuration changes nothing.
            estimate = backend.estimate_memory(spec, mode, new.runner_config())
        self._configs.put(new)
        config, keep_alive = self._runner_settings(key)
        if slot is not None:
            slot.keep_alive = keep_alive
            if restart:
                self._stop(slot, "configure")
        if ticket is not None:
            ticket.config, ticket.keep_alive = config, keep_alive
            ticket.estimate, ticket.need = estimate, ledger_amounts(estimate)
        self._reschedule()
        await self._persist_configs()
        if restart and slot is not None:
            await slot.ended.wait()
        if preload:
            self._nursery.start_soon(self._background_preload, request.model, mode, backend.name)
        return new

    def configs(self, model: str | None = None) -> list[ModelConfig]:
        """Stored settings (``GET /engines/_configure``), all or for one model."""
        if model is None:
            return self._configs.all()
        model_id = self._resolver.resolve(model).id
        return [config for config in self._configs.all() if config.model_id == model_id]

    async def _persist_configs(self) -> None:
        if self._configs.path is None:
            return
        data = self._configs.snapshot()
        async with self._config_write_lock:
            await trio.to_thread.run_sync(self._configs.write_snapshot, data)

    async def _background_preload(self, model: str, mode: Mode, backend: str) -> None:
        with trio.move_on_after(_CONFIGURE_PRELOAD_TIMEOUT) as scope:
            try:
                await self.preload(model, mode, backend)
            except (EngineError, SchedulerError) as exc:
                log.warning("preload of %s after _configure failed: %s", model, exc)
        if scope.cancelled_caught:
            log.warning(
                "preload of %s after _configure took longer than %ss", model, _CONFIGURE_PRELOAD_TIMEOUT
            )

    # -- shutdown -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._closing = True
        for ticket in self._pending.values():
            for waiter in ticket.waiters:
                waiter.error = SchedulerClosed()
                waiter.done.set()
        self._pending.clear()
        self._queued = 0
        slots = list(self._slots.values())
        if not self._settings.stop_runners_on_exit:
            self._detaching = True
            return
        for slot in slots:
            self._stop(slot, "shutdown")
        with trio.move_on_after(self._settings.shutdown_timeout) as scope:
            for slot in slots:
                await slot.ended.wait()
        if scope.cancelled_caught:
            log.error("runners still stopping after %ss; abandoning them", self._settings.shutdown_timeout)


_TOKEN = object()


@asynccontextmanager
async def open_scheduler(
    registry: BackendRegistry,
    resolver: ModelResolver,
    settings: SchedulerSettings | None = None,
    *,
    gpus: GpuInventory | None = None,
    host_memory: Callable[[], int] | None = None,
) -> AsyncIterator[Scheduler]:
    """Run a scheduler for the duration of the block; it owns its nursery and every runner task.

    On entry: re-adopts live runners from every backend (``adopt_runners``), detects the memory
    budget (devices not fixed in ``settings.memory_budget``), loads persisted ``_configure``
    settings. On exit: refuses new requests, fails queued ones with ``SchedulerClosed``, and stops
    every runner (or leaves them running for re-adoption if ``stop_runners_on_exit`` is False).

    ``gpus`` and ``host_memory`` replace GPU discovery and the ``/proc`` reading (tests, or a daemon
    that already probed).
    """
    settings = settings or SchedulerSettings()
    scheduler = Scheduler(_private=_TOKEN)
    scheduler._registry = registry
    scheduler._resolver = resolver
    scheduler._settings = settings
    if settings.config_path is None:
        scheduler._configs = ConfigStore(None)
    else:
        scheduler._configs = await trio.to_thread.run_sync(ConfigStore.load, settings.config_path)
    scheduler._metrics = SchedulerMetrics(scheduler.statistics)
    async with trio.open_nursery() as nursery:
        scheduler._nursery = nursery
        found = await scheduler._collect_adoptable()
        configured = dict(settings.memory_budget or {})
        if gpus is None and not _budget_fixes_gpus(configured):
            with trio.move_on_after(_GPU_PROBE_TIMEOUT):
                gpus = await discover_gpus()
            if gpus is None:
                log.warning("GPU discovery took longer than %ss; budgeting host RAM only", _GPU_PROBE_TIMEOUT)
        host_available: int | None = None
        if RAM not in configured:
            host_available = host_memory() if host_memory is not None else host_available_memory()
        adopted_usage: dict[str, int] = {}
        for _, runner, measured in found:
            for device, size in ledger_amounts(runner.reservation).items():
                used = measured if device == RAM and measured is not None else size
                adopted_usage[device] = adopted_usage.get(device, 0) + used
        budget = compute_budget(
            configured=configured,
            host_available=host_available,
            gpus=gpus,
            margin=settings.margin,
            adopted_usage=adopted_usage,
        )
        scheduler._ledger = MemoryLedger(budget)
        log.info("memory budget: %s", _describe(budget))
        await scheduler._adopt(found)
        nursery.start_soon(scheduler._timer_loop, name="scheduler timers")
        nursery.start_soon(scheduler._measure_loop, name="scheduler memory sampling")
        try:
            yield scheduler
        finally:
            with trio.CancelScope(shield=True):
                await scheduler._shutdown()
            nursery.cancel_scope.cancel()


def _budget_fixes_gpus(configured: Mapping[str, int]) -> bool:
    # An explicit budget without any GPU entry still wants GPUs detected; one that names GPUs has
    # decided for itself (GPU discovery can be slow on a wedged driver).
    return any(device != RAM for device in configured)


def _describe(amounts: Mapping[str, int]) -> str:
    return ", ".join(f"{device} {size / (1 << 20):.0f} MiB" for device, size in sorted(amounts.items()))


def _copy_error(error: BaseException) -> BaseException:
    # One load failure is raised in every task that waited for it; each gets its own instance so
    # their tracebacks do not pile up on a shared object.
    try:
        clone = copy.copy(error)
    except Exception:
        return error
    clone.__cause__ = error.__cause__
    return clone

