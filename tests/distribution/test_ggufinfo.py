"""GGUF metadata reading: values, DMR's config strings, shards, and hostile input (fuzzed)."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelrunner.distribution import InvalidGGUF, discover_shards, read_gguf, read_gguf_shards
from modelrunner.distribution.ggufinfo import format_bytes, format_parameters

from tests.distribution.helpers import write_gguf, write_shards


def test_reads_values_needed_by_config_and_memory_estimate(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", extra={"small.list": [1, 2, 3], "flag": True, "ratio": 0.25})
    info = read_gguf(path)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.name == "tiny"
    assert info.quantization == "F16"
    assert info.tensor_count == 3
    assert info.parameter_count == 64 * 64 * 2 + 64
    assert info.tensor_bytes == 64 * 64 * 2 * 2 + 64 * 4
    assert (info.context_length, info.block_count, info.embedding_length) == (2048, 2, 64)
    assert (info.head_count, info.head_count_kv) == (4, 2)
    assert info.vocab_size == 100
    assert info.chat_template is not None and "messages" in info.chat_template
    assert info.context_size == 2048
    # DMR's string map: ints decimal, floats %f, bools, short arrays joined, long arrays left out.
    assert info.metadata["llama.context_length"] == "2048"
    assert info.metadata["llama.rope.freq_base"] == "10000.000000"
    assert info.metadata["ratio"] == "0.250000"
    assert info.metadata["flag"] == "true"
    assert info.metadata["small.list"] == "1, 2, 3"
    assert "tokenizer.ggml.tokens" not in info.metadata  # 100 items > 50
    assert info.metadata["general.architecture"] == "llama"


def test_agrees_with_gguf_reader(tmp_path: Path) -> None:
    """The gguf package's own reader is the oracle for every key/value and tensor total."""
    path = write_gguf(tmp_path / "m.gguf", extra={"small.list": [1.5, 2.5], "s": "x"})
    info = read_gguf(path)
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    for key, field in fields.items():
        if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 50:
            assert key not in info.metadata
            continue
        value = field.contents()
        if field.types[0] == gguf.GGUFValueType.FLOAT32:
            assert info.metadata[key] == f"{value:f}"
        elif field.types[0] == gguf.GGUFValueType.ARRAY:
            items = (f"{v:f}" if isinstance(v, float) else str(v) for v in value)
            assert info.metadata[key] == ", ".join(items)
        else:
            assert info.metadata[key] == str(value)
    assert set(info.metadata) <= set(fields)
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)


def test_generated_test_models(test_models) -> None:  # type: ignore[no-untyped-def]
    chat = read_gguf(test_models.chat)
    reader = gguf.GGUFReader(test_models.chat)
    assert chat.architecture == "llama"
    assert chat.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert chat.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert chat.chat_template
    embed = read_gguf(test_models.embed)
    assert embed.architecture == "bert"
    assert embed.embedding_length


def test_quantization_guessed_from_tensors_when_file_type_missing(tmp_path: Path) -> None:
    tensors = {
        "blk.0.attn_q.weight": np.ones((64, 64), dtype=np.float16),
        "blk.0.attn_k.weight": np.ones((64, 64), dtype=np.float16),
        "blk.0.norm.weight": np.ones(64, dtype=np.float32),
    }
    info = read_gguf(write_gguf(tmp_path / "m.gguf", tensors=tensors, file_type=None))
    assert info.file_type is None
    assert info.quantization == "F16"


def test_quantization_names_follow_llama_cpp(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "m.gguf", file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M)))
    assert info.quantization == "Q4_K_M"
    info = read_gguf(write_gguf(tmp_path / "f.gguf", file_type=int(gguf.LlamaFileType.ALL_F32)))
    assert info.quantization == "F32"


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0"), (999, "999"), (1000, "1K"), (361_821_120, "361.82M"), (8_030_261_248, "8.03B"),
     (4100, "4.10K"), (1_500_000_000_000, "1.50T")],
)
def test_parameter_labels_match_gguf_parser_go(count: int, text: str) -> None:
    assert format_parameters(count) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0B"), (512, "512B"), (8192, "8KiB"), (268_800_000, "256.35MiB"), (1_050_000_000, "1.05GB"),
     (4_920_000_000, "4.58GiB")],
)
def test_size_labels_match_gguf_parser_go(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_shards_are_discovered_and_summed(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, 3)
    assert discover_shards(paths[1]) == paths
    info = read_gguf_shards(discover_shards(paths[0]))
    assert info.shard_count == 3
    assert info.tensor_count == 3
    assert info.parameter_count == 3 * 32 * 32


def test_missing_shard_is_an_error(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, 3)
    paths[2].unlink()
    with pytest.raises(InvalidGGUF, match="missing shard"):
        discover_shards(paths[0])


def test_single_file_is_its_own_shard_list(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf")
    assert discover_shards(path) == [path]


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "v.gguf").read_bytes()


def _check_clean(path: Path) -> None:
    """read_gguf either succeeds or raises InvalidGGUF: nothing else escapes."""
    try:
        read_gguf(path)
    except InvalidGGUF as exc:
        assert str(path) in str(exc)


@pytest.mark.parametrize("cut", [0, 3, 8, 23, 24, 40, 200, -1])
def test_truncated_files_give_clear_errors(tmp_path: Path, valid_bytes: bytes, cut: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(valid_bytes[:cut] if cut >= 0 else valid_bytes[:-1])
    with pytest.raises(InvalidGGUF) as info:
        read_gguf(path)
    assert info.value.status_hint == 400


def test_hostile_counts_fail_fast(tmp_path: Path, valid_bytes: bytes) -> None:
    path = tmp_path / "h.gguf"
    # Claim 2**62 keys: must be refused before any loop runs.
    path.write_bytes(valid_bytes[:16] + struct.pack("<Q", 2**62) + valid_bytes[24:])
    with pytest.raises(InvalidGGUF, match=r"cannot fit|more than"):
        read_gguf(path)


def test_hostile_array_length_fails_fast(tmp_path: Path) -> None:
    # magic, version 3, 0 tensors, 1 key: "a" = array of uint8 with 2**40 items but no data.
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    kv = struct.pack("<Q", 1) + b"a" + struct.pack("<I", 9) + struct.pack("<IQ", 0, 2**40)
    path = tmp_path / "a.gguf"
    path.write_bytes(header + kv)
    with pytest.raises(InvalidGGUF, match="more than"):
        read_gguf(path)


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(InvalidGGUF, match="magic"):
        read_gguf(path)
    path.write_bytes(b"")
    with pytest.raises(InvalidGGUF, match="empty"):
        read_gguf(path)
    with pytest.raises(InvalidGGUF, match="cannot read"):
        read_gguf(tmp_path / "missing.gguf")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutations_never_crash(tmp_path: Path, valid_bytes: bytes, data: st.DataObject) -> None:
    mutated = bytearray(valid_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(mutated))
    _check_clean(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=512), version=st.sampled_from([2, 3]),
       counts=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)))
def test_fuzz_random_headers_never_crash(tmp_path: Path, body: bytes, version: int,
                                         counts: tuple[int, int]) -> None:
    path = tmp_path / "rand.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, *counts) + body)
    _check_clean(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value_type=st.integers(0, 20), item_type=st.integers(0, 20), length=st.integers(0, 2**64 - 1),
       tail=st.binary(max_size=64))
def test_fuzz_hostile_key_values(tmp_path: Path, value_type: int, item_type: int, length: int,
                                 tail: bytes) -> None:
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    kv = struct.pack("<Q", 3) + b"key" + struct.pack("<I", value_type) + struct.pack("<IQ", item_type, length)
    path = tmp_path / "kv.gguf"
    path.write_bytes(header + kv + tail)
    _check_clean(path)
