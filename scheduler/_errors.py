"""Typed errors raised by scheduler/.

Each class carries ``status_hint``, the HTTP status an API edge should answer with (like h11's
``error_status_hint`` and distribution/'s errors), so api/ maps them with one table. Errors from
engines/ (``EngineStartError``, ``UnknownBackend``, ``InvalidRuntimeFlags``, ...) and from the model
resolver pass through the scheduler unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "InvalidConfiguration",
    "ModelNotFound",
    "ModelTooLarge",
    "QueueFull",
    "QueueTimeout",
    "RunnerDied",
    "RunnerInUse",
    "SchedulerClosed",
    "SchedulerError",
]


class SchedulerError(Exception):
    """Base of every scheduler/ error."""

    status_hint: int = 500


class ModelNotFound(SchedulerError, LookupError):
    """The model reference names no stored model (404). Raised by ``ModelResolver`` implementations."""

    status_hint = 404

    def __init__(self, reference: str) -> None:
        self.reference = reference
        super().__init__(f"model {reference!r} not found; pull it first")


class ModelTooLarge(SchedulerError):
    """The model's memory estimate exceeds the whole budget of a device, so it can never be loaded.

    Raised at once instead of queueing forever. ``needed`` and ``budget`` are bytes per device (only
    the devices that do not fit).
    """

    status_hint = 507

    def __init__(self, model: str, needed: Mapping[str, int], budget: Mapping[str, int]) -> None:
        self.model = model
        self.needed = dict(needed)
        self.budget = dict(budget)
        parts = [
            f"{device}: needs {_format_bytes(needed[device])}, "
            f"budget is {_format_bytes(budget.get(device, 0))}"
            for device in sorted(needed)
        ]
        super().__init__(
            f"model {model!r} can never fit in memory ({'; '.join(parts)}); raise the budget "
            "(MODELRUNNER_MEMORY), lower its context size, or use a smaller quantization"
        )


class QueueFull(SchedulerError):
    """Too many requests are already waiting for a runner (503 with ``Retry-After``)."""

    status_hint = 503

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


class QueueTimeout(QueueFull):
    """A request waited in the queue longer than the configured maximum wait (503)."""


class RunnerDied(SchedulerError):
    """The engine task exited (crash, OOM kill, killed from outside) while a request needed it.

    ``exit_code``, ``oom_killed`` and ``log_tail`` come from the engine's ``ExitInfo``.
    """

    status_hint = 502

    def __init__(
        self, model: str, *, exit_code: int | None = None, oom_killed: bool = False, log_tail: str = "",
        reason: str = "",
    ) -> None:
        self.model = model
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        self.log_tail = log_tail
        if oom_killed:
            what = "was killed for exceeding its memory limit (OOM)"
        elif reason:
            what = reason if exit_code is None else f"{reason} (exit status {exit_code})"
        elif exit_code is not None:
            what = f"exited with status {exit_code}"
        else:
            what = "exited"
        detail = f": {log_tail}" if log_tail else ""
        super().__init__(f"the engine serving {model!r} {what}{detail}")


class RunnerInUse(SchedulerError):
    """A runner cannot be reconfigured while requests are in flight or it is loading (409)."""

    status_hint = 409

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"runner for {model!r} is already active; retry when its requests are done")


class InvalidConfiguration(SchedulerError, ValueError):
    """A ``_configure`` request or a persisted setting is malformed (400)."""

    status_hint = 400


class SchedulerClosed(SchedulerError):
    """The scheduler is shutting down and takes no new requests (503)."""

    status_hint = 503

    def __init__(self) -> None:
        super().__init__("the model scheduler is shutting down")


def _format_bytes(value: int) -> str:
    # Exact bytes plus a human figure: both numbers matter to the person raising a budget.
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit} ({value} bytes)"
    return f"{value} bytes"
