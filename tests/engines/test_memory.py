"""The llama.cpp memory estimate (pure) against llama-server b11312's own buffer reports.

The expected numbers are what llama-server printed ("KV buffer size", "compute buffer size") for
synthetic llama models of these shapes, run bare with these flags (recorded while writing the
estimate; the integration test re-checks the totals against real runners).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from modelrunner.engines import MemoryEstimate, Mode
from modelrunner.engines.gguf_facts import GgufFacts, GgufReadError, read_gguf_facts
from modelrunner.engines.llamacpp.argv import LaunchSettings, resolve_launch
from modelrunner.engines.llamacpp.memory import (
    BufferReport,
    corrected_estimate,
    estimate_llamacpp,
    parse_buffer_report,
)

MIB = 1 << 20


def facts(embd: int, ff: int, heads: int, kv_heads: int, layers: int, vocab: int, arch: str = "llama",
          weights: int = 0, token_embd: int = 0) -> GgufFacts:
    return GgufFacts(
        architecture=arch, n_layer=layers, n_embd=embd, n_head=(heads,) * layers,
        n_head_kv=(kv_heads,) * layers, head_dim_k=None, head_dim_v=None, n_ctx_train=4096,
        n_vocab=vocab, n_ff=ff, n_expert=0, weights_bytes=weights, token_embd_bytes=token_embd,
        file_bytes=weights,
    )


def settings(flags: str, mode: Mode = Mode.COMPLETION, **kwargs: Any) -> LaunchSettings:
    return resolve_launch(mode=mode, alias="m", context_size=None, packaged_context_size=None,
                          trained_context=4096, parallel=None, runtime_flags=flags.split(), threads=2,
                          gpu_available=kwargs.pop("gpu_available", False), **kwargs)


# (shape, flags, mode, KV MiB, compute MiB) as llama-server b11312 reported them.
RECORDED = [
    ((64, 128, 4, 2, 2, 512), "-np 1 -c 4096", Mode.COMPLETION, 1.00, 5.01),
    ((64, 128, 4, 2, 2, 512), "-np 4 -c 16384", Mode.COMPLETION, 4.00, 5.01),
    ((64, 128, 4, 2, 2, 512), "-np 1 -c 4096 -fa off", Mode.COMPLETION, 1.00, 40.76),
    ((64, 128, 4, 2, 2, 32000), "-np 1 -c 4096", Mode.EMBEDDING, 1.00, 62.75),
    ((64, 128, 4, 2, 2, 512), "-np 2 -c 1024 -ub 256", Mode.COMPLETION, 0.25, 0.76),
    ((256, 512, 8, 8, 2, 32000), "-np 1 -c 4096", Mode.COMPLETION, 8.00, 8.01),
    ((256, 512, 8, 8, 2, 32000), "-np 1 -c 4096 -fa off", Mode.COMPLETION, 8.00, 75.51),
    ((256, 512, 8, 8, 2, 32000), "-np 1 -c 4096", Mode.EMBEDDING, 8.00, 67.00),
    ((256, 512, 8, 8, 2, 32000), "-np 2 -c 1024 -ub 256", Mode.COMPLETION, 2.00, 2.26),
    ((512, 1536, 8, 2, 4, 8000), "-np 1 -c 4096", Mode.COMPLETION, 8.00, 17.01),
    ((512, 1536, 8, 2, 4, 8000), "-np 1 -c 4096 -fa off", Mode.COMPLETION, 8.00, 77.51),
    ((512, 1536, 8, 2, 4, 8000), "-np 1 -c 4096", Mode.EMBEDDING, 8.00, 17.63),
    ((512, 1536, 8, 2, 4, 8000), "-np 2 -c 1024 -ub 256", Mode.COMPLETION, 2.00, 6.76),
    ((768, 2048, 12, 4, 8, 422), "-np 1 -c 4096", Mode.COMPLETION, 32.00, 22.01),
    ((768, 2048, 12, 4, 8, 422), "-np 2 -c 8192", Mode.COMPLETION, 64.00, 22.01),
]


@pytest.mark.parametrize(("shape", "flags", "mode", "kv_mib", "compute_mib"), RECORDED)
def test_kv_is_exact_and_compute_is_close(
    shape: tuple[int, ...], flags: str, mode: Mode, kv_mib: float, compute_mib: float
) -> None:
    breakdown = estimate_llamacpp(facts(*shape), settings(flags, mode))
    assert breakdown.kv_cache / MIB == pytest.approx(kv_mib, rel=0.01)
    assert breakdown.compute / MIB == pytest.approx(compute_mib, rel=0.25)


def test_kv_grows_with_slots_when_not_unified_and_not_when_unified() -> None:
    shape = facts(768, 2048, 12, 4, 8, 422)
    one = estimate_llamacpp(shape, settings("-c 4096"))
    four = estimate_llamacpp(shape, resolve_launch(
        mode=Mode.COMPLETION, alias="m", context_size=4096, packaged_context_size=None, trained_context=4096,
        parallel=4, runtime_flags=(), threads=2, gpu_available=False))
    unified = estimate_llamacpp(shape, resolve_launch(
        mode=Mode.COMPLETION, alias="m", context_size=4096, packaged_context_size=None, trained_context=4096,
        parallel=4, runtime_flags=("--kv-unified",), threads=2, gpu_available=False))
    assert four.kv_cache == 4 * one.kv_cache
    assert unified.kv_cache == one.kv_cache


def test_gqa_and_cache_type_shrink_the_kv() -> None:
    mha = estimate_llamacpp(facts(512, 1536, 8, 8, 4, 8000), settings("-c 4096"))
    gqa = estimate_llamacpp(facts(512, 1536, 8, 2, 4, 8000), settings("-c 4096"))
    q8 = estimate_llamacpp(facts(512, 1536, 8, 2, 4, 8000), settings("-c 4096 -ctk q8_0 -ctv q8_0"))
    assert mha.kv_cache == 4 * gqa.kv_cache
    assert q8.kv_cache == pytest.approx(gqa.kv_cache * (34 / 32) / 2)


def test_encoder_only_models_have_no_kv_cache() -> None:
    bert = estimate_llamacpp(facts(128, 256, 4, 4, 2, 322, arch="bert"), settings("-c 512", Mode.EMBEDDING))
    assert bert.kv_cache == 0
    assert bert.compute > 0


def test_weights_and_overhead_are_counted_in_ram() -> None:
    breakdown = estimate_llamacpp(facts(64, 128, 4, 2, 2, 512, weights=100 * MIB), settings("-c 512"))
    estimate = breakdown.to_estimate()
    assert estimate == MemoryEstimate(ram=breakdown.host)
    assert estimate.total() == (breakdown.weights + breakdown.kv_cache + breakdown.compute
                                + breakdown.output + breakdown.overhead)
    assert breakdown.weights == 100 * MIB
    assert 10 * MIB < breakdown.overhead < 32 * MIB


def test_offloaded_layers_go_to_the_gpus() -> None:
    shape = facts(768, 2048, 12, 4, 8, 422, weights=100 * MIB, token_embd=MIB)
    cpu = estimate_llamacpp(shape, settings("-c 4096"))
    gpu = estimate_llamacpp(shape, settings("-c 4096", gpu_available=True), gpus=("cuda:0", "cuda:1"))
    estimate = gpu.to_estimate()
    assert set(estimate.vram) == {"cuda:0", "cuda:1"}
    assert estimate.vram["cuda:0"] == estimate.vram["cuda:1"] > 0
    assert gpu.weights == MIB  # the token embeddings stay in host memory
    assert gpu.kv_cache == 0
    assert estimate.ram < cpu.to_estimate().ram
    # Half the layers offloaded: half the KV stays on the host.
    half = estimate_llamacpp(shape, settings("-c 4096 -ngl 4", gpu_available=True), gpus=("cuda:0",))
    assert half.kv_cache == cpu.kv_cache // 2


BUFFER_LOG = """\
0.00.010.197 I load_tensors:   CPU_Mapped model buffer size =     0.53 MiB
0.00.010.348 I llama_context:        CPU  output buffer size =     0.12 MiB
0.00.010.391 I llama_kv_cache:        CPU KV buffer size =     1.00 MiB
0.00.011.000 I sched_reserve:        CPU compute buffer size =     4.00 MiB
0.00.012.137 I sched_reserve:        CPU compute buffer size =     5.01 MiB
0.00.012.500 I load_tensors:        CUDA0 model buffer size =  1000.00 MiB
0.00.012.600 I llama_kv_cache:      CUDA0 KV buffer size =   256.00 MiB
0.00.013.091 I slot   load_model: id  0 | task -1 | new slot, n_ctx = 4096
"""


def test_parse_buffer_report() -> None:
    report = parse_buffer_report(BUFFER_LOG.splitlines())
    assert report.complete
    assert report.buffers[("compute", "CPU")] == int(5.01 * MIB)  # the later reservation wins
    assert report.total("kv") == int(257 * MIB)
    assert report.by_device() == {
        "": int(0.53 * MIB) + int(0.12 * MIB) + MIB + int(5.01 * MIB),
        "CUDA0": 1256 * MIB,
    }
    assert not parse_buffer_report(["nothing here"]).complete


def test_corrected_estimate_uses_the_report_and_keeps_the_overhead() -> None:
    breakdown = estimate_llamacpp(facts(64, 128, 4, 2, 2, 512), settings("-c 4096"))
    report = parse_buffer_report(BUFFER_LOG.splitlines())
    corrected = corrected_estimate(breakdown, report, {"CUDA0": "cuda:0"})
    assert corrected.ram == report.by_device()[""] + breakdown.overhead
    assert dict(corrected.vram) == {"cuda:0": 1256 * MIB}
    assert corrected_estimate(breakdown, BufferReport({})) == breakdown.to_estimate()


def test_read_facts_of_the_generated_models(test_models: Any) -> None:
    chat = read_gguf_facts(test_models.chat)
    assert (chat.architecture, chat.n_layer, chat.n_embd) == ("llama", 2, 64)
    assert chat.n_head_kv == (2, 2) and chat.n_ctx_train == 4096
    assert 0 < chat.weights_bytes < chat.file_bytes
    large = read_gguf_facts(test_models.chat_large)
    assert (large.n_layer, large.n_embd, large.n_ff) == (8, 768, 2048)
    assert large.weights_bytes > 90 * MIB
    embed = read_gguf_facts(test_models.embed)
    assert embed.architecture == "bert" and embed.n_ctx_train == 512


def test_per_layer_head_counts_from_the_metadata() -> None:
    from modelrunner.distribution import GGUFInfo
    from modelrunner.engines.gguf_facts import facts_from_info

    info = GGUFInfo(
        path="m.gguf", version=3, architecture="gemma3", name="m", file_type=1, quantization="F16",
        tensor_count=10, parameter_count=1000, tensor_bytes=2000,
        metadata={"gemma3.attention.head_count_kv": "4, 4, 0, 2", "gemma3.expert_count": "8"},
        context_length=8192, block_count=4, embedding_length=64, feed_forward_length=256, head_count=8,
        head_count_kv=4, vocab_size=10,
    )
    got = facts_from_info(info, 2100)
    assert got.n_head == (8, 8, 8, 8)
    assert got.n_head_kv == (4, 4, 0, 2)
    assert got.n_expert == 8
    assert got.token_embd_bytes == 2000 * 10 * 64 // 1000
    assert got.n_embd_k_gqa(3) == 8 * 2  # head_dim 64 / 8 heads, 2 KV heads
    with pytest.raises(GgufReadError, match="block_count"):
        facts_from_info(GGUFInfo(path="x", version=3, architecture="llama", name="", file_type=None,
                                 quantization="", tensor_count=0, parameter_count=0, tensor_bytes=0,
                                 metadata={}), 0)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf file" * 10])
def test_unreadable_files_raise_a_typed_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GgufReadError):
        read_gguf_facts(path)
    with pytest.raises(GgufReadError, match="cannot read"):
        read_gguf_facts(tmp_path / "missing.gguf")


def test_truncated_model_is_refused(tmp_path: Path, test_models: Any) -> None:
    data = Path(test_models.chat).read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GgufReadError):
        read_gguf_facts(path)
