"""Small GGUF files and models for distribution tests (written with gguf.GGUFWriter)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str = "tiny",
    tensors: Mapping[str, np.ndarray] | None = None,
    file_type: int | None = int(gguf.LlamaFileType.MOSTLY_F16),
    context_length: int | None = 2048,
    extra: Mapping[str, object] | None = None,
    seed: int = 0,
) -> Path:
    """A valid GGUF file; with ``seed`` the tensor bytes (and so the digest) differ."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    if context_length is not None:
        writer.add_context_length(context_length)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    writer.add_token_list([f"t{i}" for i in range(100)])
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    for key, value in (extra or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_int32(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)  # type: ignore[arg-type]
    if tensors is None:
        tensors = {
            "blk.0.attn_q.weight": rng.random((64, 64)).astype(np.float16),
            "blk.1.attn_q.weight": rng.random((64, 64)).astype(np.float16),
            "output_norm.weight": rng.random(64).astype(np.float32),
        }
    for tensor_name, data in tensors.items():
        writer.add_tensor(tensor_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_shards(directory: Path, count: int, prefix: str = "model") -> list[Path]:
    """A split model: ``<prefix>-0000i-of-0000N.gguf``, each with one tensor."""
    rng = np.random.default_rng(count)
    paths = []
    for i in range(1, count + 1):
        path = directory / f"{prefix}-{i:05d}-of-{count:05d}.gguf"
        write_gguf(path, tensors={f"blk.{i}.ffn_up.weight": rng.random((32, 32)).astype(np.float16)},
                   extra={"split.no": i - 1, "split.count": count})
        paths.append(path)
    return paths
