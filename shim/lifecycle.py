"""The task lifecycle as an explicit state machine (pure).

A runner's containerd resources are created in a fixed order and released in reverse:

    NEW -> LEASED -> SNAPSHOT_READY -> CONTAINER_CREATED -> TASK_CREATED -> RUNNING
        -> STOPPING -> EXITED -> RELEASING -> RELEASED

A failure while starting jumps to RELEASING from wherever it happened. RELEASING ends in RELEASED, or
in FAILED when containerd refused a deletion; what is left then carries runner labels, and
``cleanup_orphans`` removes it later. FAILED may retry RELEASING. Any other move is a bug: it raises
:class:`~modelrunner.shim.errors.IllegalTransition` and puts the machine in FAILED.
"""

from __future__ import annotations

import enum
from typing import final

from modelrunner.shim.errors import IllegalTransition

__all__ = ["TRANSITIONS", "TaskLifecycle", "TaskPhase"]


class TaskPhase(enum.Enum):
    NEW = "new"
    LEASED = "leased"
    SNAPSHOT_READY = "snapshot-ready"
    CONTAINER_CREATED = "container-created"
    TASK_CREATED = "task-created"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    RELEASING = "releasing"
    RELEASED = "released"
    FAILED = "failed"


_P = TaskPhase
TRANSITIONS: dict[TaskPhase, frozenset[TaskPhase]] = {
    _P.NEW: frozenset({_P.LEASED, _P.RELEASING}),
    _P.LEASED: frozenset({_P.SNAPSHOT_READY, _P.RELEASING}),
    _P.SNAPSHOT_READY: frozenset({_P.CONTAINER_CREATED, _P.RELEASING}),
    _P.CONTAINER_CREATED: frozenset({_P.TASK_CREATED, _P.RELEASING}),
    _P.TASK_CREATED: frozenset({_P.RUNNING, _P.RELEASING}),
    _P.RUNNING: frozenset({_P.STOPPING, _P.EXITED}),
    _P.STOPPING: frozenset({_P.EXITED}),
    _P.EXITED: frozenset({_P.RELEASING}),
    _P.RELEASING: frozenset({_P.RELEASED, _P.FAILED}),
    _P.RELEASED: frozenset(),
    _P.FAILED: frozenset({_P.RELEASING}),
}


@final
class TaskLifecycle:
    """The current phase of one task and the phases it went through."""

    def __init__(self, container_id: str, phase: TaskPhase = TaskPhase.NEW) -> None:
        self.container_id = container_id
        self._phase = phase
        self.history: list[TaskPhase] = [phase]

    @property
    def phase(self) -> TaskPhase:
        return self._phase

    def can(self, target: TaskPhase) -> bool:
        return target in TRANSITIONS[self._phase]

    def advance(self, target: TaskPhase) -> None:
        """Move to ``target``.

        Raises:
            IllegalTransition: the move is not in TRANSITIONS; the machine is then FAILED.
        """
        if target not in TRANSITIONS[self._phase]:
            current = self._phase
            self._phase = TaskPhase.FAILED
            self.history.append(TaskPhase.FAILED)
            raise IllegalTransition(
                f"task {self.container_id}",
                f"cannot go from {current.value} to {target.value} (allowed: "
                + (", ".join(sorted(p.value for p in TRANSITIONS[current])) or "none")
                + ")",
            )
        self._phase = target
        self.history.append(target)
