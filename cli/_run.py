"""``modelrunner run``: preload, one-shot prompt, or an interactive streaming chat."""

from __future__ import annotations

import argparse
import builtins
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from modelrunner.cli._chat import (
    HELP_TEXT,
    Command,
    CommandError,
    PromptReader,
    iter_sse_data,
    parse_chat_chunk,
)
from modelrunner.cli._client import LONG_TIMEOUT
from modelrunner.cli._commands import require_model_exists_or_pull
from modelrunner.cli._context import Context
from modelrunner.cli._errors import DaemonError, ExitStatus, UsageError

__all__ = ["ChatSession", "cmd_run", "preload"]

CHAT_PATH: Final = "/engines/v1/chat/completions"
_DIM: Final = "\x1b[2m"
_RESET: Final = "\x1b[0m"


def preload(ctx: Context, model: str) -> None:
    """Ask the daemon to load the model and wait until it is ready (DMR's ``X-Preload-Only``).

    Raises:
        DaemonError: the model cannot be loaded (the daemon's reason, e.g. the engine failed).
    """
    ctx.client().request(
        "POST",
        CHAT_PATH,
        json_body={"model": model, "messages": []},
        headers={"X-Preload-Only": "true"},
        timeout=LONG_TIMEOUT,
    )


@dataclass
class ChatSession:
    """One conversation: the system message, the history, and how replies are shown."""

    ctx: Context
    model: str
    system: str = ""
    history: list[dict[str, str]] = field(default_factory=list)
    show_reasoning: bool = False

    def messages(self) -> list[dict[str, str]]:
        prefix = [{"role": "system", "content": self.system}] if self.system else []
        return prefix + self.history

    def ask(self, text: str) -> str:
        """Send a user message, stream the reply to stdout, and keep both in the history.

        If the reply is interrupted (Ctrl-C) or fails, the history is left as it was.

        Raises:
            DaemonError, DaemonUnavailable: the request failed.
            KeyboardInterrupt: the user stopped the reply.
        """
        messages = [*self.messages(), {"role": "user", "content": text}]
        reply = self._stream(messages)
        self.history.append({"role": "user", "content": text})
        self.history.append({"role": "assistant", "content": reply})
        return reply

    def _stream(self, messages: list[dict[str, str]]) -> str:
        out = self.ctx.stdout
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        content: list[str] = []
        in_reasoning = False
        ends_with_newline = True
        try:
            with self.ctx.client().stream(
                "POST", CHAT_PATH, json_body=body, headers={"Accept": "text/event-stream"}
            ) as response:
                if "text/event-stream" in response.headers.get("content-type", ""):
                    payloads = iter_sse_data(response.iter_lines())
                else:
                    # A daemon (or proxy) that ignored stream=true: one JSON response.
                    payloads = iter([response.read().decode("utf-8", errors="replace")])
                for payload in payloads:
                    chunk = parse_chat_chunk(payload)
                    if chunk.error:
                        raise DaemonError(chunk.error)
                    if chunk.done:
                        break
                    if chunk.reasoning and self.show_reasoning:
                        if not in_reasoning:
                            out.write(_DIM)
                            in_reasoning = True
                        out.write(chunk.reasoning)
                        ends_with_newline = chunk.reasoning.endswith("\n")
                    if chunk.content:
                        if in_reasoning:
                            out.write(_RESET + ("" if ends_with_newline else "\n"))
                            in_reasoning = False
                        out.write(chunk.content)
                        content.append(chunk.content)
                        ends_with_newline = chunk.content.endswith("\n")
                    out.flush()
        finally:
            if in_reasoning:
                out.write(_RESET)
            if not ends_with_newline:
                out.write("\n")
            out.flush()
        return "".join(content)


def cmd_run(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    model: str = args.model
    if args.detach and args.prompt:
        raise UsageError("-d/--detach only loads the model; do not pass a prompt with it")
    require_model_exists_or_pull(ctx, model)
    if args.detach:
        with _loading(ctx, model):
            preload(ctx, model)
        ctx.print(f"Model {model} is loaded.")
        return ExitStatus.SUCCESS
    session = ChatSession(ctx, model, show_reasoning=ctx.stdout_is_tty)
    prompt = " ".join(args.prompt).strip()
    if not prompt and not ctx.stdin_is_tty:
        prompt = ctx.stdin.read().strip()
        if not prompt:
            raise UsageError("no prompt: stdin was empty; pass a PROMPT argument or run without input")
    if prompt:
        session.ask(prompt)
        return ExitStatus.SUCCESS
    with _loading(ctx, model):
        preload(ctx, model)
    return interactive(ctx, session)


@contextlib.contextmanager
def _loading(ctx: Context, model: str) -> Any:
    if ctx.err.is_terminal:
        with ctx.err.status(f"Loading {model}..."):
            yield
    else:
        yield


def interactive(
    ctx: Context, session: ChatSession, read_line: Callable[[str], str] | None = None
) -> ExitStatus:
    """The chat REPL. Returns when the user types /bye or /exit, or sends EOF (Ctrl-D)."""
    if read_line is None:
        read_line = _line_reader(ctx)
    ctx.print(f'Chatting with {session.model}. Type /? for help, /bye to leave, """ for several lines.')
    reader = PromptReader()
    while True:
        try:
            line = read_line(reader.prompt)
        except EOFError:
            ctx.print()
            return ExitStatus.SUCCESS
        except KeyboardInterrupt:
            ctx.print()
            if reader.in_multiline:
                reader.reset()
            else:
                ctx.print("Use Ctrl-D or /bye to leave.")
            continue
        try:
            item = reader.feed(line)
        except CommandError as exc:
            ctx.print(str(exc))
            continue
        if item is None:
            continue
        if isinstance(item, Command):
            if item.name == "bye":
                return ExitStatus.SUCCESS
            _handle_command(ctx, session, item)
            continue
        try:
            session.ask(item.text)
        except KeyboardInterrupt:
            ctx.print("(stopped)")
        except DaemonError as exc:
            # One failed reply does not end the chat; an unreachable daemon (raised past here) does.
            ctx.err.print(f"modelrunner: error: {exc.message}", markup=False)


def _handle_command(ctx: Context, session: ChatSession, command: Command) -> None:
    match command.name:
        case "help":
            ctx.print(HELP_TEXT)
        case "clear":
            session.history.clear()
            ctx.print("Cleared the conversation.")
        case "set_system":
            session.system = command.argument
            ctx.print("Set the system message.")
        case "set_num_ctx":
            try:
                ctx.client().request(
                    "POST",
                    "/engines/_configure",
                    json_body={"model": session.model, "context-size": command.number},
                    timeout=LONG_TIMEOUT,
                )
            except DaemonError as exc:
                ctx.err.print(f"modelrunner: error: {exc.message}", markup=False)
                return
            ctx.print(f"Set the context size to {command.number} tokens.")


def _line_reader(ctx: Context) -> Callable[[str], str]:
    if ctx.stdin_is_tty and ctx.stdout_is_tty:
        # readline gives the prompt line editing and history; absent on some builds, which is fine.
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401

        return builtins.input

    def read(prompt: str) -> str:
        ctx.stdout.write(prompt)
        ctx.stdout.flush()
        line = ctx.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read
