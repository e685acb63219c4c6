"""Runtime-flag allowlists: which extra engine flags a user may set through ``_configure``.

Pure functions over argv tokens. The rules follow DMR (`pkg/inference/runtime_flags.go`) and go a
little further, because a flag that gets past validation ends up on a sandboxed engine's command
line:

* no token may contain ``/`` or ``\\`` (no paths: the engine sees only what the sandbox mounts, and
  a flag must never point it at another file inside the container either);
* every flag (a token starting with ``-`` that is not a negative number) must be on the backend's
  allowlist; ``--flag=value`` is checked by the text before ``=``;
* a flag that takes a value must get one (``--flag value`` or ``--flag=value``); a switch must not;
  a value given as ``--flag=-x`` must be a negative number (so ``--flag=--other`` cannot smuggle a
  second flag); stray positional tokens are refused.

The llama.cpp list is taken from llama-server b11312's own argument table (``common/arg.cpp``), so a
flag this build does not know is refused here with a clear message instead of making the engine
exit at start. Flags the backend itself sets (model, host, alias, mmproj, chat template file) and
flags that would break the sandbox or the proxy (``--api-key``, ``--port``, ``--log-file``,
downloads, ``--slot-save-path``, LoRA files, ...) are deliberately absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from modelrunner.engines.errors import InvalidRuntimeFlags

__all__ = [
    "LLAMACPP_FLAGS",
    "MAX_RUNTIME_FLAG_BYTES",
    "VLLM_FLAGS",
    "FlagAllowlist",
    "ParsedFlag",
]

# Bounded like every other input: runtime flags are stored with the model's configuration and end
# up in container labels and on a command line.
MAX_RUNTIME_FLAG_BYTES = 16 * 1024

_NEGATIVE_NUMBER = re.compile(r"^-(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


@dataclass(frozen=True, slots=True)
class ParsedFlag:
    """One flag occurrence: ``name`` as written (before any ``=``), its canonical name and value."""

    name: str
    canonical: str
    value: str | None


@dataclass(frozen=True)
class FlagAllowlist:
    """Flags one backend accepts: spelling -> (canonical spelling, takes a value)."""

    backend: str
    flags: Mapping[str, tuple[str, bool]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, backend: str, groups: Iterable[tuple[Sequence[str], bool]]) -> FlagAllowlist:
        """From groups of (spellings, takes_value); the last spelling of a group is canonical."""
        table: dict[str, tuple[str, bool]] = {}
        for names, takes_value in groups:
            canonical = names[-1]
            for name in names:
                if name in table:
                    raise ValueError(f"flag {name} listed twice for {backend}")
                table[name] = (canonical, takes_value)
        return cls(backend, MappingProxyType(table))

    def parse(self, tokens: Sequence[str]) -> list[ParsedFlag]:
        """Validate ``tokens`` and return them grouped into flags.

        Raises:
            InvalidRuntimeFlags: the first rule broken, naming the token and the fix.
        """
        tokens = list(tokens)
        if sum(len(t.encode("utf-8", "surrogatepass")) + 1 for t in tokens) > MAX_RUNTIME_FLAG_BYTES:
            raise InvalidRuntimeFlags(
                f"runtime flags for {self.backend} are longer than {MAX_RUNTIME_FLAG_BYTES} bytes",
                tuple(tokens),
            )
        for token in tokens:
            self._check_token_text(token)
        parsed: list[ParsedFlag] = []
        index = 0
        while index < len(tokens):
            token = tokens[index]
            index += 1
            if not _is_flag(token):
                raise self._error(
                    f"unexpected argument {token!r} for backend {self.backend!r}: "
                    "runtime flags must start with '-' (values follow the flag they belong to)",
                    token,
                )
            name, has_inline, inline_value = token.partition("=")
            entry = self.flags.get(name)
            if entry is None:
                raise self._error(f"runtime flag {name!r} is not allowed for backend {self.backend!r}", token)
            canonical, takes_value = entry
            if not takes_value:
                if has_inline:
                    raise self._error(f"runtime flag {name!r} takes no value (got {token!r})", token)
                parsed.append(ParsedFlag(name, canonical, None))
                continue
            if has_inline:
                value = inline_value
                if value.startswith("-") and not _NEGATIVE_NUMBER.match(value):
                    raise self._error(
                        f"runtime flag {token!r}: a value starting with '-' must be a number", token
                    )
            else:
                if index >= len(tokens) or _is_flag(tokens[index]):
                    raise self._error(f"runtime flag {name!r} needs a value", token)
                value = tokens[index]
                index += 1
            parsed.append(ParsedFlag(name, canonical, value))
        return parsed

    def validate(self, tokens: Sequence[str]) -> None:
        """Raises InvalidRuntimeFlags unless every token is acceptable (see ``parse``)."""
        self.parse(tokens)

    def _check_token_text(self, token: str) -> None:
        if not isinstance(token, str):
            raise self._error(f"runtime flags must be strings, got {type(token).__name__}", str(token))
        if "/" in token or "\\" in token:
            raise self._error(
                f"runtime flag {token!r} contains a path separator; paths are not allowed in runtime flags",
                token,
            )
        if "\x00" in token:
            raise self._error("runtime flags may not contain NUL characters", token)
        if token == "":
            raise self._error("runtime flags may not contain empty tokens", token)

    def _error(self, message: str, token: str) -> InvalidRuntimeFlags:
        return InvalidRuntimeFlags(message, (token,))


def _is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NEGATIVE_NUMBER.match(token)


_V = True  # takes a value
_S = False  # a switch

LLAMACPP_FLAGS = FlagAllowlist.build(
    "llama.cpp",
    [
        # threads and CPU placement
        (("-t", "--threads"), _V),
        (("-tb", "--threads-batch"), _V),
        (("-C", "--cpu-mask"), _V),
        (("-Cr", "--cpu-range"), _V),
        (("--cpu-strict",), _V),
        (("--prio",), _V),
        (("--poll",), _V),
        (("-Cb", "--cpu-mask-batch"), _V),
        (("-Crb", "--cpu-range-batch"), _V),
        (("--cpu-strict-batch",), _V),
        (("--prio-batch",), _V),
        (("--poll-batch",), _V),
        (("--threads-http",), _V),
        (("--numa",), _V),
        # context, batching, slots, KV cache
        (("-c", "--ctx-size"), _V),
        (("-n", "--predict", "--n-predict"), _V),
        (("-b", "--batch-size"), _V),
        (("-ub", "--ubatch-size"), _V),
        (("--keep",), _V),
        (("--swa-full",), _S),
        (("-ctxcp", "--ctx-checkpoints", "--swa-checkpoints"), _V),
        (("-cms", "--checkpoint-min-step"), _V),
        (("-cram", "--cache-ram"), _V),
        (("-kvu", "--kv-unified"), _S),
        (("-no-kvu", "--no-kv-unified"), _S),
        (("--kv-unified-per-slot",), _V),
        (("--cache-idle-slots",), _S),
        (("--no-cache-idle-slots",), _S),
        (("--context-shift",), _S),
        (("--no-context-shift",), _S),
        (("-np", "--parallel"), _V),
        (("-cb", "--cont-batching"), _S),
        (("-nocb", "--no-cont-batching"), _S),
        (("--cache-prompt",), _S),
        (("--no-cache-prompt",), _S),
        (("--cache-reuse",), _V),
        (("-sps", "--slot-prompt-similarity"), _V),
        (("-ctk", "--cache-type-k"), _V),
        (("-ctv", "--cache-type-v"), _V),
        (("-kvo", "--kv-offload"), _S),
        (("-nkvo", "--no-kv-offload"), _S),
        (("-dt", "--defrag-thold"), _V),
        (("-fa", "--flash-attn"), _V),
        (("--warmup",), _S),
        (("--no-warmup",), _S),
        (("-to", "--timeout"), _V),
        (("--sse-ping-interval",), _V),
        (("--sleep-idle-seconds",), _V),
        # sampling defaults
        (("--samplers",), _V),
        (("-s", "--seed"), _V),
        (("--sampler-seq", "--sampling-seq"), _V),
        (("--ignore-eos",), _S),
        (("--temp", "--temperature"), _V),
        (("--top-k",), _V),
        (("--top-p",), _V),
        (("--min-p",), _V),
        (("--top-nsigma", "--top-n-sigma"), _V),
        (("--xtc-probability",), _V),
        (("--xtc-threshold",), _V),
        (("--typical", "--typical-p"), _V),
        (("--repeat-last-n",), _V),
        (("--repeat-penalty",), _V),
        (("--presence-penalty",), _V),
        (("--frequency-penalty",), _V),
        (("--dry-multiplier",), _V),
        (("--dry-base",), _V),
        (("--dry-allowed-length",), _V),
        (("--dry-penalty-last-n",), _V),
        (("--dry-sequence-breaker",), _V),
        (("--adaptive-target",), _V),
        (("--adaptive-decay",), _V),
        (("--dynatemp-range",), _V),
        (("--dynatemp-exp",), _V),
        (("--mirostat",), _V),
        (("--mirostat-lr",), _V),
        (("--mirostat-ent",), _V),
        (("-l", "--logit-bias"), _V),
        (("--grammar",), _V),
        (("-j", "--json-schema"), _V),
        (("-bs", "--backend-sampling"), _S),
        # rope / yarn / attention
        (("--rope-scaling",), _V),
        (("--rope-scale",), _V),
        (("--rope-freq-base",), _V),
        (("--rope-freq-scale",), _V),
        (("--yarn-orig-ctx",), _V),
        (("--yarn-ext-factor",), _V),
        (("--yarn-attn-factor",), _V),
        (("--yarn-beta-slow",), _V),
        (("--yarn-beta-fast",), _V),
        (("-gan", "--grp-attn-n"), _V),
        (("-gaw", "--grp-attn-w"), _V),
        # devices and offload
        (("-ngl", "--gpu-layers", "--n-gpu-layers"), _V),
        (("-sm", "--split-mode"), _V),
        (("-ts", "--tensor-split"), _V),
        (("-mg", "--main-gpu"), _V),
        (("-dev", "--device"), _V),
        (("-fit", "--fit"), _V),
        (("-fitt", "--fit-target"), _V),
        (("-fitc", "--fit-ctx"), _V),
        (("-cmoe", "--cpu-moe"), _S),
        (("-ncmoe", "--n-cpu-moe"), _V),
        (("-ncffn", "--n-cpu-ffn"), _V),
        (("--repack",), _S),
        (("-nr", "--no-repack"), _S),
        (("--op-offload",), _S),
        (("--no-op-offload",), _S),
        (("-lm", "--load-mode"), _V),
        (("-lzm", "--lazy-mode"), _V),
        (("--mmproj-offload",), _S),
        (("--no-mmproj-offload",), _S),
        (("--image-min-tokens",), _V),
        (("--image-max-tokens",), _V),
        # speculative decoding (numbers only: draft models come through the store, not a path)
        (("--spec-draft-n-max",), _V),
        (("--spec-draft-n-min",), _V),
        (("--spec-draft-p-min", "--draft-p-min"), _V),
        (("--spec-draft-p-split", "--draft-p-split"), _V),
        (("--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"), _V),
        (("--spec-draft-threads", "-td", "--threads-draft"), _V),
        (("--spec-draft-threads-batch", "-tbd", "--threads-batch-draft"), _V),
        (("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft"), _V),
        (("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft"), _V),
        (("--spec-type",), _V),
        (("--draft", "--draft-n", "--draft-max"), _V),
        (("--draft-min", "--draft-n-min"), _V),
        # chat, reasoning, embeddings
        (("--jinja",), _S),
        (("--no-jinja",), _S),
        (("--chat-template",), _V),
        (("--chat-template-kwargs",), _V),
        (("--reasoning-format",), _V),
        (("-rea", "--reasoning"), _V),
        (("--reasoning-effort",), _V),
        (("--reasoning-budget",), _V),
        (("--reasoning-budget-message",), _V),
        (("--skip-chat-parsing",), _S),
        (("--no-skip-chat-parsing",), _S),
        (("--prefill-assistant",), _S),
        (("--no-prefill-assistant",), _S),
        (("--embedding", "--embeddings"), _S),
        (("--rerank", "--reranking"), _S),
        (("--pooling",), _V),
        (("--attention",), _V),
        (("--embd-normalize",), _V),
        # monitoring and logging
        (("--metrics",), _S),
        (("--slots",), _S),
        (("--no-slots",), _S),
        (("--props",), _S),
        (("-v", "--verbose", "--log-verbose"), _S),
        (("-lv", "--verbosity", "--log-verbosity"), _V),
        (("--log-timestamps",), _S),
        (("--no-log-timestamps",), _S),
        (("--log-prefix",), _S),
        (("--no-log-prefix",), _S),
    ],
)

VLLM_FLAGS = FlagAllowlist.build(
    "vllm",
    [
        (("-tp", "--tensor-parallel-size"), _V),
        (("-pp", "--pipeline-parallel-size"), _V),
        (("--max-model-len",), _V),
        (("--max-num-batched-tokens",), _V),
        (("--max-num-seqs",), _V),
        (("--block-size",), _V),
        (("--swap-space",), _V),
        (("--seed",), _V),
        (("--dtype",), _V),
        (("-q", "--quantization"), _V),
        (("--kv-cache-dtype",), _V),
        (("--enforce-eager",), _S),
        (("--enable-prefix-caching",), _S),
        (("--enable-chunked-prefill",), _S),
        (("--disable-custom-all-reduce",), _S),
        (("--use-v2-block-manager",), _S),
        (("--tokenizer-mode",), _V),
        (("--max-logprobs",), _V),
        (("--revision",), _V),
        (("--load-format",), _V),
        (("--disable-log-stats",), _S),
        (("--gpu-memory-utilization",), _V),
    ],
)
