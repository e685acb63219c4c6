"""Typed errors raised by shim/.

The classes mirror containerd's own error vocabulary (errdefs), which containerd sends as gRPC status
codes: :func:`from_rpc_error` is the one place where a gRPC code becomes a modelrunner error, and
nothing above shim/ ever sees a ``grpc.RpcError``. Every message names the operation that failed and
containerd's own explanation, so ``modelrunner: error: ...`` lines are actionable without a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExists",
    "ContainerdError",
    "FailedPrecondition",
    "IllegalTransition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unavailable",
    "from_rpc_error",
]


class ContainerdError(Exception):
    """Base of every shim/ error. ``operation`` says what modelrunner was doing, ``detail`` why it failed."""

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__(f"{operation}: {detail}" if operation else detail)


class NotFound(ContainerdError, LookupError):
    """The image, container, task, snapshot, lease or blob does not exist (maps to 404)."""


class AlreadyExists(ContainerdError):
    """An object with that ID or name exists already (maps to 409)."""


class InvalidArgument(ContainerdError, ValueError):
    """A request, an image or a tarball breaks a rule; the message says which one (maps to 400)."""


class FailedPrecondition(ContainerdError):
    """The object is in the wrong state for the operation, e.g. an image that is not unpacked (409)."""


class ResourceExhausted(ContainerdError):
    """containerd refused for lack of a resource (maps to 503 with Retry-After)."""


class Unavailable(ContainerdError):
    """containerd cannot be reached, or restarted in the middle of the call (maps to 503)."""


class Internal(ContainerdError):
    """containerd or the OCI runtime failed; ``detail`` holds their message (e.g. runc's)."""


class IllegalTransition(FailedPrecondition):
    """A task lifecycle step was attempted out of order (a bug in the caller, never retried)."""


# gRPC status code name -> error class. UNKNOWN is what containerd sends for runc failures.
_BY_CODE: dict[str, type[ContainerdError]] = {
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ABORTED": FailedPrecondition,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": Unavailable,
    "CANCELLED": Unavailable,
}


def from_rpc_error(operation: str, error: Any) -> ContainerdError:
    """The typed error for a ``grpc.RpcError`` (anything with ``code()`` and ``details()``)."""
    code = error.code()
    name = getattr(code, "name", str(code))
    details = error.details() or name.lower().replace("_", " ")
    cls = _BY_CODE.get(name, Internal)
    if cls is Unavailable and name == "UNAVAILABLE":
        details = f"containerd is unavailable ({details})"
    return cls(operation, details)
