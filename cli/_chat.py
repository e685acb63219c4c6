"""The pieces of ``modelrunner run`` that need no I/O: prompt input and the chat stream.

``PromptReader`` turns typed lines into complete inputs (``\"\"\"`` starts and ends a multi-line
message; ``/…`` lines are commands). ``parse_command`` names the command. ``iter_sse_data`` and
``parse_chat_chunk`` read OpenAI's server-sent-event stream of chat completion chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "HELP_TEXT",
    "ChatChunk",
    "Command",
    "CommandError",
    "Message",
    "PromptReader",
    "iter_sse_data",
    "parse_chat_chunk",
    "parse_command",
]

MULTILINE_QUOTE: Final = '"""'
PROMPT: Final = ">>> "
CONTINUATION_PROMPT: Final = "... "

HELP_TEXT: Final = """\
Available commands:
  /set system <text>   Set the system message for this chat
  /set num_ctx <n>     Set the model's context size (reloads the model)
  /clear               Forget the conversation so far (keeps the system message)
  /bye, /exit          Leave the chat (Ctrl-D also works)
  /?, /help            Show this help

Start and end a message with \"\"\" to write several lines.
Ctrl-C stops a reply that is being written."""


@dataclass(frozen=True, slots=True)
class Message:
    """A complete user message (single line or the body of a \"\"\" block)."""

    text: str


@dataclass(frozen=True, slots=True)
class Command:
    """A ``/`` command: ``name`` is one of bye, help, clear, set_system, set_num_ctx."""

    name: str
    argument: str = ""
    number: int = 0


class CommandError(ValueError):
    """A ``/`` line that is not a valid command; the message says what is valid."""


class PromptReader:
    """Collects typed lines into inputs. Feed each line (without its newline) to ``feed``."""

    def __init__(self) -> None:
        self._pending: list[str] | None = None

    @property
    def in_multiline(self) -> bool:
        return self._pending is not None

    @property
    def prompt(self) -> str:
        return CONTINUATION_PROMPT if self.in_multiline else PROMPT

    def reset(self) -> None:
        """Drop a half-typed multi-line message (Ctrl-C at the prompt)."""
        self._pending = None

    def feed(self, line: str) -> Message | Command | None:
        """The input completed by this line, or None while more lines are needed (or it is blank).

        Raises:
            CommandError: the line is a ``/`` command that does not exist or lacks its argument.
        """
        if self._pending is not None:
            if line.rstrip().endswith(MULTILINE_QUOTE):
                self._pending.append(line.rstrip()[: -len(MULTILINE_QUOTE)])
                text = "\n".join(self._pending).strip("\n")
                self._pending = None
                return Message(text) if text.strip() else None
            self._pending.append(line)
            return None
        stripped = line.strip()
        if stripped.startswith(MULTILINE_QUOTE):
            rest = stripped[len(MULTILINE_QUOTE) :]
            if rest.endswith(MULTILINE_QUOTE) and rest:
                text = rest[: -len(MULTILINE_QUOTE)]
                return Message(text) if text.strip() else None
            self._pending = [rest] if rest else []
            return None
        if not stripped:
            return None
        if stripped.startswith("/"):
            return parse_command(stripped)
        return Message(line.strip())


def parse_command(text: str) -> Command:
    """Parse a ``/`` line.

    Raises:
        CommandError: unknown command, or a missing or bad argument.
    """
    word, _, rest = text.strip().partition(" ")
    rest = rest.strip()
    match word.lower():
        case "/bye" | "/exit" | "/quit":
            return Command("bye")
        case "/?" | "/help":
            return Command("help")
        case "/clear":
            return Command("clear")
        case "/set":
            return _parse_set(rest)
    raise CommandError(f"unknown command {word!r}; type /? for help")


def _parse_set(rest: str) -> Command:
    key, _, value = rest.partition(" ")
    value = value.strip()
    match key.lower():
        case "system":
            if not value:
                raise CommandError("usage: /set system <text>")
            return Command("set_system", argument=value)
        case "num_ctx":
            try:
                number = int(value)
            except ValueError:
                raise CommandError("usage: /set num_ctx <n>, with n a whole number of tokens") from None
            if number <= 0 and number != -1:
                raise CommandError("the context size must be more than 0 (or -1 for the model's maximum)")
            return Command("set_num_ctx", number=number)
    raise CommandError(f"unknown setting {key!r}; /set takes 'system' or 'num_ctx'")


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` payload of each server-sent event, multi-line data joined by newlines."""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


@dataclass(frozen=True, slots=True)
class ChatChunk:
    content: str = ""
    reasoning: str = ""
    finish_reason: str = ""
    done: bool = False  # the ``[DONE]`` sentinel
    error: str = ""


def parse_chat_chunk(data: str) -> ChatChunk:
    """One SSE payload of a streamed chat completion (or a whole non-streamed response)."""
    if data.strip() == "[DONE]":
        return ChatChunk(done=True)
    try:
        value = json.loads(data)
    except ValueError:
        return ChatChunk(error=f"the daemon sent a stream event that is not JSON: {data[:200]!r}")
    if not isinstance(value, dict):
        return ChatChunk(error="the daemon sent a stream event that is not a JSON object")
    error = value.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        return ChatChunk(error=str(message or error))
    content: list[str] = []
    reasoning: list[str] = []
    finish = ""
    choices = value.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        # Streamed chunks carry "delta"; a non-streamed response carries "message".
        part: Any = choice.get("delta") or choice.get("message") or {}
        if isinstance(part, dict):
            content.append(_str(part.get("content")))
            reasoning.append(_str(part.get("reasoning_content") or part.get("reasoning")))
        finish = finish or _str(choice.get("finish_reason"))
    return ChatChunk(content="".join(content), reasoning="".join(reasoning), finish_reason=finish)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
