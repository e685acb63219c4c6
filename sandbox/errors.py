"""Typed errors raised by sandbox/.

Every error says which rule was broken and, where there is one, what to do about it. The classes
mirror the project's error vocabulary (containerd's errdefs): a bad request is an invalid argument, a
missing CDI device is not found, a host that cannot provide what the request needs is a failed
precondition. Callers above (scheduler/, api/) map them; sandbox/ never catches a bare ``Exception``.
"""

from __future__ import annotations

__all__ = [
    "CDIDeviceNotFound",
    "CDIError",
    "CDISpecError",
    "CDIUnsupported",
    "HostDeviceError",
    "InvalidSandboxRequest",
    "NetnsError",
    "SandboxError",
]


class SandboxError(Exception):
    """Base of every sandbox/ error."""


class InvalidSandboxRequest(SandboxError, ValueError):
    """A :class:`~modelrunner.sandbox.spec.SandboxRequest` field breaks a sandbox rule (invalid argument)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"sandbox request field {field!r}: {message}")


class CDIError(SandboxError):
    """Base of the Container Device Interface errors."""


class CDISpecError(CDIError):
    """A CDI spec file cannot be read or does not follow the CDI format (invalid argument)."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"CDI spec {source}: {message}")


class CDIDeviceNotFound(CDIError, LookupError):
    """No loaded CDI spec defines the requested device (not found)."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class CDIUnsupported(CDIError):
    """A CDI spec asks for an edit modelrunner cannot apply on this runtime (failed precondition)."""


class HostDeviceError(CDIError):
    """A device node a CDI spec names is missing on the host or is not a device (failed precondition)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"host device {path}: {message}")


class NetnsError(SandboxError):
    """A network namespace could not be prepared, inspected or removed (unavailable)."""
