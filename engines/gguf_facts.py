"""The few GGUF facts the memory estimate needs, from distribution/'s GGUF header reader.

distribution/'s reader scans the header without materialising the vocabulary (0.3 s for a 150k
token vocabulary, where ``gguf.GGUFReader`` took 16 s on the same busy machine) and checks tensor
bounds, so a truncated file is refused here, before any engine starts. Results are cached by
(path, size, mtime). A sharded model (``*-00001-of-00003.gguf``) is summed over its shards.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelrunner.distribution import GGUFInfo, InvalidGGUF, discover_shards, read_gguf_shards

__all__ = ["GgufFacts", "GgufReadError", "read_gguf_facts"]


class GgufReadError(ValueError):
    """The file is not a GGUF model we can read."""


@dataclass(frozen=True)
class GgufFacts:
    """Architecture facts for one model, per llama.cpp's naming (``<arch>.block_count``, ...)."""

    architecture: str
    n_layer: int
    n_embd: int
    n_head: tuple[int, ...]  # per layer (one value repeated when the model gives a scalar)
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int | None  # ``<arch>.attention.key_length`` when given
    head_dim_v: int | None
    n_ctx_train: int | None
    n_vocab: int
    n_ff: int
    n_expert: int
    weights_bytes: int  # tensor data over all shards
    token_embd_bytes: int  # kept in host memory by llama.cpp even when layers are offloaded
    file_bytes: int

    def n_embd_k_gqa(self, layer: int) -> int:
        head_dim = self.head_dim_k or self.n_embd // max(1, self.n_head[layer])
        return head_dim * self.n_head_kv[layer]

    def n_embd_v_gqa(self, layer: int) -> int:
        head_dim = self.head_dim_v or self.n_embd // max(1, self.n_head[layer])
        return head_dim * self.n_head_kv[layer]


def read_gguf_facts(path: Path) -> GgufFacts:
    """Read the facts for the GGUF file at ``path`` (any shard of a split model). Blocking.

    Raises:
        GgufReadError: missing file or shard, not GGUF, truncated, or no architecture keys.
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise GgufReadError(f"cannot read GGUF file {path}: {exc.strerror}") from exc
    return _read_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_cached(path: str, size: int, mtime_ns: int) -> GgufFacts:
    del mtime_ns  # part of the cache key only
    try:
        shards = discover_shards(path)
        info = read_gguf_shards(shards)
    except InvalidGGUF as exc:
        raise GgufReadError(str(exc)) from exc
    file_bytes = size if len(shards) == 1 else sum(p.stat().st_size for p in shards)
    return facts_from_info(info, file_bytes)


def facts_from_info(info: GGUFInfo, file_bytes: int) -> GgufFacts:
    """Pure: GgufFacts from distribution's GGUFInfo.

    Raises:
        GgufReadError: the architecture keys llama.cpp needs are missing.
    """
    arch = info.architecture
    n_layer = info.block_count or 0
    n_embd = info.embedding_length or 0
    if not arch or n_layer <= 0 or n_embd <= 0:
        raise GgufReadError(
            f"{info.path} lacks general.architecture / <arch>.block_count / <arch>.embedding_length"
        )
    metadata = info.metadata
    n_head = _per_layer(metadata, f"{arch}.attention.head_count", n_layer)
    n_head = n_head or (info.head_count or 1,) * n_layer
    n_head_kv = _per_layer(metadata, f"{arch}.attention.head_count_kv", n_layer) or (
        (info.head_count_kv,) * n_layer if info.head_count_kv else n_head
    )
    n_vocab = info.vocab_size or 0
    # The token embedding's share of the weights (its exact size is not in GGUFInfo).
    token_embd = 0
    if info.parameter_count > 0:
        token_embd = min(info.tensor_bytes, info.tensor_bytes * n_vocab * n_embd // info.parameter_count)
    return GgufFacts(
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=info.key_length or None,
        head_dim_v=info.value_length or None,
        n_ctx_train=info.context_length or None,
        n_vocab=n_vocab,
        n_ff=info.feed_forward_length or 0,
        n_expert=_int(metadata.get(f"{arch}.expert_count")) or 0,
        weights_bytes=info.tensor_bytes,
        token_embd_bytes=token_embd,
        file_bytes=file_bytes,
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _per_layer(metadata: Mapping[str, str], key: str, n_layer: int) -> tuple[int, ...]:
    """A per-layer list (``"4, 4, 0, 4"``) or a scalar repeated; () when absent or unreadable."""
    text = metadata.get(key)
    if not text:
        return ()
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        return ()
    if len(values) == 1:
        return (values[0],) * n_layer
    values += [values[-1]] * (n_layer - len(values))
    return tuple(values[:n_layer])
