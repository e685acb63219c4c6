"""OpenAI's Responses API (`/v1/responses`) over an engine that only speaks chat completions. Pure.

Docker Model Runner serves the Responses routes by translation (dmr.md 1.5, `pkg/responses`):
llama-server has no Responses endpoint, so a Responses request becomes one chat completion and its
answer becomes a Response object. This module is that translation, with no I/O:

* `parse_create_request` checks a `POST /responses` body, rejects what DMR rejects (hosted
  features a local engine cannot honour: `include`, `background`, `conversation`, ...) and turns
  the `input` items into chat messages (a `function_call` item is an assistant tool call, a
  `function_call_output` item a `tool` message). `CreateRequest.chat_body` builds the engine request
  from them, the conversation so far and the sampling fields.
* `response_object` builds the Response for a whole chat completion; `StreamTranslator` turns the
  engine's `chat.completion.chunk` events into Responses SSE events as they arrive (one event out per
  delta in), opening an output item when the engine starts a new kind of output (reasoning, text, a
  tool call) and closing the previous one, as OpenAI's own streams do.
* `ResponseStore` keeps recent responses for `GET /responses/{id}` and `previous_response_id`: with
  each response it keeps the chat messages that led to it, so a follow-up is its history, its output
  and the new input. DMR keeps responses one hour; so does this store, and it is bounded.

Every object and event produced here parses with the official SDK's types (openai-python's
`Response`, `ResponseStreamEvent`, `ResponseItemList`); the tests check it.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelrunner.api._errors import ApiError
from modelrunner.api._openai import engine_error_message, json_kind
from modelrunner.api._sse import chunk_object, first_choice

__all__ = [
    "RESPONSE_ID_PREFIX",
    "CreateRequest",
    "ResponseStore",
    "StreamTranslator",
    "deleted_object",
    "input_items_page",
    "new_item_id",
    "new_response_id",
    "output_messages",
    "parse_create_request",
    "previous_response_not_found",
    "response_not_found",
    "response_object",
]

RESPONSE_ID_PREFIX = "resp_"

# DMR's ids: a prefix and 24 characters of [a-z0-9] (`GenerateID`).
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 24

_LAYER = "Docker Model Runner Responses compatibility layer"
_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_CHOICE_MODES = ("none", "auto", "required")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_REASONING_SUMMARIES = ("auto", "concise", "detailed")
_VERBOSITIES = ("low", "medium", "high")
_MESSAGE_ROLES = ("user", "system", "developer", "assistant")
_ITEM_STATUSES = ("in_progress", "completed", "incomplete")
_DEFAULT_PAGE_SIZE = 20
_MAX_PAGE_SIZE = 100

# A finish reason that ends a response early -> the `incomplete_details.reason` OpenAI reports.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_response_id() -> str:
    return RESPONSE_ID_PREFIX + _random_suffix()


def new_item_id(kind: str) -> str:
    """An id for an output or input item: `msg_...`, `fc_...` (function call), `rs_...` (reasoning),
    `call_...` (a call id the engine did not give)."""
    return f"{kind}_{_random_suffix()}"


def _random_suffix() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


# -- errors ------------------------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None) -> ApiError:
    """A 400 with DMR's error code (`invalid_request`) and the OpenAI `param` naming the field."""
    return ApiError(400, message, code="invalid_request", param=param)


def _unsupported(name: str) -> ApiError:
    return _invalid(f"{name} is not supported by {_LAYER}", name)


def _wrong_type(where: str, expected: str, value: object) -> ApiError:
    return _invalid(f"invalid request: '{where}' must be {expected}, not {json_kind(value)}", where)


def _go_quote(value: object) -> str:
    """A value as Go's `%q` shows it in DMR's messages (a JSON string is the same for text)."""
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)


def response_not_found() -> ApiError:
    """What DMR answers for an unknown or expired id on GET/DELETE (and `input_items`)."""
    return ApiError(404, "Response not found", code="not_found")


def previous_response_not_found(response_id: str) -> ApiError:
    """DMR answers an unknown `previous_response_id` with 400, not 404: the request is at fault."""
    return _invalid(f"previous_response_id {_go_quote(response_id)} was not found", "previous_response_id")


# -- requests ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRequest:
    """A `POST /responses` body, checked and translated."""

    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    instructions: str | None
    input_messages: list[dict[str, Any]]
    """This request's input as chat-completion messages."""
    raw: Mapping[str, Any]
    """The payload with its Responses fields normalized (tools, tool_choice, text, reasoning,
    metadata): what the Response object echoes and what `chat_body` translates."""
    input_items: list[dict[str, Any]] = field(default_factory=list)
    """This request's input as Responses items with ids (for `GET .../input_items`)."""

    def chat_body(self, history: Sequence[dict[str, Any]] = ()) -> bytes:
        """The engine's chat-completion request: instructions as a system message (they are not
        carried over by `previous_response_id`, as in OpenAI), then `history`, then this input. A
        stream asks for usage, which only then arrives in the last chunk."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages.extend(history)
        messages.extend(self.input_messages)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        raw = self.raw
        tools = raw.get("tools") or []
        if tools:
            body["tools"] = [_chat_tool(tool) for tool in tools]
        tool_choice = raw.get("tool_choice")
        if tool_choice is not None:
            body["tool_choice"] = _chat_tool_choice(tool_choice)
        for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
            if raw.get(key) is not None:
                body[key] = raw[key]
        if raw.get("max_output_tokens") is not None:
            body["max_tokens"] = raw["max_output_tokens"]
        response_format = _chat_response_format(raw.get("text"))
        if response_format is not None:
            body["response_format"] = response_format
        reasoning = raw.get("reasoning")
        if isinstance(reasoning, Mapping) and reasoning.get("effort") is not None:
            body["reasoning_effort"] = reasoning["effort"]
        return json.dumps(body, ensure_ascii=False).encode()


def parse_create_request(payload: object) -> CreateRequest:
    """Check and translate a `POST /responses` body.

    Raises:
        ApiError: 400 (`code` "invalid_request", `param` the field) for a missing model, a field of
            the wrong type, an input item that cannot be translated, or a field DMR rejects.
    """
    if not isinstance(payload, dict):
        raise _invalid(f"invalid request: the body must be a JSON object, not {json_kind(payload)}")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if not model:
        raise _invalid("model is required", "model")
    _reject_unsupported(payload)
    stream = _optional_bool(payload, "stream")
    store = _optional_bool(payload, "store")
    instructions = _optional_str(payload, "instructions")
    previous = _optional_str(payload, "previous_response_id")
    input_messages, input_items = _parse_input(payload.get("input"))
    raw = dict(payload)
    raw["tools"] = _function_tools(payload.get("tools"))
    raw["tool_choice"] = _tool_choice(payload.get("tool_choice"))
    raw["text"] = _text_config(payload.get("text"))
    raw["reasoning"] = _reasoning(payload.get("reasoning"))
    raw["metadata"] = _metadata(payload.get("metadata"))
    for key in ("temperature", "top_p"):
        _optional_number(payload, key)
    raw["max_output_tokens"] = _optional_positive_int(payload, "max_output_tokens")
    _optional_bool(payload, "parallel_tool_calls")
    _optional_str(payload, "user")
    return CreateRequest(
        model=model,
        stream=bool(stream),
        store=store is not False,
        previous_response_id=previous or None,
        instructions=instructions or None,
        input_messages=input_messages,
        raw=raw,
        input_items=input_items,
    )


def _reject_unsupported(payload: Mapping[str, Any]) -> None:
    """DMR's `validateUnsupportedRequestFields`: hosted features with no local meaning are refused
    rather than silently ignored, so a client learns its request will not be honoured."""
    include = payload.get("include")
    if include is not None and not isinstance(include, list):
        raise _wrong_type("include", "an array", include)
    if include:
        raise _unsupported("include")
    for name in ("stream_options", "top_logprobs"):
        if payload.get(name) is not None:
            raise _unsupported(name)
    truncation = payload.get("truncation")
    if truncation not in (None, "", "disabled"):
        raise _invalid(f"truncation value {_go_quote(truncation)} is not supported by {_LAYER}", "truncation")
    background = payload.get("background")
    if background is not None and not isinstance(background, bool):
        raise _wrong_type("background", "a boolean", background)
    if background:
        raise _invalid(f"background responses are not supported by {_LAYER}", "background")
    if payload.get("conversation") is not None:
        raise _invalid(
            f"conversation is not supported by {_LAYER}; use previous_response_id instead", "conversation"
        )
    if payload.get("prompt") is not None:
        raise _unsupported("prompt")
    for name in ("service_tier", "safety_identifier"):
        if payload.get(name) not in (None, ""):
            raise _unsupported(name)


def _optional_str(payload: Mapping[str, Any], key: str, where: str | None = None) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong_type(where or key, "a string", value)
    return value


def _optional_bool(payload: Mapping[str, Any], key: str) -> bool | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, bool):
        raise _wrong_type(key, "a boolean", value)
    return value


def _optional_number(payload: Mapping[str, Any], key: str) -> float | None:
    value = payload.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _wrong_type(key, "a number", value)
    return value


def _optional_positive_int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
        raise _invalid(f"invalid request: '{key}' must be a positive integer, not {value!r}", key)
    return int(value)


def _function_tools(value: object) -> list[dict[str, Any]]:
    """Function tools in the Responses shape (`{"type", "name", ...}`), the one a Response echoes.
    The chat shape (`{"type", "function": {...}}`) is accepted too, as DMR does: clients ported from
    chat completions send it."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type("tools", "an array", value)
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _wrong_type(where, "an object", tool)
        if tool.get("type") != "function":
            raise _invalid(f"tool type {_go_quote(tool.get('type'))} is not supported by {_LAYER}", where)
        nested = tool.get("function")
        spec: Mapping[str, Any] = nested if isinstance(nested, dict) else tool
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"invalid request: '{where}.name' must be a non-empty string", f"{where}.name")
        description = _optional_str(spec, "description", f"{where}.description")
        parameters = spec.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _wrong_type(f"{where}.parameters", "a JSON schema object", parameters)
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _wrong_type(f"{where}.strict", "a boolean", strict)
        tools.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "parameters": parameters,
                "strict": strict,
            }
        )
    return tools


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(value: object) -> str | dict[str, Any] | None:
    """`none`/`auto`/`required` or one named function, in the Responses shape."""
    if value is None:
        return None
    if isinstance(value, str) and value in _TOOL_CHOICE_MODES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        nested = value.get("function")
        name = nested.get("name") if isinstance(nested, dict) else value.get("name")
        if isinstance(name, str) and name:
            return {"type": "function", "name": name}
    raise _invalid(
        'invalid request: \'tool_choice\' must be "none", "auto", "required" or '
        '{"type": "function", "name": "..."}',
        "tool_choice",
    )


def _chat_tool_choice(choice: str | Mapping[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice["name"]}}


def _text_config(value: object) -> dict[str, Any] | None:
    """`text`: the output format (DMR's checks of a json_schema format) and verbosity."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong_type("text", "an object", value)
    config: dict[str, Any] = {}
    fmt = value.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise _wrong_type("text.format", "an object", fmt)
        config["format"] = _text_format(fmt)
    verbosity = value.get("verbosity")
    if verbosity is not None:
        if verbosity not in _VERBOSITIES:
            raise _invalid(
                f"invalid request: 'text.verbosity' must be one of {', '.join(_VERBOSITIES)}",
                "text.verbosity",
            )
        config["verbosity"] = verbosity
    return config


def _text_format(fmt: Mapping[str, Any]) -> dict[str, Any]:
    kind = fmt.get("type")
    if kind in (None, "", "text"):
        return {"type": "text"}
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _invalid(f"unsupported text.format.type {_go_quote(kind)}", "text.format.type")
    name = fmt.get("name")
    if not name:
        raise _invalid(
            "text.format.name is required when text.format.type is json_schema", "text.format.name"
        )
    if not isinstance(name, str) or not _FORMAT_NAME.match(name):
        raise _invalid(
            "text.format.name must contain only letters, numbers, underscores, and dashes, "
            "with a maximum length of 64",
            "text.format.name",
        )
    schema = fmt.get("schema")
    if schema is None:
        raise _invalid(
            "text.format.schema is required when text.format.type is json_schema", "text.format.schema"
        )
    if not isinstance(schema, dict):
        raise _invalid("text.format.schema must be a JSON object", "text.format.schema")
    out: dict[str, Any] = {"type": "json_schema", "name": name, "schema": schema}
    description = _optional_str(fmt, "description", "text.format.description")
    if description is not None:
        out["description"] = description
    strict = fmt.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _wrong_type("text.format.strict", "a boolean", strict)
        out["strict"] = strict
    return out


def _chat_response_format(text: object) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {key: fmt[key] for key in ("name", "description", "schema", "strict") if key in fmt}
    return {"type": "json_schema", "json_schema": schema}


def _reasoning(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong_type("reasoning", "an object", value)
    effort = value.get("effort")
    if effort is not None and effort not in _REASONING_EFFORTS:
        raise _invalid(
            f"invalid request: 'reasoning.effort' must be one of {', '.join(_REASONING_EFFORTS)}",
            "reasoning.effort",
        )
    summary = value.get("summary")
    if summary is not None and summary not in _REASONING_SUMMARIES:
        raise _invalid(
            f"invalid request: 'reasoning.summary' must be one of {', '.join(_REASONING_SUMMARIES)}",
            "reasoning.summary",
        )
    return {"effort": effort, "summary": summary}


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise _invalid("invalid request: 'metadata' must be an object of string values", "metadata")
    return dict(value)


# -- input items -------------------------------------------------------------------------------------


def _parse_input(value: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input as chat messages and as Responses items (with ids), side by side."""
    if value is None:
        return [], []
    if isinstance(value, str):
        user_item = {
            "id": new_item_id("msg"),
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": value}],
        }
        return [{"role": "user", "content": value}], [user_item]
    if not isinstance(value, list):
        raise _wrong_type("input", "a string or an array of input items", value)
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        item = _input_item(entry, f"input[{index}]", messages)
        if item is not None:
            items.append(item)
    return messages, items


def _input_item(entry: object, where: str, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Append `entry`'s chat message(s) to `messages`; return its Responses item (None: skipped)."""
    if not isinstance(entry, dict):
        raise _wrong_type(where, "an object", entry)
    kind = entry.get("type")
    if kind is None and "role" in entry:
        kind = "message"  # an "easy" input message may leave out its type
    if kind == "message":
        message, item = _message_item(entry, where)
        messages.append(message)
        return item
    if kind == "function_call":
        call, item = _function_call_item(entry, where)
        _append_tool_call(messages, call)
        return item
    if kind == "function_call_output":
        message, item = _function_output_item(entry, where)
        messages.append(message)
        return item
    if kind == "reasoning":
        return None  # our own reasoning items, sent back by clients that replay `output`: not for the engine
    raise _invalid(f"input item type {_go_quote(kind)} is not supported by {_LAYER}", f"{where}.type")


def _item_id(entry: Mapping[str, Any], kind: str) -> str:
    given = entry.get("id")
    return given if isinstance(given, str) and given else new_item_id(kind)


def _message_item(entry: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    role = entry.get("role")
    if role not in _MESSAGE_ROLES:
        raise _invalid(
            f"invalid request: '{where}.role' must be one of {', '.join(_MESSAGE_ROLES)}", f"{where}.role"
        )
    assistant = role == "assistant"
    texts: list[str] = []
    chat_parts: list[dict[str, Any]] = []
    item_parts: list[dict[str, Any]] = []
    content = entry.get("content")
    if content is None:
        content = ""
    if isinstance(content, str):
        content = [{"type": "output_text" if assistant else "input_text", "text": content}]
    if not isinstance(content, list):
        raise _wrong_type(f"{where}.content", "a string or an array of content parts", content)
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            raise _wrong_type(part_where, "an object", part)
        text, image = _content_part(part, part_where)
        if image is not None:
            chat_parts.append({"type": "image_url", "image_url": image})
            item_parts.append(
                {
                    "type": "input_image",
                    "image_url": image["url"],
                    "detail": image.get("detail", "auto"),
                    "file_id": None,
                }
            )
            continue
        texts.append(text)
        chat_parts.append({"type": "text", "text": text})
        if not assistant:
            item_parts.append({"type": "input_text", "text": text})
        elif part.get("type") == "refusal":
            item_parts.append({"type": "refusal", "refusal": text})
        else:
            item_parts.append({"type": "output_text", "text": text, "annotations": []})
    chat_content: str | list[dict[str, Any]]
    if assistant and len(chat_parts) == len(texts):
        chat_content = "".join(texts)  # the pieces of one answer
    elif len(chat_parts) == len(texts) and len(texts) <= 1:
        chat_content = texts[0] if texts else ""
    else:
        chat_content = chat_parts
    # llama.cpp's chat templates know system, user, assistant and tool; developer is OpenAI's new
    # name for the system role.
    message = {"role": "system" if role == "developer" else role, "content": chat_content}
    status = entry.get("status")
    item = {
        "id": _item_id(entry, "msg"),
        "type": "message",
        "role": role,
        "status": status if status in _ITEM_STATUSES else "completed",
        "content": item_parts,
    }
    return message, item


def _content_part(part: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any] | None]:
    """A content part as (text, None) or ("", chat `image_url` object)."""
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "refusal"):
        key = "refusal" if kind == "refusal" else "text"
        text = part.get(key)
        if not isinstance(text, str):
            raise _wrong_type(f"{where}.{key}", "a string", text)
        return text, None
    if kind in ("input_image", "image_url"):
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")  # the chat shape, {"url": ...}
        if not isinstance(url, str) or not url:
            raise _invalid(
                f"invalid request: '{where}.image_url' must be an image URL or a data: URI"
                " (file_id is not supported)",
                f"{where}.image_url",
            )
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail in ("low", "high", "auto"):
            image["detail"] = detail
        return "", image
    if kind == "input_file":
        raise _invalid(f"input_file content is not supported by {_LAYER}", f"{where}.type")
    raise _invalid(f"content part type {_go_quote(kind)} is not supported by {_LAYER}", f"{where}.type")


def _function_call_item(entry: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    call_id = entry.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"invalid request: '{where}.call_id' must be a non-empty string", f"{where}.call_id")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"invalid request: '{where}.name' must be a non-empty string", f"{where}.name")
    arguments = entry.get("arguments")
    if arguments is None:
        arguments = "{}"
    if not isinstance(arguments, str):
        raise _wrong_type(f"{where}.arguments", "a JSON string", arguments)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    item = {
        "id": _item_id(entry, "fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }
    return call, item


def _append_tool_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """A call joins the assistant message just before it: the text and the parallel calls of one
    turn are one chat message, which is what chat templates expect."""
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _function_output_item(entry: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    call_id = _optional_str(entry, "call_id", f"{where}.call_id")
    output = entry.get("output")
    if isinstance(output, list):
        texts: list[str] = []
        for index, part in enumerate(output):
            text_part = part if isinstance(part, dict) else {}
            text = text_part.get("text")
            if text_part.get("type") not in ("input_text", "output_text", "text") or not isinstance(
                text, str
            ):
                raise _invalid(
                    f"invalid request: '{where}.output[{index}]' must be a text part (input_text)",
                    f"{where}.output",
                )
            texts.append(text)
        output = "".join(texts)
    if not isinstance(output, str):
        raise _wrong_type(f"{where}.output", "a string", output)
    message: dict[str, Any] = {"role": "tool", "content": output}
    if call_id:
        message["tool_call_id"] = call_id
    item = {
        "id": _item_id(entry, "fco"),
        "type": "function_call_output",
        "call_id": call_id,
        "output": output,
        "status": "completed",
    }
    return message, item


def output_messages(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a stored response adds to a later request's history: its output items are
    valid input items, so they go through the same translation (reasoning is left out)."""
    output = response.get("output")
    messages: list[dict[str, Any]] = []
    for index, entry in enumerate(output if isinstance(output, list) else []):
        try:
            _input_item(entry, f"output[{index}]", messages)
        except ApiError:
            continue  # an item the engine left unusable (a call without a name): not worth failing a turn
    return messages


# -- answers -----------------------------------------------------------------------------------------


def _response_shell(
    request: CreateRequest, *, response_id: str, created_at: int, status: str
) -> dict[str, Any]:
    """A Response without output: the request fields it echoes (the SDK requires `tools`,
    `tool_choice` and `parallel_tool_calls`) and OpenAI's defaults for the rest."""
    raw = request.raw
    parallel = raw.get("parallel_tool_calls")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": raw.get("max_output_tokens"),
        "model": request.model,
        "output": [],
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": request.previous_response_id,
        "reasoning": copy.deepcopy(raw.get("reasoning")) or {"effort": None, "summary": None},
        "store": request.store,
        "temperature": raw.get("temperature"),
        "text": copy.deepcopy(raw.get("text")) or {"format": {"type": "text"}},
        "tool_choice": copy.deepcopy(raw.get("tool_choice")) or "auto",
        "tools": copy.deepcopy(list(raw.get("tools") or [])),
        "top_p": raw.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": raw.get("user"),
        "metadata": dict(raw.get("metadata") or {}),
    }


def _message_output(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def _reasoning_output(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "reasoning_text", "text": text}
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [part], "status": status}


def _function_call_output(call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": new_item_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _conclude(response: dict[str, Any], finish_reason: object) -> None:
    """Status from the engine's finish reason; a response cut short is `incomplete`, and so is the
    item it was writing."""
    reason = _INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    if reason is None:
        response["status"] = "completed"
        return
    response["status"] = "incomplete"
    response["incomplete_details"] = {"reason": reason}
    if response["output"]:
        response["output"][-1]["status"] = "incomplete"


def _usage(usage: object) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    total = _count(usage.get("total_tokens")) or input_tokens + output_tokens
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, Mapping) else 0
    reasoning = (
        _count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, Mapping) else 0
    )
    return {
        "input_tokens": input_tokens,
        # llama-server reuses its prompt cache but never reports writing to it.
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts
        return "".join(part.get("text") or "" for part in value if isinstance(part, dict))
    return ""


def _arguments_text(arguments: object) -> str:
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    return arguments if isinstance(arguments, str) else ""


def response_object(
    request: CreateRequest, completion: Mapping[str, Any], *, response_id: str, created_at: int
) -> dict[str, Any]:
    """The Response for a whole chat completion. Output items come in the order the model wrote
    them: reasoning, text, tool calls. A message item is there whenever there is text or nothing
    else, so a client looking for the answer always finds one."""
    choice = first_choice(completion)
    raw_message = choice.get("message")
    message: Mapping[str, Any] = raw_message if isinstance(raw_message, dict) else {}
    output: list[dict[str, Any]] = []
    reasoning = _text(message.get("reasoning_content"))
    if reasoning:
        output.append(_reasoning_output(new_item_id("rs"), reasoning, "completed"))
    calls: list[dict[str, Any]] = []
    raw_calls = message.get("tool_calls")
    for call in raw_calls if isinstance(raw_calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id")
        calls.append(
            _function_call_output(
                call_id if isinstance(call_id, str) and call_id else new_item_id("call"),
                _text(function.get("name")),
                _arguments_text(function.get("arguments")),
                "completed",
            )
        )
    content = _text(message.get("content"))
    if content or not calls:
        output.append(_message_output(new_item_id("msg"), content, "completed"))
    output.extend(calls)
    response = _response_shell(request, response_id=response_id, created_at=created_at, status="completed")
    response["output"] = output
    _conclude(response, choice.get("finish_reason"))
    response["usage"] = _usage(completion.get("usage"))
    return response


# -- streaming ---------------------------------------------------------------------------------------


def _sse_event(payload: Mapping[str, Any]) -> bytes:
    # ASCII-only JSON: a raw U+2028 or NEL in a data line would split it for decoders that use
    # str.splitlines().
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def _sse_fields(event: bytes) -> tuple[bytes | None, bytes | None]:
    """(data, error) of one engine event: its `data:` lines joined, and an error payload, which
    llama-server writes as a bare `error: {...}` line (or as `event: error` with data)."""
    data: list[bytes] = []
    error: bytes | None = None
    name = b""
    for line in event.splitlines():
        field_name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field_name == b"data":
            data.append(value)
        elif field_name == b"error":
            error = value
        elif field_name == b"event":
            name = value.strip()
    joined = b"\n".join(data) if data else None
    if error is None and name == b"error":
        return None, joined or b""
    return joined, error


def _stream_error_message(payload: bytes) -> str:
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if isinstance(value, dict):
        if "error" in value:
            message = engine_error_message(json.dumps(value).encode())
            if message:
                return message
        if isinstance(value.get("message"), str) and value["message"]:
            return str(value["message"])
    return payload.decode("utf-8", "replace").strip() or "the engine failed while answering"


@dataclass
class _OpenItem:
    """The output item the engine is writing: its place in `output` and its text so far."""

    output_index: int
    item: dict[str, Any]
    pieces: list[str] = field(default_factory=list)
    tool_index: int | None = None
    """For a function call: the engine's `tool_calls[].index` whose fragments it gathers."""


class StreamTranslator:
    """Chat-completion SSE events in, Responses SSE events out.

    `start()` gives `response.created` and `response.in_progress`; `feed(event)` takes one whole
    engine event and returns at once the events for what it carries (an item opened, a delta); the
    engine's usage and finish reason are kept for `finish()`, which closes the open item and sends
    `response.completed` (or `response.incomplete` when the answer was cut short). An engine error,
    or `fail()`, sends `error` and `response.failed`; the translator then ignores the rest.
    Every event has a `sequence_number` one above the last, from 0.
    """

    def __init__(self, request: CreateRequest, *, response_id: str, created_at: int) -> None:
        self._response = _response_shell(
            request, response_id=response_id, created_at=created_at, status="in_progress"
        )
        self._sequence = 0
        self._open: _OpenItem | None = None
        self._finish_reason: str | None = None
        self._failed = False
        self._finished = False

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def response(self) -> dict[str, Any]:
        """The Response as it stands (final once `finish()` or a failure has been sent)."""
        return copy.deepcopy(self._response)

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self._response),
            self._event("response.in_progress", response=self._response),
        ]

    def feed(self, event: bytes) -> list[bytes]:
        if self._failed or self._finished:
            return []
        data, error = _sse_fields(event)
        if error is not None:
            return self.fail(_stream_error_message(error))
        chunk = chunk_object(data)
        if chunk is None or data is None:
            return []
        if chunk.get("error") is not None:
            return self.fail(_stream_error_message(data))
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            self._response["usage"] = usage
        choice = first_choice(chunk)
        raw_delta = choice.get("delta")
        delta: Mapping[str, Any] = raw_delta if isinstance(raw_delta, dict) else {}
        out: list[bytes] = []
        reasoning = _text(delta.get("reasoning_content"))
        if reasoning:
            out.extend(self._text_delta("reasoning", reasoning))
        content = _text(delta.get("content"))
        if content:
            out.extend(self._text_delta("message", content))
        fragments = delta.get("tool_calls")
        for position, fragment in enumerate(fragments if isinstance(fragments, list) else []):
            if isinstance(fragment, dict):
                out.extend(self._tool_call_fragment(fragment, position))
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            self._finish_reason = finish_reason
        return out

    def finish(self) -> list[bytes]:
        """The closing events (nothing after a failure, or the second time)."""
        if self._failed or self._finished:
            return []
        self._finished = True
        out: list[bytes] = []
        output = self._response["output"]
        if not any(item["type"] in ("message", "function_call") for item in output):
            out.extend(self._close_open())
            out.extend(self._open_text_item("message"))  # an empty answer is still an answer
        reason = _INCOMPLETE_REASONS.get(self._finish_reason or "")
        out.extend(self._close_open("incomplete" if reason else "completed"))
        _conclude(self._response, self._finish_reason)
        kind = "response.incomplete" if reason else "response.completed"
        out.append(self._event(kind, response=self._response))
        return out

    def fail(self, message: str) -> list[bytes]:
        """End the stream as failed: for an engine error, or for the handler when the engine goes
        away mid-answer. What was written so far stays in the response, marked incomplete."""
        if self._failed or self._finished:
            return []
        self._failed = True
        if self._open is not None:
            self._settle(self._open, "incomplete")
            self._open = None
        self._response["status"] = "failed"
        self._response["error"] = {"code": "server_error", "message": message}
        return [
            self._event("error", code="server_error", message=message, param=None),
            self._event("response.failed", response=self._response),
        ]

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return _sse_event(payload)

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open.item["type"] != kind:
            out.extend(self._close_open())
            out.extend(self._open_text_item(kind))
        assert self._open is not None
        self._open.pieces.append(text)
        where = {
            "item_id": self._open.item["id"],
            "output_index": self._open.output_index,
            "content_index": 0,
        }
        if kind == "message":
            out.append(self._event("response.output_text.delta", **where, delta=text, logprobs=[]))
        else:
            out.append(self._event("response.reasoning_text.delta", **where, delta=text))
        return out

    def _open_text_item(self, kind: str) -> list[bytes]:
        if kind == "message":
            item_id = new_item_id("msg")
            item = {
                "id": item_id,
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
        else:
            item_id = new_item_id("rs")
            item = {"id": item_id, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        out = self._add_item(item)
        where = {"item_id": item_id, "output_index": len(self._response["output"]) - 1, "content_index": 0}
        out.append(self._event("response.content_part.added", **where, part=part))
        return out

    def _add_item(self, item: dict[str, Any]) -> list[bytes]:
        output = self._response["output"]
        output.append(item)
        self._open = _OpenItem(output_index=len(output) - 1, item=item)
        return [self._event("response.output_item.added", output_index=len(output) - 1, item=item)]

    def _tool_call_fragment(self, fragment: Mapping[str, Any], position: int) -> list[bytes]:
        raw_index = fragment.get("index")
        index = raw_index if isinstance(raw_index, int) and not isinstance(raw_index, bool) else position
        raw_function = fragment.get("function")
        function: Mapping[str, Any] = raw_function if isinstance(raw_function, dict) else {}
        name = _text(function.get("name"))
        out: list[bytes] = []
        current = self._open
        if current is not None and current.item["type"] == "function_call" and current.tool_index == index:
            current.item["name"] += name  # a name is normally whole in the first fragment
        else:
            out.extend(self._close_open())
            call_id = fragment.get("id")
            item = {
                "id": new_item_id("fc"),
                "type": "function_call",
                "call_id": call_id if isinstance(call_id, str) and call_id else new_item_id("call"),
                "name": name,
                "arguments": "",
                "status": "in_progress",
            }
            out.extend(self._add_item(item))
            assert self._open is not None
            current = self._open
            current.tool_index = index
        arguments = _arguments_text(function.get("arguments"))
        if arguments:
            current.pieces.append(arguments)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=current.item["id"],
                    output_index=current.output_index,
                    delta=arguments,
                )
            )
        return out

    def _settle(self, open_item: _OpenItem, status: str) -> str:
        """Write the gathered text into the item; return that text."""
        text = "".join(open_item.pieces)
        item = open_item.item
        item["status"] = status
        if item["type"] == "message":
            item["content"] = [{"type": "output_text", "text": text, "annotations": []}]
        elif item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
        else:
            item["arguments"] = text
        return text

    def _close_open(self, status: str = "completed") -> list[bytes]:
        open_item = self._open
        if open_item is None:
            return []
        self._open = None
        text = self._settle(open_item, status)
        item = open_item.item
        where = {"item_id": item["id"], "output_index": open_item.output_index}
        out: list[bytes] = []
        if item["type"] == "message":
            out.append(
                self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            )
            out.append(
                self._event("response.content_part.done", **where, content_index=0, part=item["content"][0])
            )
        elif item["type"] == "reasoning":
            out.append(self._event("response.reasoning_text.done", **where, content_index=0, text=text))
            out.append(
                self._event("response.content_part.done", **where, content_index=0, part=item["content"][0])
            )
        else:
            out.append(self._event("response.function_call_arguments.done", **where, arguments=text))
        out.append(self._event("response.output_item.done", output_index=open_item.output_index, item=item))
        return out


# -- the store ---------------------------------------------------------------------------------------


@dataclass
class _Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]
    """The chat messages this request added after its parent's conversation (all of them when it
    has no parent)."""
    parent: _Stored | None
    input_items: list[dict[str, Any]]
    expires_at: float


class ResponseStore:
    """Recent responses, in memory, for `GET`/`DELETE /responses/{id}`, `input_items` and
    `previous_response_id`.

    Entries live `ttl` seconds after they were put (DMR: one hour) and at most `max_entries` are
    kept, the oldest going first; expired ones are dropped when the store is next used. Values are
    copied in and out, so callers cannot change what is stored.

    A response that continues another keeps only the messages it added and a reference to the one it
    continues, so a long conversation costs its messages once, not once per turn (a chained agent
    loop would otherwise store its first image a hundred times). A continued response that expires
    or is evicted can no longer be fetched, but the conversations built on it stay whole.
    """

    def __init__(
        self, *, ttl: float = 3600.0, max_entries: int = 1000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl and max_entries must be positive")
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        # Insertion order is expiry order: every entry lives the same ttl from its (latest) put.
        self._entries: OrderedDict[str, _Stored] = OrderedDict()

    def __len__(self) -> int:
        self._drop_expired()
        return len(self._entries)

    def put(
        self,
        response: Mapping[str, Any],
        history: Sequence[dict[str, Any]],
        *,
        input_items: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Keep `response`, with `history`: the chat messages that led to it (the previous
        conversation and this request's input, without instructions), and the request's
        `input_items` (`CreateRequest.input_items`) for the `input_items` route."""
        response_id = response.get("id")
        if not isinstance(response_id, str) or not response_id:
            raise ValueError("a stored response needs its id")
        self._drop_expired()
        parent = self._entries.get(str(response.get("previous_response_id") or ""))
        messages = list(history)
        if parent is not None:
            prefix = _conversation_of(parent)
            if messages[: len(prefix)] == prefix:
                messages = messages[len(prefix) :]
            else:
                parent = None  # not a continuation of what is stored: keep it all
        self._entries.pop(response_id, None)
        self._entries[response_id] = _Stored(
            response=copy.deepcopy(dict(response)),
            messages=copy.deepcopy(messages),
            parent=parent,
            input_items=copy.deepcopy([dict(item) for item in input_items]),
            expires_at=self._clock() + self._ttl,
        )
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> dict[str, Any] | None:
        entry = self._live(response_id)
        return copy.deepcopy(entry.response) if entry else None

    def conversation(self, response_id: str) -> list[dict[str, Any]] | None:
        """The history to send before a follow-up's input: what led to the response, then its output."""
        entry = self._live(response_id)
        return copy.deepcopy(_conversation_of(entry)) if entry else None

    def input_items(self, response_id: str) -> list[dict[str, Any]] | None:
        entry = self._live(response_id)
        return copy.deepcopy(entry.input_items) if entry else None

    def delete(self, response_id: str) -> bool:
        self._drop_expired()
        return self._entries.pop(response_id, None) is not None

    def _live(self, response_id: str) -> _Stored | None:
        self._drop_expired()
        return self._entries.get(response_id)

    def _drop_expired(self) -> None:
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                break
            self._entries.popitem(last=False)


def _conversation_of(entry: _Stored) -> list[dict[str, Any]]:
    """The stored messages of `entry`'s chain, oldest first, each turn followed by its output
    (not copied: callers copy what leaves the store)."""
    chain: list[_Stored] = []
    node: _Stored | None = entry
    while node is not None:
        chain.append(node)
        node = node.parent
    messages: list[dict[str, Any]] = []
    for turn in reversed(chain):
        messages.extend(turn.messages)
        messages.extend(output_messages(turn.response))
    return messages


# -- other answers -----------------------------------------------------------------------------------


def input_items_page(
    items: Sequence[Mapping[str, Any]],
    *,
    order: str = "desc",
    after: str | None = None,
    limit: int | str = _DEFAULT_PAGE_SIZE,
) -> dict[str, Any]:
    """`GET /responses/{id}/input_items`: OpenAI's list object, newest first unless `order=asc`,
    `limit` items (1-100, default 20) after the item `after`.

    Raises:
        ApiError: 400 for a bad `order`, `limit` or an unknown `after`.
    """
    if order not in ("asc", "desc"):
        raise _invalid("invalid request: 'order' must be asc or desc", "order")
    try:
        size = int(limit)
    except ValueError:
        size = 0
    if not 1 <= size <= _MAX_PAGE_SIZE:
        raise _invalid(f"invalid request: 'limit' must be an integer from 1 to {_MAX_PAGE_SIZE}", "limit")
    ordered = [dict(item) for item in (items if order == "asc" else reversed(items))]
    start = 0
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise _invalid(f"invalid request: no input item {_go_quote(after)}", "after")
        start = ids.index(after) + 1
    page = ordered[start : start + size]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": start + size < len(ordered),
    }


def deleted_object(response_id: str) -> dict[str, Any]:
    """OpenAI's answer to `DELETE /responses/{id}` (the SDK discards the body; DMR's object is
    `"response.deleted"`, OpenAI's own API answers `"response"`)."""
    return {"id": response_id, "object": "response", "deleted": True}
