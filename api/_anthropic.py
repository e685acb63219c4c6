"""Anthropic's Messages API (`/anthropic/v1/messages[/count_tokens]`): checks and error shapes. Pure.

DMR does not translate this API (dmr.md 1.5, `pkg/anthropic/handler.go`): llama-server serves
`/v1/messages` and `/v1/messages/count_tokens` natively, so the layer reads only `model` to find
the runner, checks that the model is in the store, and forwards the request body unchanged. What
belongs to the layer is the error shape, `{"type": "error", "error": {"type", "message"}}`, which the
Anthropic SDKs turn into their typed exceptions; engine errors (OpenAI-shaped) are rewritten into it,
and engine 500s that are really bad requests become 400 as on the OpenAI routes.
"""

from __future__ import annotations

import json

from modelrunner.api._errors import ApiError
from modelrunner.api._openai import engine_failure

__all__ = ["anthropic_error_type", "engine_error", "render_anthropic", "requested_model"]

Headers = list[tuple[bytes, bytes]]

# Status -> Anthropic error type. DMR uses `internal_error` for its own 500s; Anthropic's service
# uses `api_error` and `overloaded_error`, which the SDKs treat the same way (by status).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

# llama-server 500 messages on /v1/messages, beyond `classify_engine_error`'s, that name a field
# the request lacks or got wrong (e.g. "'messages' is required").
_CLIENT_FAULT_MARKERS = ("is required", "failed to parse", "invalid 'content'", "must be")


def anthropic_error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "internal_error"


def render_anthropic(error: ApiError) -> tuple[int, Headers, bytes]:
    """Anthropic's error object."""
    kind = anthropic_error_type(error.status)
    payload = {"type": "error", "error": {"type": kind, "message": error.message}}
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return error.status, [(b"content-type", b"application/json"), *error.headers], body


def requested_model(body: bytes) -> str:
    """The `model` of a Messages request; the rest of the body is the engine's business.

    Raises:
        ApiError: 400 when the body is not a JSON object or `model` is missing or not a string.
    """
    try:
        payload = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        raise ApiError(400, "Invalid JSON in request body") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "Invalid JSON in request body: expected an object")
    model = payload.get("model")
    if model is None or model == "":
        raise ApiError(400, "Missing required field: model")
    if not isinstance(model, str):
        raise ApiError(400, "Invalid field: model must be a string")
    if not model.strip():
        raise ApiError(400, "Missing required field: model")
    return model


def engine_error(status: int, body: bytes) -> ApiError:
    """An engine's error answer (OpenAI-shaped JSON, or anything) as an Anthropic-style ApiError."""
    return engine_failure(status, body, client_faults=_CLIENT_FAULT_MARKERS)
