"""`/metrics` rendering: engine metrics relabelled, merged across runners, with the scheduler's own
metrics, checked by `promtool check metrics` (Debian's prometheus package)."""

from __future__ import annotations

import subprocess
from types import MappingProxyType

import pytest
from modelrunner.api._metrics import (
    ApiMetrics,
    EngineScrape,
    merge_families,
    relabel_engine_metrics,
    render_families,
)
from modelrunner.scheduler import LedgerStatistics, SchedulerStatistics
from modelrunner.scheduler._metrics import SchedulerMetrics

# The shape of llama-server b11312's `/metrics` (colons in names; a counter without `_total`).
LLAMA_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 24
# HELP llamacpp:tokens_predicted_seconds_total Total time spent generating tokens
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 0.003395
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 32
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
"""


def _statistics() -> SchedulerStatistics:
    ledger = LedgerStatistics(
        budget=MappingProxyType({"ram": 8 << 30}),
        reserved=MappingProxyType({"ram": 1 << 30}),
        available=MappingProxyType({"ram": 7 << 30}),
        peak_reserved=MappingProxyType({"ram": 2 << 30}),
        borrowers=MappingProxyType({}),
        tasks_waiting=0,
    )
    return SchedulerStatistics(
        queued_requests=2,
        pending_loads=1,
        in_flight=3,
        runners_by_state=MappingProxyType({"ready": 2}),
        ledger=ledger,
        memory_measured=900 << 20,
        loads_started=4,
        load_failures=1,
        unloads=MappingProxyType({"idle": 1}),
        peak_queued=5,
    )


def _render() -> str:
    scheduler = SchedulerMetrics(_statistics)
    scheduler.loads.labels("llama.cpp", "completion", "ok").inc()
    scheduler.queue_wait_seconds.labels("ok").observe(0.2)
    api = ApiMetrics()
    api.observe_request("inference", 200)
    api.observe_inference("completion", "ok", 200, 0.01)
    groups = [
        relabel_engine_metrics(EngineScrape("llama.cpp", "ai/chat", "completion", LLAMA_METRICS)),
        relabel_engine_metrics(EngineScrape("llama.cpp", "ai/embed", "embedding", LLAMA_METRICS)),
    ]
    return render_families(api, scheduler.registry, merge_families(groups)).decode()


def test_engine_metrics_are_relabelled_and_merged() -> None:
    text = _render()
    assert "llamacpp:" not in text
    assert text.count("# TYPE llamacpp_prompt_tokens_total counter") == 1  # one family, two runners
    assert 'llamacpp_prompt_tokens_total{backend="llama.cpp",mode="completion",model="ai/chat"} 24.0' in text
    assert 'llamacpp_prompt_tokens_total{backend="llama.cpp",mode="embedding",model="ai/embed"} 24.0' in text
    assert "# TYPE llamacpp_n_tokens_max gauge" in text
    assert 'llamacpp_n_tokens_max{backend="llama.cpp",mode="completion",model="ai/chat"} 32.0' in text
    assert "modelrunner_queue_depth 2.0" in text
    assert 'modelrunner_memory_reserved_bytes{device="ram"}' in text


def test_metrics_pass_promtool() -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=_render().encode(), capture_output=True, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_garbage_engine_metrics_are_refused() -> None:
    with pytest.raises(ValueError):
        relabel_engine_metrics(EngineScrape("llama.cpp", "m", "completion", "this is { not metrics"))
