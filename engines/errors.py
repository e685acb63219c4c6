"""Typed errors raised by engines/."""

from __future__ import annotations

__all__ = [
    "BackendBusy",
    "BackendNotInstalled",
    "EngineError",
    "EngineStartError",
    "InvalidRuntimeFlags",
    "UnknownBackend",
]


class EngineError(Exception):
    """Base of every engines/ error."""


class UnknownBackend(EngineError):
    """No backend with that name is registered (maps to 404)."""

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        self.name = name
        self.known = known
        hint = f"; known backends: {', '.join(known)}" if known else ""
        super().__init__(f"unknown backend {name!r}{hint}")


class BackendNotInstalled(EngineError):
    """The backend's engine image is not installed, or cannot be on this host."""

    def __init__(self, backend: str, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"backend {backend} is not installed: {reason}")


class InvalidRuntimeFlags(EngineError):
    """A runtime flag is not on the backend's allowlist or names a path (maps to 400)."""

    def __init__(self, message: str, flags: tuple[str, ...] = ()) -> None:
        self.flags = flags
        super().__init__(message)


class EngineStartError(EngineError):
    """The engine exited, or did not become ready, before its load deadline."""

    def __init__(self, message: str, *, log_tail: str = "", exit_code: int | None = None,
                 oom_killed: bool = False) -> None:
        self.log_tail = log_tail
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        super().__init__(message)


class BackendBusy(EngineError):
    """The backend still has runners, so it cannot be uninstalled (maps to 409)."""
