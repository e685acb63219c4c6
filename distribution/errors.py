"""Typed errors raised by distribution/.

The classes mirror the project's error vocabulary (containerd's errdefs): a bad reference is an
invalid argument, an unknown model is not found, deleting a multi-tagged model without ``force`` is a
conflict. Each class carries ``status_hint``, the HTTP status DMR answers with for it (like h11's
``error_status_hint``), so api/ can map errors with one table and no string matching. Messages name
the broken rule and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousReference",
    "BlobNotFound",
    "Conflict",
    "DigestMismatch",
    "DistributionError",
    "IngestBusy",
    "InvalidArchive",
    "InvalidArgument",
    "InvalidDigest",
    "InvalidGGUF",
    "InvalidManifest",
    "InvalidReference",
    "ModelNotFound",
    "RegistryError",
    "RegistryUnauthorized",
    "RemoteNotFound",
    "StoreCorrupted",
    "UnsupportedMediaType",
]


class DistributionError(Exception):
    """Base of every distribution/ error."""

    status_hint: int = 500


class IngestBusy(DistributionError):
    """Another thread or process is writing the same blob; retry shortly (503)."""

    status_hint = 503

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"blob {digest} is being written by another pull; retry when it is done")


class InvalidReference(DistributionError, ValueError):
    """A model reference does not follow the OCI/Docker reference grammar (400)."""

    status_hint = 400

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid model reference {reference!r}: {reason}")


class InvalidArgument(DistributionError, ValueError):
    """A request argument is out of range or malformed (400)."""

    status_hint = 400


class InvalidDigest(DistributionError, ValueError):
    """A digest is not ``sha256:<64 lowercase hex>`` (or ``sha512:<128 hex>``) (400)."""

    status_hint = 400

    def __init__(self, digest: str, reason: str = "") -> None:
        self.digest = digest
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"invalid digest {digest!r}{detail}; expected 'sha256:' followed by 64 lowercase hex digits"
        )


class ModelNotFound(DistributionError, LookupError):
    """No model in the store matches the reference (404)."""

    status_hint = 404

    def __init__(self, reference: str) -> None:
        self.reference = reference
        super().__init__(f"model {reference!r} not found")


class BlobNotFound(DistributionError, LookupError):
    """A blob a manifest refers to is missing from the store (404)."""

    status_hint = 404

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"blob {digest} not found in the store")


class Conflict(DistributionError):
    """The operation conflicts with the store's state (409)."""

    status_hint = 409


class AmbiguousReference(Conflict):
    """A short ID or partial name matches more than one model (409)."""

    def __init__(self, reference: str, candidates: list[str]) -> None:
        self.reference = reference
        self.candidates = candidates
        super().__init__(
            f"reference {reference!r} is ambiguous: it matches {', '.join(candidates)}; "
            "use a full tag or ID"
        )


class UnsupportedMediaType(DistributionError):
    """The artifact is not a model this store can hold (422)."""

    status_hint = 422

    def __init__(self, media_type: str, supported: tuple[str, ...], what: str = "config") -> None:
        self.media_type = media_type
        self.supported = supported
        super().__init__(
            f"{what} type {media_type!r} is unsupported: supported types are {', '.join(supported)}"
        )


class InvalidManifest(DistributionError, ValueError):
    """A manifest or model config is not valid JSON of the expected shape (422)."""

    status_hint = 422


class InvalidGGUF(DistributionError, ValueError):
    """A file is not a readable GGUF file: truncated, hostile or of an unknown version (400)."""

    status_hint = 400

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: not a valid GGUF file: {reason}")


class InvalidArchive(DistributionError, ValueError):
    """A model tar archive (DMR export format) is malformed (400)."""

    status_hint = 400


class DigestMismatch(DistributionError):
    """Content does not hash to the digest it was announced with; nothing was stored (502)."""

    status_hint = 502

    def __init__(self, expected: str, actual: str, what: str = "blob") -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what} digest mismatch: expected {expected}, got {actual}; the copy was discarded")


class StoreCorrupted(DistributionError):
    """The store's metadata cannot be read; the message says which file and why (500)."""

    status_hint = 500


class RegistryError(DistributionError):
    """A registry answered with an error, or could not be reached.

    ``status`` is the registry's HTTP status (0 when no answer came back); ``code`` the first OCI
    error code of the body (``MANIFEST_UNKNOWN``, ``DENIED``...) when there was one.
    """

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class RegistryUnauthorized(RegistryError):
    """The registry refused the credentials, or none were given where they are required (401)."""

    status_hint = 401


class RemoteNotFound(RegistryError):
    """The registry has no such repository, tag or manifest (404)."""

    status_hint = 404
