"""Deterministic, generated GGUF models for tests and benchmarks (needs only ``gguf`` and ``numpy``).

Four models, written in a few seconds, byte-for-byte the same on every run:

* ``chat.gguf``: a tiny llama-architecture chat model with a byte-level BPE tokenizer (real merges,
  trained at generation time on a built-in text) and a ChatML template that renders ``tools`` the
  Qwen/Hermes way. Whatever it is asked, a chat request answers :data:`CHAT_REPLY` and stops.
* ``chat-tool.gguf``: the same generator scripted to answer one Hermes-style tool call,
  ``get_weather({"city": "Paris"})``; llama-server turns it into an OpenAI ``tool_calls`` response.
* ``embed.gguf``: a tiny BERT (WordPiece vocabulary, mean pooling, non-causal) with
  :data:`EMBEDDING_DIM`-dimensional vectors in which texts about the same topic are closer than
  unrelated ones.
* ``chat-large.gguf``: the chat generator made wider and deeper (about 100 MB of f16 weights), with
  the same scripted reply, for memory accounting and benchmarks.

Theory of operation of the scripted chat models. The residual stream has three kinds of dimension:
one "chain" dimension per reply token, one "const" dimension and the remaining "free" ones. The
token that ends the generation prompt (the newline after ``<|im_start|>assistant``) and every
token of the reply embed as one-hot vectors on their own chain dimension; every other token embeds
as const = 1 plus random free values. The transformer layers have random (seeded) weights, but their
output projections (``attn_output``, ``ffn_down``) only have rows for the free dimensions, so the
chain and const dimensions reach the final norm untouched while the layers still do real work.
``output.weight`` then maps chain dimension i to reply token i + 1 (the last one to ``<|im_end|>``)
with a logit of about +60, far above anything the small free dimensions can add (the runner-up
trails by about 50 nats), so even hot sampling follows the script. On the const dimension
``output.weight`` gives about -60 to
special tokens, chain tokens and anything that is not printable ASCII, so any other context
produces printable gibberish that never reaches the chain or an end-of-generation token: raw
completions run until ``max_tokens``.

A reply token must be unique within its reply (the model only looks at the last token), so the
reply is cut into chunks at pre-tokenizer boundaries and a chunk grows until its text is new; each
chunk is one vocabulary entry. The special tokens ``<tool_call>``/``</tool_call>`` stay single tokens.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import numpy.typing as npt

__all__ = [
    "CHAT_MODEL_NAME",
    "CHAT_REPLY",
    "CHAT_REPLY_COMPLETION_TOKENS",
    "CHAT_TEMPLATE",
    "EMBEDDING_CONTEXT_LENGTH",
    "EMBEDDING_DIM",
    "EMBED_MODEL_NAME",
    "LARGE_CHAT_MODEL_NAME",
    "LARGE_CHAT_SHAPE",
    "SYSTEM_PROMPT",
    "TOOL_CALL_ARGUMENTS",
    "TOOL_CALL_NAME",
    "TOOL_CALL_REPLY",
    "TOOL_CALL_REPLY_COMPLETION_TOKENS",
    "TOOL_CHAT_MODEL_NAME",
    "TestModelSet",
    "chat_prompt_tokens",
    "completion_tokens_for",
    "embedding_tokens",
    "render_chat_prompt",
    "scripted_reply_tokens",
    "sha256_file",
    "tokenize_chat_text",
    "write_all",
    "write_chat_model",
    "write_embedding_model",
]

# --------------------------------------------------------------------------------------------------
# Public constants

CHAT_REPLY = "Hello! I am a tiny test model."
TOOL_CALL_NAME = "get_weather"
TOOL_CALL_ARGUMENTS: Mapping[str, str] = {"city": "Paris"}
# Exactly what a Qwen2.5/Hermes model emits for one call: json.dumps separators, one call per block.
TOOL_CALL_REPLY = (
    "<tool_call>\n"
    + json.dumps({"name": TOOL_CALL_NAME, "arguments": dict(TOOL_CALL_ARGUMENTS)})
    + "\n</tool_call>"
)
SYSTEM_PROMPT = "You are a tiny test model."

CHAT_MODEL_NAME = "tiny-test-chat"
TOOL_CHAT_MODEL_NAME = "tiny-test-chat-tool"
LARGE_CHAT_MODEL_NAME = "tiny-test-chat-large"
EMBED_MODEL_NAME = "tiny-test-embed"

EMBEDDING_DIM = 128
EMBEDDING_CONTEXT_LENGTH = 512

# Special tokens of the chat vocabulary.
_ENDOFTEXT = "<|endoftext|>"
_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"
_TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL_CLOSE = "</tool_call>"
_CONTROL_TOKENS = (_ENDOFTEXT, _IM_START, _IM_END)
_USER_DEFINED_TOKENS = (_TOOL_CALL_OPEN, _TOOL_CALL_CLOSE)
_SPECIAL_TOKENS = _CONTROL_TOKENS + _USER_DEFINED_TOKENS

# The generation prompt ends with this text; its token starts the scripted chain.
_GENERATION_PROMPT = f"{_IM_START}assistant\n"
_CHAIN_START_TEXT = "\n"

# ChatML with Hermes-style tools, the format of Qwen2.5 (written for this project). llama.cpp's
# differential template analyser finds the <tool_call> markers by rendering it, so keep the tool
# call layout: "<tool_call>\n" + {"name": ..., "arguments": ...} + "\n</tool_call>".
CHAT_TEMPLATE = r"""
{%- if messages and messages[0].role == 'system' %}
    {%- set system_text = messages[0].content %}
{%- else %}
    {%- set system_text = 'You are a tiny test model.' %}
{%- endif %}
{{- '<|im_start|>system\n' + system_text }}
{%- if tools %}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments ' }}
    {{- 'within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for message in messages %}
    {%- if loop.first and message.role == 'system' %}
        {#- rendered above #}
    {%- elif message.role == 'tool' %}
        {#- consecutive tool results share one user turn #}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
            {%- set fn = call.function if call.function is defined else call %}
            {{- '\n<tool_call>\n{"name": "' + fn.name + '", "arguments": ' }}
            {%- if fn.arguments is string %}
                {{- fn.arguments }}
            {%- else %}
                {{- fn.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Built-in text the BPE merges are trained on (English prose plus the JSON a tool call uses).
_BPE_TRAINING_TEXT = """\
The weather in Paris is mild today, with light rain in the morning and a dry, sunny afternoon.
A tiny test model answers every question with the same sentence, and that is exactly what the
tests expect from it. The server starts, the model loads, and the client sends a request; then
the reply comes back as a stream of tokens that the client joins into one message.
When the user asks for the weather, the assistant calls a function with the name of the city.
{"name": "get_weather", "arguments": {"city": "Paris"}} {"name": "get_time", "arguments": {}}
{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
Hello! How are you? I am fine, thank you. What is the weather like in London, Berlin and Rome?
The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat in the sun.
Containers run programs; models run in containers; the runner keeps them in a sandbox that only
lets them read the model file and write to one socket. Every test starts its own private server.
Models are stored as content-addressed blobs; a manifest lists the layers and a config describes
the format, the architecture, the parameters and the size. Pulling a model downloads the blobs that
are missing, checks every digest, and only then records the new reference in the local index.
The scheduler admits a request when the memory ledger can lend enough bytes to load the model;
otherwise it evicts the runner that was used least recently, or it waits until one becomes idle.
Streaming responses are sent as server-sent events, one chunk per token, and end with a done line.
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is the weather in Paris?<|im_end|>
<|im_start|>assistant
Let me check the weather for you.<|im_end|>
<|im_start|>user
<tool_response>
{"city": "Paris", "weather": "sunny"}
</tool_response><|im_end|>
<|im_start|>assistant
It is sunny in Paris today.<|im_end|>
<|im_start|>system
You are a tiny test model that answers in one sentence.<|im_end|>
<|im_start|>user
Hello there! Please tell me something about the system.<|im_end|>
<|im_start|>assistant
Hello! The system is running, and the model answers every request.<|im_end|>
"""

# --------------------------------------------------------------------------------------------------
# Byte-level BPE (GPT-2 style), with the Qwen2 pre-tokenizer

# llama.cpp's "qwen2" pre-tokenizer regex, with \p{L} written as [^\W\d_] and \p{N} as \d because
# Python's re has no Unicode property classes. The two agree on ASCII text, which is all the
# built-in training text and the reply contain; chat_prompt_tokens() is exact for ASCII only.
_PRETOKENIZE = re.compile(
    r"'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+"
    r"|\d"
    r"| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in _SPECIAL_TOKENS) + ")")


def _byte_to_symbol_table() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character map (printable bytes map to themselves)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return tuple(table[b] for b in range(256))


_BYTE_SYMBOLS = _byte_to_symbol_table()
_SYMBOL_BYTES = {symbol: b for b, symbol in enumerate(_BYTE_SYMBOLS)}


def _to_symbols(text: str) -> str:
    return "".join(_BYTE_SYMBOLS[b] for b in text.encode("utf-8"))


def _pretokenize(text: str) -> list[str]:
    return _PRETOKENIZE.findall(text)


def _train_bpe_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Classic BPE training over pre-tokenized words; ties break on the pair itself, so the result
    depends only on ``text`` and ``n_merges``."""
    words = Counter(
        tuple(_to_symbols(piece))
        for part in _SPECIAL_SPLIT.split(text)
        if part not in _SPECIAL_TOKENS
        for piece in _pretokenize(part)
    )
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged = best[0] + best[1]
        new_words: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return merges


def _bpe_encode_piece(symbols: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Apply merges lowest rank first, leftmost on ties (what llama.cpp and HF tokenizers do)."""
    parts = list(symbols)
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get((parts[i], parts[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def scripted_reply_tokens(reply: str) -> list[str]:
    """The tokens a model scripted with ``reply`` generates, in order (without the final
    ``<|im_end|>``), which are also the ``delta.content`` pieces llama-server streams.

    The reply is cut at pre-tokenizer boundaries and a chunk grows until its text is unique (and
    differs from the chain start), so that a token determines its successor. Special tokens stay
    whole.

    Raises:
        ValueError: the reply is empty, contains a control token, repeats ``<tool_call>`` or
            ``</tool_call>``, or is nothing but the newline the chain starts from.
    """
    if not reply:
        raise ValueError("reply must not be empty")
    pieces: list[str] = []
    for part in _SPECIAL_SPLIT.split(reply):
        if not part:
            continue
        if part in _SPECIAL_TOKENS:
            if part in _CONTROL_TOKENS:
                raise ValueError(f"reply must not contain the control token {part!r}")
            pieces.append(part)
        else:
            pieces.extend(_pretokenize(part))
    used = {_CHAIN_START_TEXT}
    chunks: list[str] = []
    pending = ""  # text whose chunk would repeat an earlier one; it grows until it is new
    for piece in pieces:
        if piece in _SPECIAL_TOKENS:
            if pending:  # text cannot be glued to a special token: join it to the chunk before
                _join_to_previous_chunk(chunks, used, pending)
                pending = ""
            if piece in used:
                raise ValueError(f"the special token {piece!r} may appear only once in a scripted reply")
            chunks.append(piece)
            used.add(piece)
            continue
        pending += piece
        if pending not in used:
            chunks.append(pending)
            used.add(pending)
            pending = ""
    if pending:
        _join_to_previous_chunk(chunks, used, pending)
    return chunks


def _join_to_previous_chunk(chunks: list[str], used: set[str], tail: str) -> None:
    """Append ``tail`` to the last text chunk(s), in place, until the joined text is unique."""
    while True:
        if not chunks or chunks[-1] in _SPECIAL_TOKENS:
            raise ValueError(f"cannot script the reply: the text {tail!r} repeats and has nothing to join")
        last = chunks.pop()
        used.discard(last)
        tail = last + tail
        if tail not in used:
            chunks.append(tail)
            used.add(tail)
            return


@dataclass(frozen=True)
class _ChatVocab:
    tokens: tuple[str, ...]  # as stored in GGUF (byte symbols; specials verbatim)
    types: tuple[int, ...]
    merges: tuple[tuple[str, str], ...]
    chain: tuple[int, ...]  # chain start, reply tokens...; the successor of the last is <|im_end|>
    eos: int
    bos: int


def _build_chat_vocab(reply: str, n_merges: int) -> _ChatVocab:
    tokens: list[str] = list(_BYTE_SYMBOLS)
    types: list[int] = [gguf.TokenType.NORMAL] * 256
    merges = _train_bpe_merges(_BPE_TRAINING_TEXT, n_merges)
    index = {t: i for i, t in enumerate(tokens)}

    def add(token: str, kind: int) -> int:
        if token not in index:
            index[token] = len(tokens)
            tokens.append(token)
            types.append(kind)
        return index[token]

    for a, b in merges:
        add(a + b, gguf.TokenType.NORMAL)
    for token in _CONTROL_TOKENS:
        add(token, gguf.TokenType.CONTROL)
    for token in _USER_DEFINED_TOKENS:
        add(token, gguf.TokenType.USER_DEFINED)
    chain = [index[_to_symbols(_CHAIN_START_TEXT)]]
    for chunk in scripted_reply_tokens(reply):
        if chunk in _SPECIAL_TOKENS:
            chain.append(index[chunk])
        else:
            chain.append(add(_to_symbols(chunk), gguf.TokenType.NORMAL))
    if len(set(chain)) != len(chain):  # scripted_reply_tokens guarantees this
        raise AssertionError(f"scripted chain repeats a token: {chain}")
    return _ChatVocab(
        tokens=tuple(tokens),
        types=tuple(int(t) for t in types),
        merges=tuple(merges),
        chain=tuple(chain),
        eos=index[_IM_END],
        bos=index[_ENDOFTEXT],
    )


def completion_tokens_for(reply: str) -> int:
    """``usage.completion_tokens`` llama-server reports for a scripted reply: its chunks plus the
    end-of-generation token, which llama-server counts."""
    return len(scripted_reply_tokens(reply)) + 1


CHAT_REPLY_COMPLETION_TOKENS = completion_tokens_for(CHAT_REPLY)
TOOL_CALL_REPLY_COMPLETION_TOKENS = completion_tokens_for(TOOL_CALL_REPLY)


def render_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt :data:`CHAT_TEMPLATE` renders for plain text messages (no tools, no tool calls),
    generation prompt included."""
    out = []
    rest = list(messages)
    system = SYSTEM_PROMPT
    if rest and rest[0]["role"] == "system":
        system = rest.pop(0)["content"]
    out.append(f"{_IM_START}system\n{system}{_IM_END}\n")
    for message in rest:
        if message["role"] == "tool":
            raise ValueError("render_chat_prompt handles plain text messages only, not tool results")
        out.append(f"{_IM_START}{message['role']}\n{message['content']}{_IM_END}\n")
    out.append(_GENERATION_PROMPT)
    return "".join(out)


@functools.cache
def _default_merge_ranks() -> Mapping[tuple[str, str], int]:
    return {pair: rank for rank, pair in enumerate(_train_bpe_merges(_BPE_TRAINING_TEXT, _DEFAULT_MERGES))}


def tokenize_chat_text(text: str) -> list[str]:
    """Split ``text`` into the chat vocabulary's tokens as llama.cpp does with special tokens
    parsed (exact for ASCII text). Returns the token texts, byte symbols decoded."""
    ranks = _default_merge_ranks()
    out: list[str] = []
    for part in _SPECIAL_SPLIT.split(text):
        if not part:
            continue
        if part in _SPECIAL_TOKENS:
            out.append(part)
            continue
        for piece in _pretokenize(part):
            for token in _bpe_encode_piece(_to_symbols(piece), ranks):
                out.append(bytes(_SYMBOL_BYTES[s] for s in token).decode("utf-8", errors="replace"))
    return out


def chat_prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """``usage.prompt_tokens`` llama-server reports for a chat request with these plain text
    messages (ASCII content, no tools) on any model :func:`write_chat_model` made with the default
    ``n_merges``."""
    return len(tokenize_chat_text(render_chat_prompt(messages)))


# --------------------------------------------------------------------------------------------------
# Chat model weights

_DEFAULT_MERGES = 200
_FREE_DIMS_MIN = 16
# Logit scales, in units of one output-norm-normalised chain/const activation (see the module doc).
_CHAIN_LOGIT = 60.0
_BANNED_LOGIT = 60.0
# Total norm the layers may add to the free dimensions, relative to the one-hot chain value 1.
_LAYER_BUDGET = 0.3
# Free part of the ordinary token embeddings (norm), and the spread of free-dimension logits.
_FREE_EMBED_NORM = 1.0
_FREE_LOGIT_SPREAD = 4.0

WeightType = Literal["f32", "f16"]


def _is_printable_ascii(token: str, kind: int) -> bool:
    if kind != gguf.TokenType.NORMAL:
        return False
    return all(s in _SYMBOL_BYTES and 0x20 <= _SYMBOL_BYTES[s] <= 0x7E for s in token)


def _chat_tensors(
    vocab: _ChatVocab,
    *,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    seed: int,
) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
    """Yield (name, float32 array) in GGUF order; numpy shapes are (out, in) like PyTorch's."""
    rng = np.random.default_rng(seed)
    n_vocab = len(vocab.tokens)
    n_chain = len(vocab.chain)
    const = n_chain
    free = np.arange(n_chain + 1, n_embd)
    n_free = free.size
    head_dim = n_embd // n_head
    kv_dim = head_dim * n_head_kv
    chain_pos = {token: i for i, token in enumerate(vocab.chain)}

    embd = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for token in range(n_vocab):
        if token in chain_pos:
            embd[token, chain_pos[token]] = 1.0
        else:
            embd[token, const] = 1.0
            embd[token, free] = rng.standard_normal(n_free) * (_FREE_EMBED_NORM / np.sqrt(n_free))
    yield "token_embd.weight", embd

    # Every sublayer writes a vector of norm about gain * sqrt(n_free); share the budget over all
    # 2 * n_layer sublayers, and split each gain evenly between the two matrices that carry it so
    # that f16 keeps its precision.
    gain = _LAYER_BUDGET / np.sqrt(n_free * 2 * n_layer)
    half = float(np.sqrt(gain))

    def gaussian(rows: int, cols: int, scale: float) -> npt.NDArray[np.float32]:
        return np.asarray(rng.standard_normal((rows, cols)) * (scale / np.sqrt(cols)), dtype=np.float32)

    def free_rows_only(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        matrix[: n_chain + 1, :] = 0.0
        return matrix

    ones = np.ones(n_embd, dtype=np.float32)
    for layer in range(n_layer):
        prefix = f"blk.{layer}"
        yield f"{prefix}.attn_norm.weight", ones.copy()
        yield f"{prefix}.attn_q.weight", gaussian(n_head * head_dim, n_embd, 1.0)
        yield f"{prefix}.attn_k.weight", gaussian(kv_dim, n_embd, 1.0)
        yield f"{prefix}.attn_v.weight", gaussian(kv_dim, n_embd, half)
        yield f"{prefix}.attn_output.weight", free_rows_only(gaussian(n_embd, n_head * head_dim, half))
        yield f"{prefix}.ffn_norm.weight", ones.copy()
        yield f"{prefix}.ffn_gate.weight", gaussian(n_ff, n_embd, 1.0)
        yield f"{prefix}.ffn_up.weight", gaussian(n_ff, n_embd, half)
        yield f"{prefix}.ffn_down.weight", free_rows_only(gaussian(n_embd, n_ff, half * 2.0))

    yield "output_norm.weight", ones.copy()

    # After the final RMS norm a one-hot value of 1 (plus the small free part) reads about
    # sqrt(n_embd); ordinary tokens (const 1, free norm 1) read about sqrt(n_embd / 2) on const.
    unit = 1.0 / np.sqrt(n_embd)
    output = rng.standard_normal((n_vocab, n_embd)) * (_FREE_LOGIT_SPREAD * np.sqrt(2.0 / n_embd))
    output[:, : n_chain + 1] = 0.0
    output = output.astype(np.float32)
    for i, token in enumerate(vocab.chain):
        successor = vocab.chain[i + 1] if i + 1 < n_chain else vocab.eos
        output[successor, chain_pos[token]] = _CHAIN_LOGIT * unit
    for token in range(n_vocab):
        if token in chain_pos or not _is_printable_ascii(vocab.tokens[token], vocab.types[token]):
            output[token, const] = -_BANNED_LOGIT * unit * np.sqrt(2.0)
    yield "output.weight", output


def _check_chat_shape(
    n_embd: int, n_layer: int, n_head: int, n_head_kv: int, n_ff: int, n_chain: int
) -> None:
    problems = []
    if n_layer < 1:
        problems.append(f"n_layer must be at least 1 (got {n_layer})")
    if n_head < 1 or n_head_kv < 1 or n_ff < 1:
        problems.append("n_head, n_head_kv and n_ff must be positive")
    elif n_embd % n_head != 0 or (n_embd // n_head) % 2 != 0:
        problems.append(
            f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}) with an even head size (RoPE)"
        )
    elif n_head % n_head_kv != 0:
        problems.append(f"n_head ({n_head}) must be a multiple of n_head_kv ({n_head_kv})")
    if n_embd < n_chain + 1 + _FREE_DIMS_MIN:
        problems.append(
            f"n_embd ({n_embd}) is too small for this reply: it needs {n_chain} chain dimensions, one const "
            f"dimension and at least {_FREE_DIMS_MIN} free ones, so n_embd >= {n_chain + 1 + _FREE_DIMS_MIN}"
        )
    if problems:
        raise ValueError("; ".join(problems))


def write_chat_model(
    path: str | os.PathLike[str],
    *,
    reply: str = CHAT_REPLY,
    name: str = CHAT_MODEL_NAME,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx: int = 4096,
    weight_type: WeightType = "f32",
    seed: int = 0,
    n_merges: int = _DEFAULT_MERGES,
) -> Path:
    """Write a scripted llama-architecture chat model to ``path`` (atomically) and return it.

    Every chat request answers ``reply`` followed by ``<|im_end|>``; see the module docstring.
    Same arguments, same bytes. ``n_embd``/``n_layer``/``n_head``/``n_head_kv``/``n_ff`` set the
    transformer's shape (``n_embd`` must leave room for one dimension per reply token, see
    :func:`scripted_reply_tokens`, plus 17), ``n_ctx`` the trained context length, ``weight_type``
    the type of the 2-D weights (norms stay f32), ``seed`` the random weights (not the script),
    and ``n_merges`` the most BPE merges to learn from the built-in text (it has about 220;
    :func:`chat_prompt_tokens` assumes the default).

    Raises:
        ValueError: the shape cannot hold the reply's chain or is not a valid llama shape, or the
            reply cannot be scripted (see :func:`scripted_reply_tokens`).
    """
    if weight_type not in ("f32", "f16"):
        raise ValueError(f"weight_type must be 'f32' or 'f16', not {weight_type!r}")
    if n_ctx < 1 or n_merges < 0:
        raise ValueError(f"n_ctx must be positive and n_merges not negative (got {n_ctx}, {n_merges})")
    vocab = _build_chat_vocab(reply, n_merges)
    _check_chat_shape(n_embd, n_layer, n_head, n_head_kv, n_ff, len(vocab.chain))
    head_dim = n_embd // n_head

    def write(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_description(f"Generated scripted test model; every chat reply is {reply!r}")
        writer.add_file_type(
            gguf.LlamaFileType.ALL_F32 if weight_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
        )
        writer.add_vocab_size(len(vocab.tokens))
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(list(vocab.tokens))
        writer.add_token_types(list(vocab.types))
        writer.add_token_merges([f"{a} {b}" for a, b in vocab.merges])
        writer.add_bos_token_id(vocab.bos)
        writer.add_eos_token_id(vocab.eos)
        writer.add_pad_token_id(vocab.bos)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)
        tensors = _chat_tensors(
            vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, seed=seed
        )
        for tensor_name, array in tensors:
            if weight_type == "f16" and array.ndim == 2:
                writer.add_tensor(tensor_name, array.astype(np.float16))
            else:
                writer.add_tensor(tensor_name, array)

    return _write_gguf(Path(path), "llama", write)


# --------------------------------------------------------------------------------------------------
# Embedding model (BERT)

_WPM_PREFIX = "\u2581"  # llama.cpp's WPM vocabulary marks word starts, not continuations ("##")
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Words grouped by topic: a word's vector is its topic's direction plus a smaller word-specific part,
# so texts about one topic come out closer than unrelated texts.
_TOPICS: Mapping[str, tuple[str, ...]] = {
    "pets": _words(
        "cat kitten kitty feline dog puppy pet pets animal paw fur purr meow bark tail sits sleeps naps "
        "cute fluffy"
    ),
    "home": _words(
        "mat rug carpet floor sofa couch chair table bed room house home kitchen window door blanket "
        "pillow cozy warm lamp"
    ),
    "finance": _words(
        "stock market shares price investor trading trader bank money economy fell rose sharp profit "
        "loss fund bond dollar inflation crash"
    ),
    "weather": _words(
        "weather rain sunny cloudy forecast temperature snow storm wind cold hot humid fog thunder sky "
        "degrees celsius umbrella wet dry"
    ),
    "computing": _words(
        "computer software code program server model container network socket engine runtime kernel "
        "memory cpu gpu file disk linux python test"
    ),
    "food": _words(
        "food bread cheese apple soup pizza pasta coffee tea cake eat eats dinner lunch breakfast cook "
        "recipe sweet salt sugar"
    ),
    "travel": _words(
        "paris london berlin rome city travel train airport flight hotel trip map road car bus station "
        "ticket tour visit street"
    ),
}
_FUNCTION_WORDS = _words(
    "a an the is are was were be on in at of to and or but with for from by it this that these those "
    "i you he she we they my your his her our their not no yes very so too all some what how why when "
    "where who which do does did has have had will can up down out over under today now again hello"
)
_SUFFIXES = ("s", "es", "ed", "ing", "ly", "er", "est")
_TOPIC_WEIGHT = 0.8  # share of a topic word's vector that points in the topic direction


def _build_wpm_vocab() -> tuple[list[str], list[int], dict[str, str]]:
    """Tokens (with the word-start marker), token types, and each topic word's topic."""
    tokens = list(_BERT_SPECIALS)
    types = [int(gguf.TokenType.CONTROL)] * len(_BERT_SPECIALS)
    topic_of: dict[str, str] = {}
    seen: set[str] = set(tokens)

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            tokens.append(token)
            types.append(int(gguf.TokenType.NORMAL))

    for topic, words in _TOPICS.items():
        for word in words:
            topic_of.setdefault(word, topic)
            add(_WPM_PREFIX + word)
    for word in _FUNCTION_WORDS:
        add(_WPM_PREFIX + word)
    # Single characters, as word starts and as continuations, so no ASCII word is ever [UNK].
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        add(_WPM_PREFIX + ch)
        add(ch)
    for ch in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~":
        add(_WPM_PREFIX + ch)
    for suffix in _SUFFIXES:
        add(suffix)
    return tokens, types, topic_of


def _wpm_words(text: str) -> list[str]:
    """llama.cpp's WPM pre-processing: NFD, drop accents and control characters, lowercase, split
    on whitespace, and make every punctuation mark (and ASCII symbol) a word of its own."""
    words: list[str] = [""]
    for ch in unicodedata.normalize("NFD", text):
        category = unicodedata.category(ch)
        if ch.isspace():
            if words[-1]:
                words.append("")
            continue
        if ch == "\ufffd" or category in ("Cc", "Cf", "Mn"):
            continue
        ch = ch.lower()
        if category.startswith("P") or (ord(ch) < 0x7F and category.startswith("S")):
            if words[-1]:
                words.append("")
            words[-1] = ch
            words.append("")
        else:
            words[-1] += ch
    return [w for w in words if w]


@functools.cache
def _wpm_vocab_index() -> tuple[Mapping[str, int], int]:
    tokens, _, _ = _build_wpm_vocab()
    return {t: i for i, t in enumerate(tokens)}, max(len(t) for t in tokens)


def embedding_tokens(text: str) -> list[str]:
    """Tokens llama-server feeds :func:`write_embedding_model`'s model for ``text``, [CLS] and
    [SEP] included (greedy longest match per word, ``[UNK]`` for a word that does not match).
    Exact for ASCII text; ``len()`` of it is the text's share of ``usage.prompt_tokens``."""
    index, max_len = _wpm_vocab_index()
    out = ["[CLS]"]
    for word in _wpm_words(text):
        marked = _WPM_PREFIX + word
        pieces: list[str] = []
        start = 0
        while start < len(marked):
            for end in range(min(len(marked), start + max_len), start, -1):
                if marked[start:end] in index:
                    pieces.append(marked[start:end])
                    start = end
                    break
            else:
                pieces = ["[UNK]"]
                break
        out.extend(pieces)
    out.append("[SEP]")
    return out


def write_embedding_model(
    path: str | os.PathLike[str],
    *,
    name: str = EMBED_MODEL_NAME,
    n_embd: int = EMBEDDING_DIM,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 256,
    seed: int = 0,
) -> Path:
    """Write a tiny BERT embedding model (WordPiece vocabulary, mean pooling) and return ``path``.

    Serve it with ``llama-server --embeddings``. Vectors are deterministic; texts that share a
    topic (pets, home, finance, weather, computing, food, travel) have a higher cosine than
    unrelated texts. Position embeddings are zero, so word order does not matter, and the
    attention/FFN sublayers are small perturbations around "mix in the sentence mean", so the
    pooled vector stays close to a topic-weighted bag of words.

    Raises:
        ValueError: ``n_embd`` is not a multiple of ``n_head``.
    """
    if n_head < 1 or n_embd % n_head != 0:
        raise ValueError(f"n_embd ({n_embd}) must be a positive multiple of n_head ({n_head})")
    if n_layer < 1 or n_ff < 1:
        raise ValueError("n_layer and n_ff must be positive")
    rng = np.random.default_rng(seed)
    tokens, types, topic_of = _build_wpm_vocab()
    n_vocab = len(tokens)
    ids = {t: i for i, t in enumerate(tokens)}

    topic_directions = {topic: rng.standard_normal(n_embd) for topic in _TOPICS}
    embd = rng.standard_normal((n_vocab, n_embd))
    for word, topic in topic_of.items():
        own = embd[ids[_WPM_PREFIX + word]]
        embd[ids[_WPM_PREFIX + word]] = _TOPIC_WEIGHT * topic_directions[topic] + (1 - _TOPIC_WEIGHT) * own
    # [CLS], [SEP] etc. embed as constant vectors: the embedding LayerNorm maps them to zero, so
    # they carry no meaning of their own and pick up the sentence mean in the first attention.
    for special in _BERT_SPECIALS:
        embd[ids[special]] = 1.0

    def f32(array: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return np.asarray(array, dtype=np.float32)

    def near_identity(scale: float, noise: float) -> npt.NDArray[np.float32]:
        return f32(np.eye(n_embd) * scale + rng.standard_normal((n_embd, n_embd)) * (noise / np.sqrt(n_embd)))

    def write(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_description("Generated deterministic test embedding model (topic-weighted bag of words)")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(EMBEDDING_CONTEXT_LENGTH)
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(n_ff)
        writer.add_block_count(n_layer)
        writer.add_head_count(n_head)
        writer.add_layer_norm_eps(1e-12)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_type_count(2)
        writer.add_bos_token_id(ids["[CLS]"])
        writer.add_sep_token_id(ids["[SEP]"])
        writer.add_unk_token_id(ids["[UNK]"])
        writer.add_pad_token_id(ids["[PAD]"])
        writer.add_mask_token_id(ids["[MASK]"])
        writer.add_add_bos_token(True)
        writer.add_add_sep_token(True)
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", True)

        zeros = np.zeros(n_embd, dtype=np.float32)
        ones = np.ones(n_embd, dtype=np.float32)
        writer.add_tensor("token_embd.weight", f32(embd))
        writer.add_tensor("token_types.weight", f32(np.zeros((2, n_embd))))
        writer.add_tensor("position_embd.weight", f32(np.zeros((EMBEDDING_CONTEXT_LENGTH, n_embd))))
        writer.add_tensor("token_embd_norm.weight", ones)
        writer.add_tensor("token_embd_norm.bias", zeros)
        for layer in range(n_layer):
            prefix = f"blk.{layer}"
            writer.add_tensor(f"{prefix}.attn_q.weight", near_identity(0.0, 1.0))
            writer.add_tensor(f"{prefix}.attn_q.bias", zeros)
            writer.add_tensor(f"{prefix}.attn_k.weight", near_identity(0.0, 1.0))
            writer.add_tensor(f"{prefix}.attn_k.bias", zeros)
            writer.add_tensor(f"{prefix}.attn_v.weight", near_identity(1.0, 0.1))
            writer.add_tensor(f"{prefix}.attn_v.bias", zeros)
            writer.add_tensor(f"{prefix}.attn_output.weight", near_identity(0.5, 0.05))
            writer.add_tensor(f"{prefix}.attn_output.bias", zeros)
            writer.add_tensor(f"{prefix}.attn_output_norm.weight", ones)
            writer.add_tensor(f"{prefix}.attn_output_norm.bias", zeros)
            up = rng.standard_normal((n_ff, n_embd)) / np.sqrt(n_embd)
            down = rng.standard_normal((n_embd, n_ff)) * (0.1 / np.sqrt(n_ff))
            writer.add_tensor(f"{prefix}.ffn_up.weight", f32(up))
            writer.add_tensor(f"{prefix}.ffn_up.bias", f32(np.zeros(n_ff)))
            writer.add_tensor(f"{prefix}.ffn_down.weight", f32(down))
            writer.add_tensor(f"{prefix}.ffn_down.bias", zeros)
            writer.add_tensor(f"{prefix}.layer_output_norm.weight", ones)
            writer.add_tensor(f"{prefix}.layer_output_norm.bias", zeros)

    return _write_gguf(Path(path), "bert", write)


# --------------------------------------------------------------------------------------------------
# Writing


def _write_gguf(path: Path, arch: str, fill: Callable[[gguf.GGUFWriter], None]) -> Path:
    """Write to a temporary file next to ``path`` and rename it into place, so a reader never sees
    a half-written model and an interrupted run leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class TestModelSet:
    """The four generated models written by :func:`write_all`."""

    __test__ = False  # not a pytest test class, despite the name

    chat: Path
    chat_tool: Path
    embed: Path
    chat_large: Path

    def __iter__(self) -> Iterator[Path]:
        return iter((self.chat, self.chat_tool, self.embed, self.chat_large))


# chat-large: wide and deep enough to weigh about 100 MB in f16 (51 M parameters).
LARGE_CHAT_SHAPE: Mapping[str, int] = {
    "n_embd": 768,
    "n_layer": 8,
    "n_head": 12,
    "n_head_kv": 4,
    "n_ff": 2048,
}


def write_all(directory: str | os.PathLike[str]) -> TestModelSet:
    """Write ``chat.gguf``, ``chat-tool.gguf``, ``embed.gguf`` and ``chat-large.gguf`` into
    ``directory`` (created if missing) and return their paths."""
    root = Path(directory)
    return TestModelSet(
        chat=write_chat_model(root / "chat.gguf", reply=CHAT_REPLY, name=CHAT_MODEL_NAME),
        chat_tool=write_chat_model(root / "chat-tool.gguf", reply=TOOL_CALL_REPLY, name=TOOL_CHAT_MODEL_NAME),
        embed=write_embedding_model(root / "embed.gguf"),
        chat_large=write_chat_model(
            root / "chat-large.gguf",
            reply=CHAT_REPLY,
            name=LARGE_CHAT_MODEL_NAME,
            weight_type="f16",
            **LARGE_CHAT_SHAPE,
        ),
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """``hack/make-test-models DIR``: write the four models and print name, size, sha256, time."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: make-test-models DIR", file=sys.stderr)
        return 2
    start = time.perf_counter()
    models = write_all(args[0])
    elapsed = time.perf_counter() - start
    for path in models:
        print(f"{path}\t{path.stat().st_size}\t{sha256_file(path)}")
    print(f"wrote {len(tuple(models))} models in {elapsed:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
