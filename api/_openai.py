"""OpenAI-side request and response helpers for the proxy. Pure; bytes and values only.

* `requested_model`: the one field the proxy reads from a request body, with the checks DMR does
  (valid JSON object, non-empty `model`) and clear 400s instead of the engine's 500s.
* `classify_engine_error`: llama-server answers some client mistakes with 500 (a body that is not
  what the endpoint expects, an embedding input longer than the batch); those become 400 so clients
  see whose fault it is.
* `openai_model_object` / `openai_model_list`: DMR's `/v1/models` shapes built from DMR Model
  objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from modelrunner.api._errors import ApiError

__all__ = [
    "classify_engine_error",
    "engine_error_message",
    "engine_failure",
    "json_kind",
    "openai_model_list",
    "openai_model_object",
    "requested_model",
]

# Substrings of llama-server 500 messages that describe a bad request, not an engine failure.
_CLIENT_FAULT_MARKERS = (
    "json.exception",  # nlohmann::json parse/type errors on fields of the wrong type
    "too large to process",  # embedding input longer than the physical batch
    "must be a string",
    "must be an array",
    "must be provided",
    "elements must be",
    "invalid argument",
    "exceed_context_size",
)


def requested_model(body: bytes) -> str:
    """The `model` of an OpenAI-style request body.

    Raises:
        ApiError: 400 when the body is not a JSON object or `model` is missing, empty or not a string.
    """
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid request: the body is not UTF-8 text") from None
    except ValueError as exc:
        detail = str(exc) if body.strip() else "the body is empty"
        raise ApiError(400, f"invalid request: the body is not valid JSON ({detail})") from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"invalid request: the body must be a JSON object, not {json_kind(payload)}")
    model = payload.get("model")
    if model is None or model == "":
        raise ApiError(400, "model is required", param="model")
    if not isinstance(model, str):
        raise ApiError(
            400, f"invalid request: 'model' must be a string, not {json_kind(model)}", param="model"
        )
    if not model.strip():
        raise ApiError(400, "model is required", param="model")
    return model


def json_kind(value: object) -> str:
    """How an error message names a JSON value's type (`a number`, `an object`...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def classify_engine_error(status: int, body: bytes) -> tuple[int, bytes] | None:
    """For an engine error response that is really the client's fault, the (400, new body).

    Returns None when the response should pass through unchanged.
    """
    if status != 500:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        return None
    lowered = message.lower()
    if not any(marker in lowered for marker in _CLIENT_FAULT_MARKERS):
        return None
    fixed = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": 400}}
    return 400, json.dumps(fixed, ensure_ascii=False).encode()


def engine_error_message(body: bytes) -> str | None:
    """The message of an engine's error body (`{"error": {"message"}}` or `{"error": "..."}`)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return None


def engine_failure(status: int, body: bytes, *, client_faults: tuple[str, ...]) -> ApiError:
    """An engine's error answer as an ApiError for a translating layer: the engine's message and
    status, with 500s that are really bad requests (`classify_engine_error`, or a message holding
    one of the layer's `client_faults`) as 400."""
    fixed = classify_engine_error(status, body)
    if fixed is not None:
        status, body = fixed
    message = engine_error_message(body)
    if message is None:
        message = body.decode("utf-8", "replace").strip() or f"the engine answered {status}"
    if status == 500 and any(marker in message.lower() for marker in client_faults):
        status = 400
    return ApiError(status, message)


def _context_window(config: Mapping[str, Any]) -> int | None:
    value = config.get("context_size")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    gguf = config.get("gguf")
    if isinstance(gguf, Mapping):
        arch = config.get("architecture") or gguf.get("general.architecture")
        raw = gguf.get(f"{arch}.context_length") if arch else None
        try:
            parsed = int(str(raw)) if raw is not None else None
        except ValueError:
            parsed = None
        if parsed and parsed > 0:
            return parsed
    return None


def openai_model_object(model: Mapping[str, Any]) -> dict[str, Any]:
    """DMR's OpenAI model object: `id` is the first tag (or the ID when untagged), `owned_by`
    "docker", and `dmr` holds what the config knows (each field omitted when empty)."""
    tags = model.get("tags") or []
    config = model.get("config")
    out: dict[str, Any] = {
        "id": tags[0] if tags else model["id"],
        "object": "model",
        "created": int(model.get("created") or 0),
        "owned_by": "docker",
    }
    if isinstance(config, Mapping):
        dmr: dict[str, Any] = {}
        window = _context_window(config)
        if window:
            dmr["context_window"] = window
        for key in ("architecture", "parameters", "quantization", "size"):
            value = config.get(key)
            if value:
                dmr[key] = value
        out["dmr"] = dmr
    return out


def openai_model_list(models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": [openai_model_object(m) for m in models]}
