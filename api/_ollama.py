"""Ollama's API (`/api/*`) translated to and from the OpenAI inference path. Pure; values in, values out.

Docker Model Runner serves the Ollama routes a compatible client needs (dmr.md 1.5,
`pkg/ollama/http_handler.go`) by translation, not by a second engine API:

* `/api/chat` and `/api/generate` become one OpenAI chat completion (`generate`'s prompt is a
  single user message). Ollama `options` map to OpenAI/llama-server sampling fields, `format` to
  `response_format`, `think` to llama-server's per-request `chat_template_kwargs.enable_thinking`.
  `keep_alive` and `options.num_ctx` are runner settings, not request fields: the handler applies
  them through the scheduler (`acquire(keep_alive=...)`, `configure`), so they are returned apart.
* The answer comes back as one Ollama object, or, streamed, as NDJSON: the engine's SSE events go
  through `StreamTranslator`, a small state machine that emits one line per content or thinking
  delta, gathers streamed tool-call fragments into whole calls (Ollama sends `arguments` as an
  object, never as pieces of a JSON string), and ends with the `done: true` line carrying the usual
  counters, taken from the engine's `usage` and `timings` plus the durations the handler measured.
* Model listings (`/api/tags`, `/api/show`, `/api/ps`) are built from DMR model objects and
  scheduler rows; pull progress events become Ollama's `{"status","digest","total","completed"}`.
* Errors are `{"error": "<message>"}` with the status of the failure (an engine's own error keeps
  the engine's status; its 500s that really are bad requests become 400).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modelrunner.api._errors import ApiError
from modelrunner.api._gotime import go_time
from modelrunner.api._openai import engine_error_message, engine_failure, json_kind, openai_model_object
from modelrunner.api._sse import chunk_object, event_data, first_choice
from modelrunner.distribution.progress import EventType, ProgressEvent
from modelrunner.scheduler import RAM, parse_keep_alive

__all__ = [
    "OLLAMA_VERSION",
    "InferenceRequest",
    "StreamTranslator",
    "Usage",
    "chat_response",
    "engine_error",
    "generate_response",
    "json_line",
    "load_response",
    "model_details",
    "model_name",
    "ollama_time",
    "ollama_tool_calls",
    "parse_chat_request",
    "parse_generate_request",
    "ps_response",
    "pull_status",
    "render_ollama",
    "request_object",
    "show_response",
    "tags_response",
]

OLLAMA_VERSION = "0.1.0"
"""What DMR's `/api/version` reports."""

_ZERO_TIME = "0001-01-01T00:00:00Z"
_INT32_MAX = 2**31 - 1

# Ollama option -> (OpenAI/llama-server field, kind). DMR maps the first eight; the rest are
# llama-server's own sampling fields under the same meaning, so they cost nothing to pass on.
_OPTIONS: dict[str, tuple[str, str]] = {
    "temperature": ("temperature", "number"),
    "top_p": ("top_p", "number"),
    "top_k": ("top_k", "int"),
    "num_predict": ("max_tokens", "int"),
    "stop": ("stop", "stop"),
    "seed": ("seed", "int"),
    "presence_penalty": ("presence_penalty", "number"),
    "frequency_penalty": ("frequency_penalty", "number"),
    "min_p": ("min_p", "number"),
    "typical_p": ("typical_p", "number"),
    "repeat_penalty": ("repeat_penalty", "number"),
    "repeat_last_n": ("repeat_last_n", "int"),
    "mirostat": ("mirostat", "int"),
    "mirostat_tau": ("mirostat_tau", "number"),
    "mirostat_eta": ("mirostat_eta", "number"),
    "num_keep": ("n_keep", "int"),
}

_THINK_LEVELS = ("high", "medium", "low")

# llama-server 500 messages, beyond those `classify_engine_error` knows, that describe a request the
# translation let through but the engine cannot use (e.g. an image for a text-only model).
_CLIENT_FAULT_MARKERS = ("failed to parse", "is required", "invalid 'content'", "not supported")


# -- rendering ---------------------------------------------------------------------------------------


def json_line(value: object) -> bytes:
    """Compact JSON plus a newline: one NDJSON line (what Go's `json.Encoder` writes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def ollama_time(moment: datetime) -> str:
    """RFC 3339 in UTC with the fraction trimmed, as Go marshals a `time.Time`."""
    return go_time(moment)


def render_ollama(error: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Ollama's error body: `{"error": "<message>"}`."""
    headers = [(b"content-type", b"application/json; charset=utf-8"), *error.headers]
    return error.status, headers, json_line({"error": error.message})


def engine_error(status: int, body: bytes) -> ApiError:
    """The Ollama error for an engine's non-200 answer: its message, its status (client faults 400)."""
    return engine_failure(status, body, client_faults=_CLIENT_FAULT_MARKERS)


# -- requests ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceRequest:
    """An `/api/chat` or `/api/generate` request, checked and translated."""

    model: str
    """The name the client asked for (echoed in every answer)."""
    openai: Mapping[str, Any]
    """The OpenAI chat-completion body, without `stream` (see `openai_body`)."""
    stream: bool = True
    keep_alive: float | None = None
    """Seconds (-1: never unload), for `scheduler.acquire(keep_alive=...)`; None: the runner's own."""
    num_ctx: int | None = None
    """`options.num_ctx`: a context size for the runner (a `_configure` setting)."""
    load_only: bool = False
    """No prompt or messages: only load the model (or unload it, see `unload`), as Ollama does."""

    @property
    def unload(self) -> bool:
        """An empty request with `keep_alive` 0 unloads the model."""
        return self.load_only and self.keep_alive == 0

    def openai_body(self) -> bytes:
        """The body for the engine's `/v1/chat/completions`; a stream asks for usage too, which
        fills the final line's counters."""
        body = dict(self.openai)
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body, ensure_ascii=False).encode()


def model_name(payload: Mapping[str, Any]) -> str:
    """`name`, else `model` (DMR prefers `name`, the older field).

    Raises:
        ApiError: 400 when neither is a non-empty string.
    """
    for key in ("name", "model"):
        value = payload.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ApiError(400, f"invalid request: '{key}' must be a string, not {json_kind(value)}")
        if value.strip():
            return value.strip()
    raise ApiError(400, "model is required")


def request_object(payload: object) -> dict[str, Any]:
    """Raises ApiError 400 unless the decoded body is a JSON object."""
    if not isinstance(payload, dict):
        raise ApiError(400, f"invalid request: the body must be a JSON object, not {json_kind(payload)}")
    return payload


def parse_chat_request(payload: object) -> InferenceRequest:
    """Check and translate an `/api/chat` body.

    Raises:
        ApiError: 400 naming the field that is missing or of the wrong type.
    """
    body = request_object(payload)
    model = model_name(body)
    raw_messages = body.get("messages")
    if raw_messages is None:
        raw_messages = []
    if not isinstance(raw_messages, list):
        raise ApiError(400, f"invalid request: 'messages' must be an array, not {json_kind(raw_messages)}")
    messages = [_openai_message(message, index) for index, message in enumerate(raw_messages)]
    openai = _common_fields(body, model)
    openai["messages"] = messages
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise ApiError(400, "invalid request: 'tools' must be an array of objects")
        if tools:
            openai["tools"] = tools
    return _finish_request(body, model, openai, load_only=not messages)


def parse_generate_request(payload: object) -> InferenceRequest:
    """Check and translate an `/api/generate` body: the prompt (and `system`, `images`) become the
    messages of one chat completion.

    Raises:
        ApiError: 400 naming the field that is missing or of the wrong type.
    """
    body = request_object(payload)
    model = model_name(body)
    prompt = _optional_str(body, "prompt")
    system = _optional_str(body, "system")
    images = _images(body.get("images"), "images")
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    if prompt or images:
        messages.append({"role": "user", "content": _content(prompt, images)})
    openai = _common_fields(body, model)
    openai["messages"] = messages
    return _finish_request(body, model, openai, load_only=not prompt and not images)


def _finish_request(
    body: Mapping[str, Any], model: str, openai: dict[str, Any], *, load_only: bool
) -> InferenceRequest:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"invalid request: 'stream' must be a boolean, not {json_kind(stream)}")
    options = _options(body)
    keep_alive = _keep_alive(body.get("keep_alive"))
    if keep_alive is None:
        keep_alive = _keep_alive(options.get("keep_alive"), "options.keep_alive")
    return InferenceRequest(
        model=model,
        openai=openai,
        stream=stream is not False,
        keep_alive=keep_alive,
        num_ctx=_num_ctx(options.get("num_ctx")),
        load_only=load_only,
    )


def _common_fields(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """`model`, the mapped options, `format` and `think`: what chat and generate share."""
    openai: dict[str, Any] = {"model": model}
    for name, value in _options(body).items():
        target = _OPTIONS.get(name)
        if target is None or value is None:
            continue  # Ollama has many runner options (num_gpu, num_thread, ...) that do not apply
        field_name, kind = target
        converted = _convert_option(name, value, kind)
        if field_name == "max_tokens" and converted < 0:
            continue  # -1 (no limit) and -2 (fill the context) are the engine's default
        openai[field_name] = converted
    response_format = _response_format(body.get("format"))
    if response_format is not None:
        openai["response_format"] = response_format
    think = body.get("think")
    if isinstance(think, bool):
        openai["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str) and think in _THINK_LEVELS:
        openai["chat_template_kwargs"] = {"enable_thinking": True}
        openai["reasoning_effort"] = think
    elif think is not None and think != "":
        raise ApiError(
            400, f"invalid request: 'think' must be a boolean or one of high, medium, low, not {think!r}"
        )
    return openai


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ApiError(400, f"invalid request: 'options' must be an object, not {json_kind(options)}")
    return options


def _convert_option(name: str, value: object, kind: str) -> Any:
    if kind == "stop":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ApiError(400, f"invalid options: 'stop' must be a string or an array of strings, not {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"invalid options: '{name}' must be a number, not {json_kind(value)}")
    if kind == "int":
        if value != int(value):
            raise ApiError(400, f"invalid options: '{name}' must be an integer, not {value!r}")
        return int(value)
    return value


def _num_ctx(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # DMR accepts numeric strings here
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ApiError(400, f"invalid options: 'num_ctx' must be an integer, not {value!r}")
    size = int(value)
    if size > _INT32_MAX:
        raise ApiError(400, f"invalid options: 'num_ctx' {size} is too large")
    return size if size > 0 else None  # 0 and below: keep the runner's own


def _keep_alive(value: object, name: str = "keep_alive") -> float | None:
    """Ollama's keep_alive: a duration string (`"5m"`, `"0"`, `"-1"`) or a number of seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ApiError(400, f"invalid request: '{name}' must be a duration or a number of seconds")
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise ApiError(400, f"invalid request: '{name}' {value!r} is not a duration such as '5m'") from exc


def _response_format(value: object) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise ApiError(400, f"invalid request: 'format' must be \"json\" or a JSON schema object, not {value!r}")


def _openai_message(message: object, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"invalid request: {where} must be an object, not {json_kind(message)}")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ApiError(400, f"invalid request: {where}.role must be a non-empty string")
    content = _optional_str(message, "content", where)
    images = _images(message.get("images"), f"{where}.images")
    out: dict[str, Any] = {"role": role, "content": _content(content, images)}
    thinking = _optional_str(message, "thinking", where)
    if thinking:
        out["reasoning_content"] = thinking
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise ApiError(400, f"invalid request: {where}.tool_calls must be an array")
        if tool_calls:
            out["tool_calls"] = [
                _openai_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(tool_calls)
            ]
    for key, target in (("tool_call_id", "tool_call_id"), ("tool_name", "name")):
        value = _optional_str(message, key, where)
        if value:
            out[target] = value
    return out


def _openai_tool_call(call: object, where: str) -> dict[str, Any]:
    """Ollama's `{"function": {"name", "arguments": {...}}}` as OpenAI's call (arguments a string)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict):
        raise ApiError(400, f"invalid request: {where} must be an object with a 'function' object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"invalid request: {where}.function.name must be a non-empty string")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise ApiError(400, f"invalid request: {where}.function.arguments must be an object")
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    call_id = call.get("id")
    if isinstance(call_id, str) and call_id:
        out["id"] = call_id
    return out


def _content(text: str, images: Sequence[str]) -> str | list[dict[str, Any]]:
    """Plain text, or OpenAI's content parts when there are images (as data URIs)."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.extend({"type": "image_url", "image_url": {"url": _data_uri(image)}} for image in images)
    return parts


def _data_uri(image: str) -> str:
    """Ollama sends raw base64; llama-server wants a data URI (DMR's `ensureDataURIPrefix`)."""
    image = image.strip()
    if image.startswith(("data:", "http://", "https://")):
        return image
    if image.startswith("iVBOR"):
        mime = "image/png"
    elif image.startswith("R0lG"):
        mime = "image/gif"
    else:
        mime = "image/jpeg"  # "/9j/" and anything unrecognised, as DMR
    return f"data:{mime};base64,{image}"


def _images(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError(400, f"invalid request: '{where}' must be an array of base64 strings")
    return value


def _optional_str(payload: Mapping[str, Any], key: str, where: str = "") -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        name = f"{where}.{key}" if where else f"'{key}'"
        raise ApiError(400, f"invalid request: {name} must be a string, not {json_kind(value)}")
    return value


# -- answers -----------------------------------------------------------------------------------------


@dataclass
class Usage:
    """The counters of a final line, from the engine's `usage` and `timings` (None: not reported)."""

    prompt_eval_count: int | None = None
    eval_count: int | None = None
    prompt_eval_duration: int | None = None
    """Nanoseconds."""
    eval_duration: int | None = None

    def update(self, chunk: Mapping[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_eval_count = _int_or(usage.get("prompt_tokens"), self.prompt_eval_count)
            self.eval_count = _int_or(usage.get("completion_tokens"), self.eval_count)
        timings = chunk.get("timings")
        if isinstance(timings, dict):
            self.prompt_eval_duration = _ns_or(timings.get("prompt_ms"), self.prompt_eval_duration)
            self.eval_duration = _ns_or(timings.get("predicted_ms"), self.eval_duration)


def _int_or(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _ns_or(milliseconds: object, default: int | None) -> int | None:
    if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool):
        return round(milliseconds * 1_000_000)
    return default


def _final_fields(done_reason: str, usage: Usage, total_ns: int, load_ns: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "done_reason": done_reason,
        "done": True,
        "total_duration": total_ns,
        "load_duration": load_ns,
    }
    for key in ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"):
        value = getattr(usage, key)
        if value is not None:
            out[key] = value
    return out


def _done_reason(finish_reason: object) -> str:
    # Ollama reports a tool call as a normal stop.
    if finish_reason in (None, "tool_calls", "function_call"):
        return "stop"
    return str(finish_reason)


def ollama_tool_calls(calls: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """OpenAI tool calls as (id, name, arguments JSON text) to Ollama's, whose `arguments` is an
    object. Arguments that are not a JSON object are kept as the text the model produced."""
    out: list[dict[str, Any]] = []
    for index, (call_id, name, arguments) in enumerate(calls):
        parsed: object = arguments
        if not arguments.strip():
            parsed = {}
        else:
            try:
                value = json.loads(arguments)
            except ValueError:
                value = None
            if isinstance(value, dict):
                parsed = value
        call: dict[str, Any] = {}
        if call_id:
            call["id"] = call_id
        call["function"] = {"index": index, "name": name, "arguments": parsed}
        out.append(call)
    return out


def _calls_of_message(tool_calls: object) -> list[tuple[str, str, str]]:
    calls: list[tuple[str, str, str]] = []
    for call in tool_calls if isinstance(tool_calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments)
        call_id = call.get("id") if isinstance(call, dict) else ""
        calls.append(
            (
                call_id if isinstance(call_id, str) else "",
                str(function.get("name") or ""),
                arguments if isinstance(arguments, str) else "",
            )
        )
    return calls


def chat_response(
    model: str, completion: Mapping[str, Any], *, now: datetime, total_ns: int, load_ns: int
) -> dict[str, Any]:
    """A non-streamed `/api/chat` answer from an OpenAI chat completion."""
    choice = first_choice(completion)
    raw = choice.get("message")
    message = raw if isinstance(raw, dict) else {}
    out_message: dict[str, Any] = {"role": "assistant", "content": _text(message.get("content"))}
    thinking = _text(message.get("reasoning_content"))
    if thinking:
        out_message["thinking"] = thinking
    calls = _calls_of_message(message.get("tool_calls"))
    if calls:
        out_message["tool_calls"] = ollama_tool_calls(calls)
    usage = Usage()
    usage.update(completion)
    return {
        "model": model,
        "created_at": ollama_time(now),
        "message": out_message,
        **_final_fields(_done_reason(choice.get("finish_reason")), usage, total_ns, load_ns),
    }


def generate_response(
    model: str, completion: Mapping[str, Any], *, now: datetime, total_ns: int, load_ns: int
) -> dict[str, Any]:
    """A non-streamed `/api/generate` answer from an OpenAI chat completion."""
    choice = first_choice(completion)
    raw = choice.get("message")
    message = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {
        "model": model,
        "created_at": ollama_time(now),
        "response": _text(message.get("content")),
    }
    thinking = _text(message.get("reasoning_content"))
    if thinking:
        out["thinking"] = thinking
    usage = Usage()
    usage.update(completion)
    out.update(_final_fields(_done_reason(choice.get("finish_reason")), usage, total_ns, load_ns))
    return out


def load_response(model: str, *, generate: bool, unloaded: bool, now: datetime) -> dict[str, Any]:
    """Ollama's answer to an empty request that loads (or, with keep_alive 0, unloads) the model."""
    out: dict[str, Any] = {"model": model, "created_at": ollama_time(now)}
    if generate:
        out["response"] = ""
    else:
        out["message"] = {"role": "assistant", "content": ""}
    out["done_reason"] = "unload" if unloaded else "load"
    out["done"] = True
    return out


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class StreamTranslator:
    """OpenAI chat-completion SSE events in, Ollama NDJSON lines out (chat or generate shape).

    `feed(event)` takes one whole SSE event (as `SSEFramer` returns it) and returns the lines it
    completes: one per non-empty content or thinking delta; the gathered tool calls once the engine
    reports a finish reason; `{"error": ...}` if the engine streams an error (`failed` is then set
    and later input is ignored). `finish(total_ns, load_ns)` returns what is left at the end of the
    stream: tool calls not sent yet, then the final `done: true` line with the counters.
    """

    model: str
    generate: bool = False
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    usage: Usage = field(default_factory=Usage, init=False)
    failed: bool = field(default=False, init=False)
    finish_reason: str | None = field(default=None, init=False)
    _calls: dict[int, _PendingCall] = field(default_factory=dict, init=False)
    _calls_sent: bool = field(default=False, init=False)
    _finished: bool = field(default=False, init=False)

    def feed(self, event: bytes) -> list[bytes]:
        if self.failed or self._finished:
            return []
        chunk = chunk_object(event_data(event))
        if chunk is None:
            return []
        error = chunk.get("error")
        if error is not None:
            self.failed = True
            message = engine_error_message(json.dumps({"error": error}).encode()) or str(error)
            return [json_line({"error": message})]
        self.usage.update(chunk)
        choice = first_choice(chunk)
        raw_delta = choice.get("delta")
        delta = raw_delta if isinstance(raw_delta, dict) else {}
        lines: list[bytes] = []
        content = _text(delta.get("content"))
        thinking = _text(delta.get("reasoning_content"))
        if content or thinking:
            lines.append(json_line(self._line(content, thinking)))
        self._gather_calls(delta.get("tool_calls"))
        if choice.get("finish_reason") is not None:
            self.finish_reason = str(choice["finish_reason"])
            lines.extend(self._calls_line())
        return lines

    def finish(self, *, total_ns: int, load_ns: int) -> list[bytes]:
        """The last lines (nothing after an error, or when already finished)."""
        if self.failed or self._finished:
            return []
        self._finished = True
        lines = self._calls_line()
        final = self._line("", "")
        final.update(_final_fields(_done_reason(self.finish_reason), self.usage, total_ns, load_ns))
        lines.append(json_line(final))
        return lines

    def _line(self, content: str, thinking: str) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": ollama_time(self.clock())}
        if self.generate:
            line["response"] = content
            if thinking:
                line["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            line["message"] = message
        line["done"] = False
        return line

    def _gather_calls(self, fragments: object) -> None:
        if not isinstance(fragments, list):
            return
        for position, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index")
            key = index if isinstance(index, int) and not isinstance(index, bool) else position
            call = self._calls.setdefault(key, _PendingCall())
            if isinstance(fragment.get("id"), str) and fragment["id"]:
                call.id = fragment["id"]
            function = fragment.get("function")
            if isinstance(function, dict):
                call.name += _text(function.get("name"))
                arguments = function.get("arguments")
                if isinstance(arguments, dict):
                    arguments = json.dumps(arguments)
                call.arguments += _text(arguments)

    def _calls_line(self) -> list[bytes]:
        if self._calls_sent or not self._calls or self.generate:
            return []
        self._calls_sent = True
        calls = [(c.id, c.name, c.arguments) for _, c in sorted(self._calls.items())]
        line = self._line("", "")
        line["message"]["tool_calls"] = ollama_tool_calls(calls)
        return [json_line(line)]


# -- model listings ----------------------------------------------------------------------------------


def _architecture(config: Mapping[str, Any]) -> str:
    arch = config.get("architecture")
    if not arch:
        gguf = config.get("gguf")
        arch = gguf.get("general.architecture") if isinstance(gguf, dict) else None
    return arch if isinstance(arch, str) else ""


def model_details(model: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's `details` from a DMR model object (`format` is always "gguf", as in DMR)."""
    raw = model.get("config")
    config = raw if isinstance(raw, dict) else {}
    arch = _architecture(config)
    return {
        "format": "gguf",
        "family": arch,
        "families": [arch] if arch else [],
        "parameter_size": str(config.get("parameters") or ""),
        "quantization_level": str(config.get("quantization") or ""),
    }


def _created(model: Mapping[str, Any]) -> str:
    created = model.get("created")
    seconds = created if isinstance(created, int | float) and not isinstance(created, bool) else 0
    return ollama_time(datetime.fromtimestamp(seconds, UTC))


def tags_response(models: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`/api/tags`: one entry per tag (an untagged model under its ID); `size` is 0 as in DMR."""
    entries: list[dict[str, Any]] = []
    for model in models:
        details = model_details(model)
        for tag in model.get("tags") or [model["id"]]:
            entries.append(
                {
                    "name": tag,
                    "model": tag,
                    "modified_at": _created(model),
                    "size": 0,
                    "digest": model["id"],
                    "details": details,
                }
            )
    return {"models": entries}


def show_response(model: Mapping[str, Any]) -> dict[str, Any]:
    """`/api/show`: DMR's `details`, plus the `model_info` keys Ollama clients read (the
    architecture and the context length); ollama-python refuses an answer without `model_info`."""
    details = model_details(model)
    arch = details["family"]
    info: dict[str, Any] = {}
    if arch:
        info["general.architecture"] = arch
        window = openai_model_object(model).get("dmr", {}).get("context_window")
        if window:
            info[f"{arch}.context_length"] = window
    return {"details": details, "model_info": info, "modified_at": _created(model)}


def ps_response(rows: Sequence[Any], models: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """`/api/ps` from scheduler rows (`RunnerRow`) and, per row, its model object when found.

    `expires_at` is when an idle runner with a finite keep-alive will be unloaded (Go's zero time
    otherwise, as DMR); `size` is the runner's memory in bytes and `size_vram` the part on GPUs.
    """
    entries: list[dict[str, Any]] = []
    for row, model in zip(rows, models, strict=True):
        tags = (model.get("tags") if model else None) or []
        name = tags[0] if tags else row.model_name
        expires = _ZERO_TIME
        if not row.in_use and row.last_used is not None and row.keep_alive >= 0:
            expires = ollama_time(row.last_used + timedelta(seconds=row.keep_alive))
        entry: dict[str, Any] = {
            "name": name,
            "model": name,
            "size": row.memory_measured or row.memory_reserved,
            "digest": row.model_id,
        }
        if model is not None:
            entry["details"] = model_details(model)
        entry["expires_at"] = expires
        by_device = getattr(row, "reserved_by_device", None) or {}
        vram = sum(size for device, size in by_device.items() if device != RAM)
        if vram:
            entry["size_vram"] = vram
        entries.append(entry)
    return {"models": entries}


# -- pull progress -----------------------------------------------------------------------------------


def pull_status(event: ProgressEvent) -> dict[str, Any]:
    """One DMR progress event as Ollama's pull status line (DMR's `ollamaProgressWriter`)."""
    if event.type is EventType.SUCCESS:
        return {"status": "success"}
    if event.type is EventType.ERROR:
        return {"error": event.message}
    if event.type is EventType.WARNING:
        return {"status": event.message}
    layer = event.layer
    out: dict[str, Any] = {"status": "pulling manifest"}
    if layer.id:
        digest = layer.id.removeprefix("sha256:")[:12] if layer.id.startswith("sha256:") else layer.id
        out["status"] = f"pulling {digest}"
        out["digest"] = layer.id
    # Go's `omitempty` drops zero counters.
    if layer.size:
        out["total"] = layer.size
    if layer.current:
        out["completed"] = layer.current
    return out
