"""The generator itself (no server): determinism, sizes, GGUF contents, argument checks."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import testmodels
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]


def read(path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


def field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    assert f is not None, key
    return f.contents()


def tensor(reader: gguf.GGUFReader, name: str) -> np.ndarray[Any, Any]:
    [t] = [t for t in reader.tensors if t.name == name]
    return np.asarray(t.data, dtype=np.float32)


def test_write_all_is_byte_for_byte_deterministic(
    tmp_path: Path, test_models: testmodels.TestModelSet
) -> None:
    again = testmodels.write_all(tmp_path / "again")
    assert [p.name for p in again] == ["chat.gguf", "chat-tool.gguf", "embed.gguf", "chat-large.gguf"]
    for first, second in zip(test_models, again, strict=True):
        assert testmodels.sha256_file(first) == testmodels.sha256_file(second), first.name


def test_make_test_models_script(tmp_path: Path, test_models: testmodels.TestModelSet) -> None:
    import subprocess

    proc = subprocess.run(
        [str(REPO / "hack" / "make-test-models"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [Path(path).name for path, _, _ in lines] == [p.name for p in test_models]
    for (path, size, digest), reference in zip(lines, test_models, strict=True):
        assert int(size) == Path(path).stat().st_size == reference.stat().st_size
        assert digest == testmodels.sha256_file(reference)
    usage = subprocess.run(
        [str(REPO / "hack" / "make-test-models")], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_sizes(test_models: testmodels.TestModelSet) -> None:
    assert test_models.chat.stat().st_size < 2_000_000
    assert test_models.chat_tool.stat().st_size < 2_000_000
    assert test_models.embed.stat().st_size < 4_000_000
    assert 80_000_000 < test_models.chat_large.stat().st_size < 130_000_000


def test_chat_model_metadata(test_models: testmodels.TestModelSet) -> None:
    reader = read(test_models.chat)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == testmodels.CHAT_MODEL_NAME
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert field(reader, "tokenizer.chat_template") == testmodels.CHAT_TEMPLATE
    assert testmodels.SYSTEM_PROMPT in testmodels.CHAT_TEMPLATE
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(merges) == 200
    for merge in merges:  # every merge yields a vocabulary entry
        left, right = merge.split(" ")
        assert left + right in tokens
    kinds = dict(zip(tokens, types, strict=True))
    for control in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert kinds[control] == gguf.TokenType.CONTROL
    for user_defined in ("<tool_call>", "</tool_call>"):
        assert kinds[user_defined] == gguf.TokenType.USER_DEFINED
    assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert field(reader, "llama.embedding_length") == 64
    assert field(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32


def test_large_model_is_f16_with_f32_norms(test_models: testmodels.TestModelSet) -> None:
    reader = read(test_models.chat_large)
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert field(reader, "llama.block_count") == testmodels.LARGE_CHAT_SHAPE["n_layer"]
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("which", ["chat", "chat_tool", "chat_large"])
def test_output_matrix_encodes_the_script(test_models: testmodels.TestModelSet, which: str) -> None:
    """Embedding of each chain token times output.weight ranks its successor first by far (the
    layers only touch other dimensions; the server tests check the whole forward pass)."""
    path = getattr(test_models, which)
    reply = testmodels.TOOL_CALL_REPLY if which == "chat_tool" else testmodels.CHAT_REPLY
    reader = read(path)
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    embd = tensor(reader, "token_embd.weight")
    output = tensor(reader, "output.weight")

    def stored(text: str) -> str:  # special tokens verbatim, others as GPT-2 byte symbols
        return text if text in ("<tool_call>", "</tool_call>") else text.replace(" ", "Ġ").replace("\n", "Ċ")

    chain = ["\n", *testmodels.scripted_reply_tokens(reply)]
    ids = [tokens.index(stored(t)) for t in chain] + [tokens.index("<|im_end|>")]
    for current, successor in itertools.pairwise(ids):
        logits = output @ embd[current]
        ranked = np.argsort(logits)[::-1]
        assert ranked[0] == successor
        assert logits[ranked[0]] - logits[ranked[1]] > 1.0  # pre-norm scale; about 60 after the norm


def test_embedding_model_metadata(test_models: testmodels.TestModelSet) -> None:
    reader = read(test_models.embed)
    assert field(reader, "general.architecture") == "bert"
    assert field(reader, "tokenizer.ggml.model") == "bert"
    assert field(reader, "bert.embedding_length") == testmodels.EMBEDDING_DIM
    assert field(reader, "bert.pooling_type") == gguf.PoolingType.MEAN
    assert field(reader, "bert.attention.causal") is False
    assert field(reader, "bert.context_length") == testmodels.EMBEDDING_CONTEXT_LENGTH
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert tokens[field(reader, "tokenizer.ggml.bos_token_id")] == "[CLS]"
    assert tokens[field(reader, "tokenizer.ggml.seperator_token_id")] == "[SEP]"


def test_embedding_tokens() -> None:
    assert testmodels.embedding_tokens("A cat, sharply!") == [
        "[CLS]", "\u2581a", "\u2581cat", "\u2581,", "\u2581sharp", "ly", "\u2581!", "[SEP]",
    ]  # fmt: skip
    assert testmodels.embedding_tokens("") == ["[CLS]", "[SEP]"]
    assert testmodels.embedding_tokens("Café") == ["[CLS]", "\u2581c", "a", "f", "e", "[SEP]"]
    assert testmodels.embedding_tokens("日本") == ["[CLS]", "[UNK]", "[SEP]"]


def test_usage_constants() -> None:
    assert testmodels.scripted_reply_tokens(testmodels.CHAT_REPLY) == [
        "Hello", "!", " I", " am", " a", " tiny", " test", " model", ".",
    ]  # fmt: skip
    assert testmodels.CHAT_REPLY_COMPLETION_TOKENS == 10
    assert testmodels.TOOL_CALL_REPLY_COMPLETION_TOKENS == 16
    assert testmodels.TOOL_CALL_REPLY == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert testmodels.chat_prompt_tokens([{"role": "user", "content": "Hi there"}]) == 25


@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=60))
def test_any_ascii_reply_can_be_scripted(reply: str) -> None:
    if reply == "\n":  # nothing but the newline the chain starts from
        with pytest.raises(ValueError, match="repeats"):
            testmodels.scripted_reply_tokens(reply)
        return
    chunks = testmodels.scripted_reply_tokens(reply)
    assert "".join(chunks) == reply
    assert len(set(chunks)) == len(chunks)
    assert "\n" not in chunks


def test_repeated_reply_is_scripted_and_served_by_the_weights(tmp_path: Path) -> None:
    reply = "ha ha ha ha ha!"
    chunks = testmodels.scripted_reply_tokens(reply)
    assert "".join(chunks) == reply and len(set(chunks)) == len(chunks)
    path = testmodels.write_chat_model(tmp_path / "ha.gguf", reply=reply)
    tokens = list(field(read(path), "tokenizer.ggml.tokens"))
    assert all(chunk.replace(" ", "Ġ") in tokens for chunk in chunks)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reply": ""}, "must not be empty"),
        ({"reply": "hi <|im_end|>"}, "control token"),
        ({"reply": "<tool_call>a</tool_call><tool_call>b</tool_call>"}, "only once"),
        ({"n_embd": 24}, "n_embd >= 27"),
        ({"n_embd": 66, "n_head": 4}, "multiple of n_head"),
        ({"n_head": 4, "n_head_kv": 3}, "multiple of n_head_kv"),
        ({"n_layer": 0}, "n_layer"),
        ({"weight_type": "q4_0"}, "weight_type"),
    ],
)
def test_bad_arguments_raise_and_write_nothing(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        testmodels.write_chat_model(tmp_path / "bad.gguf", **kwargs)
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "chat.gguf"
    testmodels.write_chat_model(target)
    before = testmodels.sha256_file(target)

    def broken(*args: Any, **kwargs: Any) -> Any:
        yield "token_embd.weight", np.zeros((4, 4), dtype=np.float32)
        raise OSError("disk full")

    monkeypatch.setattr(testmodels, "_chat_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        testmodels.write_chat_model(target)
    assert os.listdir(tmp_path) == ["chat.gguf"]
    assert testmodels.sha256_file(target) == before  # the old file is untouched


def test_seed_changes_weights_not_the_script(tmp_path: Path) -> None:
    a = testmodels.write_chat_model(tmp_path / "a.gguf", seed=0)
    b = testmodels.write_chat_model(tmp_path / "b.gguf", seed=1)
    assert testmodels.sha256_file(a) != testmodels.sha256_file(b)
    assert field(read(a), "tokenizer.ggml.tokens") == field(read(b), "tokenizer.ggml.tokens")
