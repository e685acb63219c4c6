"""Pure parts of `run`: prompt input, commands, SSE and chat chunks."""

from __future__ import annotations

import json

import pytest
from modelrunner.cli._chat import (
    Command,
    CommandError,
    Message,
    PromptReader,
    iter_sse_data,
    parse_chat_chunk,
    parse_command,
)


def test_single_line_and_blank() -> None:
    reader = PromptReader()
    assert reader.feed("   ") is None
    assert reader.feed(" hello there ") == Message("hello there")
    assert reader.prompt == ">>> "


def test_multiline_block() -> None:
    reader = PromptReader()
    assert reader.feed('"""first line') is None
    assert reader.in_multiline and reader.prompt == "... "
    assert reader.feed("  indented second") is None
    assert reader.feed("/bye is text here") is None
    assert reader.feed('last"""') == Message("first line\n  indented second\n/bye is text here\nlast")
    assert not reader.in_multiline


def test_multiline_opened_alone_and_one_line_block() -> None:
    reader = PromptReader()
    assert reader.feed('"""') is None
    assert reader.feed("body") is None
    assert reader.feed('"""') == Message("body")
    assert reader.feed('"""all in one"""') == Message("all in one")
    assert reader.feed('""""""') is None  # an empty block sends nothing


def test_reset_drops_half_typed_block() -> None:
    reader = PromptReader()
    reader.feed('"""draft')
    reader.reset()
    assert reader.feed("fresh") == Message("fresh")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/bye", Command("bye")),
        ("/exit", Command("bye")),
        ("/?", Command("help")),
        ("/help", Command("help")),
        ("/clear", Command("clear")),
        ("/set system You are terse.", Command("set_system", argument="You are terse.")),
        ("/set num_ctx 8192", Command("set_num_ctx", number=8192)),
        ("/set num_ctx -1", Command("set_num_ctx", number=-1)),
    ],
)
def test_commands(line: str, expected: Command) -> None:
    assert parse_command(line) == expected
    assert PromptReader().feed(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "/frobnicate",
        "/set",
        "/set system",
        "/set num_ctx",
        "/set num_ctx lots",
        "/set num_ctx 0",
        "/set temperature 1",
    ],
)
def test_bad_commands(line: str) -> None:
    with pytest.raises(CommandError):
        parse_command(line)


def test_iter_sse_data() -> None:
    lines = [": keep-alive", 'data: {"a":1}', "", "event: x", "data: one", "data: two", "", "data:[DONE]", ""]
    assert list(iter_sse_data(lines)) == ['{"a":1}', "one\ntwo", "[DONE]"]


def test_parse_chat_chunk_content_and_reasoning() -> None:
    chunk = parse_chat_chunk(
        json.dumps({"choices": [{"delta": {"content": "Hi", "reasoning_content": "hmm"}}]})
    )
    assert (chunk.content, chunk.reasoning, chunk.done, chunk.error) == ("Hi", "hmm", False, "")
    assert parse_chat_chunk("[DONE]").done
    finished = parse_chat_chunk(json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    assert finished.finish_reason == "stop" and finished.content == ""


def test_parse_chat_chunk_whole_response_and_errors() -> None:
    whole = parse_chat_chunk(
        json.dumps({"choices": [{"message": {"role": "assistant", "content": "Done."}}]})
    )
    assert whole.content == "Done."
    assert parse_chat_chunk(json.dumps({"error": {"message": "context full"}})).error == "context full"
    assert parse_chat_chunk("not json").error
    assert parse_chat_chunk("[1,2]").error
