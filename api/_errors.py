"""Errors at the HTTP edge: one exception type, two renderings, one mapping table. Pure.

`ApiError` is what handlers raise (or what `map_exception` turns any other exception into). It is
rendered the way the route's clients expect:

* DMR style (`/models`, `/engines` admin, `/`, ...): Go's `http.Error`, i.e. `text/plain;
  charset=utf-8`, `X-Content-Type-Options: nosniff`, body = message + newline;
* OpenAI style (`/v1/...`, `/rerank`, `/score`): `{"error": {"message", "type", "param", "code"}}`
  as `application/json`, so the OpenAI SDKs raise their typed errors with a readable message.

`map_exception` is the single table from the rest of modelrunner's errors to HTTP. Lower layers
are not imported for it: an error may carry `status_hint` (distribution/ does; h11 calls it
`error_status_hint`), and otherwise its class (or a base class) is looked up *by name* in
`_STATUS_BY_CLASS_NAME`, so scheduler/ and engines/ errors map without api/ depending on their
modules, and a renamed class shows up as a 500 in tests rather than an import error at startup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = [
    "ApiError",
    "map_exception",
    "openai_error_type",
    "render_dmr",
    "render_openai",
]

Headers = list[tuple[bytes, bytes]]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    412: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
    504: "timeout_error",
}

# Class name (anywhere in the MRO) -> HTTP status, for errors without a `status_hint`. The first
# class in MRO order that is listed wins, so a specific name beats its generic base.
_STATUS_BY_CLASS_NAME: dict[str, int] = {
    # scheduler/
    "ModelNotFound": 404,
    "QueueFull": 503,
    "ModelTooLarge": 507,
    "RunnerDied": 500,
    "RunnerBusy": 409,
    # engines/
    "UnknownBackend": 404,
    "BackendNotInstalled": 412,
    "InvalidRuntimeFlags": 400,
    "EngineStartError": 500,
    # the project-wide vocabulary (containerd's errdefs)
    "InvalidArgument": 400,
    "NotFound": 404,
    "AlreadyExists": 409,
    "Conflict": 409,
    "FailedPrecondition": 412,
    "ResourceExhausted": 503,
    "Unavailable": 503,
    "Internal": 500,
    # trio
    "TooSlowError": 504,
}

# Messages DMR prefixes to causes; kept so logs and CLI output read the same.
_PREFIX_BY_CLASS_NAME: dict[str, str] = {
    "EngineStartError": "unable to load runner: ",
    "RunnerDied": "unable to load runner: ",
}


@dataclass(eq=False)
class ApiError(Exception):
    """An HTTP error answer: status, message and extra response headers."""

    status: int
    message: str
    code: str | None = None
    """OpenAI `error.code` (e.g. `model_not_found`); None renders as null."""
    param: str | None = None
    headers: Headers = field(default_factory=list)
    close: bool = False
    """Close the connection after answering (the request body was not read)."""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def openai_error_type(status: int) -> str:
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return "invalid_request_error" if status < 500 else "server_error"


def render_dmr(error: ApiError) -> tuple[int, Headers, bytes]:
    """Go's `http.Error`: plain text, message plus newline."""
    body = error.message.encode("utf-8", "replace") + b"\n"
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-content-type-options", b"nosniff"),
        *error.headers,
    ]
    return error.status, headers, body


def render_openai(error: ApiError) -> tuple[int, Headers, bytes]:
    """OpenAI's error object."""
    payload = {
        "error": {
            "message": error.message,
            "type": openai_error_type(error.status),
            "param": error.param,
            "code": error.code,
        }
    }
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers: Headers = [(b"content-type", b"application/json; charset=utf-8"), *error.headers]
    return error.status, headers, body


def _retry_after_header(exc: BaseException) -> Headers:
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after >= 0:
        # Retry-After takes whole seconds; round up so a client never retries too early.
        seconds = int(retry_after) + (0 if float(retry_after).is_integer() else 1)
        return [(b"retry-after", str(max(seconds, 1)).encode())]
    return []


def map_exception(exc: BaseException) -> ApiError:
    """Turn any exception into the `ApiError` to answer with.

    Unknown exceptions become 500 with the exception's type and message: the caller logs the
    traceback; the message tells the user something failed on our side, not what they sent.
    """
    if isinstance(exc, ApiError):
        return exc
    names = [cls.__name__ for cls in type(exc).__mro__]
    message = str(exc) or type(exc).__name__
    for name in names:
        prefix = _PREFIX_BY_CLASS_NAME.get(name)
        if prefix:
            message = prefix + message
            break
    hint = getattr(exc, "status_hint", None) or getattr(exc, "error_status_hint", None)
    status: int | None = hint if isinstance(hint, int) and 400 <= hint <= 599 else None
    if status is None:
        for name in names:
            if name in _STATUS_BY_CLASS_NAME:
                status = _STATUS_BY_CLASS_NAME[name]
                break
    if status is None:
        return ApiError(500, f"internal error: {type(exc).__name__}: {message}")
    code = {404: "model_not_found"}.get(status) if "ModelNotFound" in names else None
    return ApiError(status, message, code=code, headers=_retry_after_header(exc))
