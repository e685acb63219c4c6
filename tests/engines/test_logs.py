"""Engine log tails and failure translation (pure; the log lines are llama-server b11312's)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelrunner.engines.logs import LogTail, failure_message, translate_failure

# Real llama-server b11312 output; the long lines are kept whole on purpose.
# ruff: noqa: E501

TRUNCATED_MODEL = """\
0.00.038.237 E llama_model_load: error loading model: tensor 'token_embd.weight' data is not within the file bounds, model is corrupted or incomplete
0.00.038.285 E llama_model_load_from_file_impl: failed to load model
0.00.038.330 E cmn  common_init_: failed to load model '/models/model.gguf'
0.00.038.376 E srv    load_model: failed to load model, '/models/model.gguf'
0.00.040.634 E srv  llama_server: exiting due to model loading error
"""
KV_TOO_BIG = """\
0.24.866.838 E llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
0.24.866.864 E srv    load_model: failed to create_context with model '/models/model.gguf'
0.24.867.484 E srv  llama_server: exiting due to model loading error
"""
STALE_SOCKET = """\
0.00.006.126 E srv         start: couldn't bind HTTP server socket, hostname: /run/engine/engine.sock, port: 8080
0.00.006.334 E srv  llama_server: exiting due to HTTP server error
"""
CUDA_OOM = "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000 MiB on device 0: cudaMalloc failed: out of memory\n"


@pytest.mark.parametrize(
    ("log", "reason", "oom"),
    [
        (TRUNCATED_MODEL, "failed to load model: tensor 'token_embd.weight' data is not within the file bounds, "
                          "model is corrupted or incomplete", False),
        (KV_TOO_BIG, "not enough memory to load the model", True),
        (STALE_SOCKET, "the engine could not listen on its socket (a stale socket file?)", False),
        (CUDA_OOM, "not enough GPU memory to load the model (CUDA)", True),
        ("error: invalid argument: --bogus\n", "invalid engine argument: --bogus", False),
    ],
)
def test_translations(log: str, reason: str, oom: bool) -> None:
    translation = translate_failure(log.splitlines())
    assert translation is not None
    assert (translation.reason, translation.out_of_memory) == (reason, oom)


def test_unknown_log_is_not_translated() -> None:
    assert translate_failure(["all fine", "bye"]) is None


def test_oom_kill_wins() -> None:
    translation = translate_failure(TRUNCATED_MODEL.splitlines(), oom_killed=True)
    assert translation is not None and translation.out_of_memory
    assert "out-of-memory killer" in translation.reason


def test_failure_message_has_dmr_shape() -> None:
    tail = LogTail()
    tail.feed(KV_TOO_BIG)
    message = failure_message("llama.cpp", tail)
    head, _, verbose = message.partition("\n\nVerbose output:\n")
    assert head == "llama.cpp failed: not enough memory to load the model"
    assert verbose.endswith("exiting due to model loading error")
    untranslated = LogTail()
    untranslated.feed("something odd\n")
    assert failure_message("llama.cpp", untranslated, exit_code=3).startswith(
        "llama.cpp terminated unexpectedly (exit code 3)"
    )
    assert failure_message("llama.cpp", LogTail(), exit_code=None) == "llama.cpp terminated unexpectedly"


def test_tail_is_bounded_and_keeps_whole_lines() -> None:
    tail = LogTail(max_bytes=100)
    for i in range(1000):
        tail.feed(f"line {i:04d} " + "x" * 20 + "\n")
    lines = tail.lines()
    assert lines[-1].startswith("line 0999")
    assert sum(len(line) + 1 for line in lines) <= 100
    assert all(line.startswith("line ") for line in lines)


def test_tail_joins_partial_lines_and_cuts_text_at_line_starts() -> None:
    tail = LogTail()
    tail.feed(b"first li")
    tail.feed(b"ne\nsecond\nthi")
    assert tail.lines() == ["first line", "second", "thi"]
    assert tail.text(12) == "second\nthi"
    assert tail.text(3) == "thi"
    tail.feed(b"\xff\xfe bad utf-8\n")
    assert tail.lines()[-1].endswith("bad utf-8")


def test_one_huge_line_is_cut() -> None:
    tail = LogTail(max_bytes=50)
    tail.feed("y" * 500)
    tail.feed("z" * 500 + "\n")
    assert all(len(line) <= 50 for line in tail.lines())


class _LineByLineTail:
    """The tail's rule spelled out naively: push every line, evict the oldest past the limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.kept: list[str] = []
        self.partial = ""

    def feed(self, text: str) -> None:
        *complete, self.partial = (self.partial + text).split("\n")
        self.partial = self.partial[-self.max_bytes :]
        for raw in complete:
            line = raw.rstrip("\r")[-self.max_bytes :]
            self.kept.append(line)
            while self.kept and sum(len(k) + 1 for k in self.kept) > self.max_bytes:
                self.kept.pop(0)

    def lines(self) -> list[str]:
        return [*self.kept, self.partial] if self.partial else list(self.kept)


@given(
    max_bytes=st.integers(min_value=1, max_value=40),
    feeds=st.lists(st.text(alphabet="ab\r\n", max_size=120), max_size=12),
)
def test_tail_that_skips_evicted_lines_keeps_what_pushing_every_line_keeps(
    max_bytes: int, feeds: list[str]
) -> None:
    tail, reference = LogTail(max_bytes=max_bytes), _LineByLineTail(max_bytes)
    for text in feeds:
        tail.feed(text)
        reference.feed(text)
        assert tail.lines() == reference.lines()


def test_a_busy_log_is_not_pushed_line_by_line() -> None:
    tail = LogTail(max_bytes=1000)
    pushed: list[str] = []
    original = tail._push
    tail._push = lambda line: (pushed.append(line), original(line))[-1]  # type: ignore[method-assign]
    tail.feed("".join(f"request {i} done\n" for i in range(10_000)))
    assert tail.lines()[-1] == "request 9999 done"
    assert len(pushed) < 100
