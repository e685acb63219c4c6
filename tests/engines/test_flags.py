"""Runtime-flag allowlists (pure)."""

from __future__ import annotations

import pytest
from modelrunner.engines import InvalidRuntimeFlags
from modelrunner.engines.flags import LLAMACPP_FLAGS, MAX_RUNTIME_FLAG_BYTES, VLLM_FLAGS, FlagAllowlist


@pytest.mark.parametrize(
    "tokens",
    [
        [],
        ["--threads", "8"],
        ["-t", "8", "-c", "8192"],
        ["--ctx-size=8192"],
        ["--reasoning-budget", "-1"],
        ["--reasoning-budget=-1"],
        ["--temp=-0.5"],
        ["--temp", "1e-3"],
        ["--jinja", "--no-jinja", "--metrics"],
        ["-np", "4", "--kv-unified"],
        ["--chat-template-kwargs", '{"enable_thinking":false}'],
        ["--grammar", 'root ::= "yes" | "no"'],
        ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"],
        ["--embeddings"],
        ["--rerank"],
    ],
)
def test_llamacpp_accepts(tokens: list[str]) -> None:
    LLAMACPP_FLAGS.validate(tokens)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["--model", "x.gguf"], "'--model' is not allowed for backend 'llama.cpp'"),
        (["--host", "0.0.0.0"], "'--host' is not allowed"),
        (["--api-key", "k"], "'--api-key' is not allowed"),  # the proxy would get 401 on everything
        (["--log-file", "x"], "'--log-file' is not allowed"),
        (["--alias", "other"], "'--alias' is not allowed"),
        (["--mlock"], "'--mlock' is not allowed"),  # not a flag of b11312 any more (use --load-mode)
        (["--threads"], "'--threads' needs a value"),
        (["--threads", "--jinja"], "'--threads' needs a value"),
        (["--jinja=1"], "takes no value"),
        (["8"], "unexpected argument '8'"),
        (["--threads", "8", "9"], "unexpected argument '9'"),
        (["--grammar=--model"], "must be a number"),
        (["-t", "/etc/passwd"], "path separator"),
        (["--chat-template", "..\\x"], "path separator"),
        (["--grammar-file", "g"], "not allowed"),
        ([""], "empty"),
        (["--temp", "1\x00"], "NUL"),
    ],
)
def test_llamacpp_refuses(tokens: list[str], message: str) -> None:
    with pytest.raises(InvalidRuntimeFlags, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        LLAMACPP_FLAGS.validate(tokens)
    assert info.value.flags, "the offending token is reported"


def test_any_token_with_a_slash_is_refused_even_as_a_value() -> None:
    for token in ["a/b", "/", "x\\y", "--grammar=a/b"]:
        with pytest.raises(InvalidRuntimeFlags, match="path"):
            LLAMACPP_FLAGS.validate(["--grammar", token] if not token.startswith("-") else [token])


def test_length_is_bounded() -> None:
    with pytest.raises(InvalidRuntimeFlags, match="longer than"):
        LLAMACPP_FLAGS.validate(["--grammar", "x" * MAX_RUNTIME_FLAG_BYTES])


def test_parse_gives_canonical_names_and_values() -> None:
    parsed = LLAMACPP_FLAGS.parse(["-c", "8192", "--temp=0.2", "-kvu", "-np", "2"])
    assert [(p.canonical, p.value) for p in parsed] == [
        ("--ctx-size", "8192"),
        ("--temperature", "0.2"),
        ("--kv-unified", None),
        ("--parallel", "2"),
    ]


def test_vllm_allowlist_is_separate() -> None:
    VLLM_FLAGS.validate(["--max-model-len", "4096", "--enforce-eager", "-tp", "2"])
    with pytest.raises(InvalidRuntimeFlags, match="not allowed for backend 'vllm'"):
        VLLM_FLAGS.validate(["--threads", "4"])
    with pytest.raises(InvalidRuntimeFlags, match=r"not allowed for backend 'llama\.cpp'"):
        LLAMACPP_FLAGS.validate(["--max-model-len", "4096"])


def test_an_empty_allowlist_refuses_every_flag() -> None:
    empty = FlagAllowlist.build("mlx", [])
    empty.validate([])
    with pytest.raises(InvalidRuntimeFlags, match="not allowed for backend 'mlx'"):
        empty.validate(["--threads", "2"])


def test_duplicate_spellings_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        FlagAllowlist.build("x", [(("-a", "--all"), False), (("--all",), True)])
