"""The runner lifecycle: states, events and the one transition table.

Theory of operation (after h11's ``_state.py``): every runner the scheduler owns is in exactly one
``RunnerState``. The scheduler never assigns a state directly; it reports an ``RunnerEvent`` and
``transition`` looks the pair up in ``TRANSITIONS``. A pair with no entry is a bug in the caller:
``transition`` raises ``IllegalTransition`` naming the state and event, and the caller moves the runner
to FAILED (the runner task then stops the engine and returns its memory), so a confused runner is
never left half-updated and serving.

::

    STARTING --LOADED--> READY --DRAIN--> DRAINING --STOP--> STOPPING --EXITED/CLEANED_UP--> STOPPED
       |                  | ^                |  |                                               ^
       |                  | +----UNDRAIN-----+  |                                               |
       +--LOAD_FAILED--> FAILED <--EXITED-------+--------------------------------CLEANED_UP-----+
       +--STOP--> STOPPING                 READY --STOP--> STOPPING

* STARTING: the engine task is being created and loads the model; requests for it wait (single
  flight). Its estimate is already claimed from the memory ledger.
* READY: answers requests. Only READY runners take new requests.
* DRAINING: chosen to make room for a queued model: finishes its in-flight requests, takes no new
  ones (they queue), then stops. A drain is undone (UNDRAIN) if the waiting request goes away.
* STOPPING: being stopped on purpose (idle, evicted, unloaded, reconfigured, shutdown).
* FAILED: the engine died or failed to load; its memory is already back in the ledger and the task is
  being cleaned up. Requests that held it get ``RunnerDied``.
* STOPPED: gone; every resource released. Terminal.
"""

from __future__ import annotations

import enum
from types import MappingProxyType

__all__ = [
    "ACCEPTING_STATES",
    "TRANSITIONS",
    "IllegalTransition",
    "RunnerEvent",
    "RunnerState",
    "transition",
]


class RunnerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"
    STOPPED = "stopped"


class RunnerEvent(enum.StrEnum):
    LOADED = "loaded"  # start_runner returned: /health answered 200
    LOAD_FAILED = "load_failed"  # start_runner raised
    DRAIN = "drain"  # admission wants its memory; it is busy
    UNDRAIN = "undrain"  # the request that wanted its memory left or was served otherwise
    STOP = "stop"  # the scheduler decided to stop it
    EXITED = "exited"  # the engine task exited
    CLEANED_UP = "cleaned_up"  # container, task, snapshot and lease are gone


_S = RunnerState
_E = RunnerEvent

TRANSITIONS: MappingProxyType[tuple[RunnerState, RunnerEvent], RunnerState] = MappingProxyType(
    {
        (_S.STARTING, _E.LOADED): _S.READY,
        (_S.STARTING, _E.LOAD_FAILED): _S.FAILED,
        (_S.STARTING, _E.STOP): _S.STOPPING,
        (_S.READY, _E.DRAIN): _S.DRAINING,
        (_S.READY, _E.STOP): _S.STOPPING,
        (_S.READY, _E.EXITED): _S.FAILED,
        (_S.DRAINING, _E.UNDRAIN): _S.READY,
        (_S.DRAINING, _E.STOP): _S.STOPPING,
        (_S.DRAINING, _E.EXITED): _S.FAILED,
        # A runner being stopped exits as asked; one that was told to stop twice stays put.
        (_S.STOPPING, _E.EXITED): _S.STOPPING,
        (_S.STOPPING, _E.STOP): _S.STOPPING,
        (_S.STOPPING, _E.CLEANED_UP): _S.STOPPED,
        # A dead runner is cleaned up like a stopped one; a stop request for it is already satisfied.
        (_S.FAILED, _E.STOP): _S.FAILED,
        (_S.FAILED, _E.EXITED): _S.FAILED,
        (_S.FAILED, _E.CLEANED_UP): _S.STOPPED,
    }
)

ACCEPTING_STATES = frozenset({RunnerState.READY})
"""States in which a runner takes new requests."""


class IllegalTransition(RuntimeError):
    """An event that the current state does not allow (a scheduler bug, never user input)."""

    def __init__(self, state: RunnerState, event: RunnerEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(f"runner in state {state.value!r} cannot take event {event.value!r}")


def transition(state: RunnerState, event: RunnerEvent) -> RunnerState:
    """The state after ``event``.

    Raises:
        IllegalTransition: the table has no entry for (state, event).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None
