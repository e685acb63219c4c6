"""Memory estimate for llama-server from GGUF metadata, and reading its own buffer report.

The estimate is made before anything starts, per device, as the sum of what llama.cpp allocates:

* **weights**: the tensor bytes (llama.cpp maps the file; the pages become resident as the model
  is used, and with ``-ngl`` the offloaded layers are copied to VRAM instead);
* **KV cache**: ``layers x cells x (K width + V width) x bytes per element`` with the widths
  GQA-aware (``head_dim x n_head_kv``); cells = the KV pool (``--ctx-size``, padded to 256 as
  llama.cpp does), which holds every slot's context when the KV is not unified. Encoder-only
  models (BERT and friends) have no KV cache;
* **compute buffers**: llama.cpp reserves the worst-case graph for one micro-batch (``n_ubatch``
  tokens). The sizes below were fitted to llama-server b11312's own reports ("compute buffer
  size = ...") over synthetic llama models from 64 to 768 wide: with flash attention (the CPU
  default) the peak is the FFN stage, about ``(3 n_ff + 4 n_embd)`` floats per token, plus the f16
  KQ mask (``cells per slot x n_ubatch``); without it, the f32 ``KQ`` matrix
  (``n_head x cells per slot x n_ubatch``) dominates; when every token is an output (embedding
  mode on a causal model), the logits (``n_vocab x n_ubatch``) can be the peak instead;
* **output buffer**: logits or embeddings for one output per slot;
* **overhead**: the engine binary's resident text and its heap, threads and tokenizer tables, a
  constant measured on this build (see ``tests/engines``: estimate vs measured).

The scheduler reserves this before the start. Once the engine is up, ``parse_buffer_report`` reads
the buffer sizes llama-server printed (at ``-lv 4``) and ``corrected_estimate`` replaces the
predicted parts with them, which the scheduler takes as the correction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from modelrunner.engines.base import MemoryEstimate, Mode
from modelrunner.engines.gguf_facts import GgufFacts
from modelrunner.engines.llamacpp.argv import LaunchSettings

__all__ = [
    "ENCODER_ONLY_ARCHITECTURES",
    "BufferReport",
    "MemoryBreakdown",
    "corrected_estimate",
    "estimate_llamacpp",
    "parse_buffer_report",
]

MIB = 1 << 20

# Resident size of the static llama-server text that a running engine touches (about 12 MiB of
# the 14 MiB binary) plus its heap, HTTP threads and bookkeeping: measured on b11312 (cpu).
ENGINE_BASE_OVERHEAD = 15 * MIB
# Tokenizer tables llama.cpp builds per vocabulary entry (token text, scores, piece cache).
OVERHEAD_PER_VOCAB_ENTRY = 160
# Thread stacks and per-thread scratch of the ggml thread pool.
OVERHEAD_PER_THREAD = 1 * MIB

# Architectures for which llama.cpp creates no KV cache (``llama_model::create_memory``).
ENCODER_ONLY_ARCHITECTURES = frozenset(
    {
        "bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "eurobert",
        "modern-bert",
        "gemma-embedding",
        "t5encoder",
    }
)

# Bytes per element of the KV cache types llama.cpp accepts for -ctk/-ctv (block size included).
KV_TYPE_BYTES: Mapping[str, float] = MappingProxyType(
    {
        "f32": 4.0,
        "f16": 2.0,
        "bf16": 2.0,
        "q8_0": 34 / 32,
        "q4_0": 18 / 32,
        "q4_1": 20 / 32,
        "iq4_nl": 18 / 32,
        "q5_0": 22 / 32,
        "q5_1": 24 / 32,
    }
)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per component; ``device`` says where the offloaded part lives ("" = host RAM)."""

    weights: int
    kv_cache: int
    compute: int
    output: int
    overhead: int
    offloaded: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def host(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.output + self.overhead

    def to_estimate(self) -> MemoryEstimate:
        return MemoryEstimate(ram=self.host, vram=MappingProxyType(dict(self.offloaded)))


def _kv_bytes_per_cell(facts: GgufFacts, settings: LaunchSettings) -> float:
    k_bytes = KV_TYPE_BYTES.get(settings.cache_type_k, 2.0)
    v_bytes = KV_TYPE_BYTES.get(settings.cache_type_v, 2.0)
    total = 0.0
    for layer in range(facts.n_layer):
        total += facts.n_embd_k_gqa(layer) * k_bytes + facts.n_embd_v_gqa(layer) * v_bytes
    return total


def estimate_llamacpp(
    facts: GgufFacts, settings: LaunchSettings, gpus: Sequence[str] = ()
) -> MemoryBreakdown:
    """Predict what llama-server will allocate for ``facts`` run with ``settings``.

    ``gpus`` are the device ids the runner is granted; when there are any and layers are
    offloaded (``-ngl``), weights, KV and compute of the offloaded layers are split evenly over them
    and the token embeddings, host compute and overhead stay in RAM.
    """
    has_kv = facts.architecture not in ENCODER_ONLY_ARCHITECTURES
    cells = settings.kv_cells if has_kv else 0
    kv = int(cells * _kv_bytes_per_cell(facts, settings)) if has_kv else 0

    # One micro-batch: llama-server forces n_batch = n_ubatch for embeddings; never more than the
    # context itself.
    ubatch = min(settings.ubatch, settings.batch, max(1, settings.n_ctx))
    cells_per_slot = settings.slot_context if has_kv else ubatch
    n_head = max(facts.n_head) if facts.n_head else 1
    flash = settings.flash_attn not in ("off", "0", "false", "disabled")
    ffn_stage = ubatch * 4 * (3 * facts.n_ff + 4 * facts.n_embd)
    # With flash attention only the f16 KQ mask is materialised; without, the f32 KQ scores per head.
    attention = (
        cells_per_slot * _pad(ubatch, 64) * 2 if flash else cells_per_slot * ubatch * 4 * (n_head + 1)
    )
    every_token_outputs = settings.mode is not Mode.COMPLETION and has_kv
    logits_stage = ubatch * 4 * (facts.n_vocab + facts.n_embd) if every_token_outputs else 0
    compute = attention + max(ffn_stage, logits_stage)

    outputs_width = facts.n_embd if settings.mode is not Mode.COMPLETION else facts.n_vocab
    output = settings.parallel * outputs_width * 4

    threads = settings.threads or 4
    overhead = ENGINE_BASE_OVERHEAD + facts.n_vocab * OVERHEAD_PER_VOCAB_ENTRY + threads * OVERHEAD_PER_THREAD

    weights = facts.weights_bytes
    offloaded: dict[str, int] = {}
    if gpus and settings.n_gpu_layers > 0:
        offloaded_layers = min(settings.n_gpu_layers, facts.n_layer)
        per_layer_weights = max(0, weights - facts.token_embd_bytes) / max(1, facts.n_layer)
        on_gpu = per_layer_weights * offloaded_layers
        # The output layer goes with the last layer when everything is offloaded.
        if settings.n_gpu_layers > facts.n_layer:
            on_gpu = weights - facts.token_embd_bytes
        gpu_kv = kv * offloaded_layers / max(1, facts.n_layer)
        gpu_total = on_gpu + gpu_kv + compute
        share = int(gpu_total / len(gpus))
        offloaded = {gpu: share for gpu in gpus}
        weights = int(weights - on_gpu)
        kv = int(kv - gpu_kv)
        # A host-side compute buffer remains for the inputs and the layers kept on the CPU.
        compute = int(ubatch * 4 * facts.n_embd * 2 + (compute if offloaded_layers < facts.n_layer else 0))
    return MemoryBreakdown(
        weights=int(weights),
        kv_cache=int(kv),
        compute=int(compute),
        output=int(output),
        overhead=int(overhead),
        offloaded=MappingProxyType(offloaded),
    )


def _pad(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# --------------------------------------------------------------------------------------------------
# llama-server's own report

_BUFFER_LINE = re.compile(
    r"(?P<where>load_tensors|llama_context|llama_kv_cache|sched_reserve|llama_memory_recurrent)\s*:\s*"
    r"(?P<device>\S+)\s+(?P<kind>model|output|KV|compute|RS)\s+buffer size\s*=\s*"
    r"(?P<mib>[0-9]+(?:\.[0-9]+)?)\s*MiB"
)

_HOST_DEVICES = ("CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "CPU_AARCH64")


@dataclass(frozen=True)
class BufferReport:
    """Buffer sizes llama-server logged at load, bytes per (kind, device)."""

    buffers: Mapping[tuple[str, str], int]

    def total(self, kind: str | None = None) -> int:
        return sum(v for (k, _), v in self.buffers.items() if kind is None or k == kind)

    def by_device(self) -> dict[str, int]:
        """Bytes per device: ``""`` for host memory, else the llama.cpp device name (``CUDA0``)."""
        out: dict[str, int] = {}
        for (_, device), size in self.buffers.items():
            key = "" if device in _HOST_DEVICES or device.startswith("CPU") else device
            out[key] = out.get(key, 0) + size
        return out

    @property
    def complete(self) -> bool:
        """The report has reached the compute buffers (the last thing llama.cpp reserves)."""
        return any(kind == "compute" for kind, _ in self.buffers)


def parse_buffer_report(lines: Iterable[str]) -> BufferReport:
    """Collect "<device> <kind> buffer size = N MiB" lines (later lines of the same kind and
    device replace earlier ones: llama.cpp re-reserves the compute graph)."""
    buffers: dict[tuple[str, str], int] = {}
    for line in lines:
        match = _BUFFER_LINE.search(line)
        if match is None:
            continue
        kind = match["kind"].lower()
        buffers[(kind, match["device"])] = int(float(match["mib"]) * MIB)
    return BufferReport(MappingProxyType(buffers))


def corrected_estimate(
    breakdown: MemoryBreakdown, report: BufferReport, gpu_ids: Mapping[str, str] | None = None
) -> MemoryEstimate:
    """The estimate with llama-server's reported buffers in place of the predicted ones.

    ``gpu_ids`` maps llama.cpp device names (``CUDA0``) to the scheduler's GPU ids; unknown
    devices keep their llama.cpp name. Overhead stays as estimated (llama.cpp does not report it).
    """
    if not report.buffers:
        return breakdown.to_estimate()
    per_device = report.by_device()
    ram = per_device.pop("", 0) + breakdown.overhead
    vram = {(gpu_ids or {}).get(name, name): size for name, size in per_device.items()}
    return MemoryEstimate(ram=ram, vram=MappingProxyType(vram))
