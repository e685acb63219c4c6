"""The pure parts of the scenarios: argv mapping, load accounting, stream timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.httpclient import Response
from bench.scenarios.coldstart import bare_argv
from bench.scenarios.stream import stream_timing
from bench.scenarios.thrash import MIB, memory_budget, offline_minimum_loads, request_plan
from bench.services import ServiceError


def test_bare_argv_maps_container_paths_to_host_paths() -> None:
    container = [
        "/usr/local/bin/llama-server",
        "-lv",
        "4",
        "--model",
        "/models/model.gguf",
        "--host",
        "/run/engine/engine.sock",
        "--chat-template-file",
        "/models/template.jinja",
        "--alias",
        "ai/x:latest",
        "--ctx-size",
        "4096",
    ]
    argv = bare_argv(container, Path("/cache/bin/llama-server"), Path("/b"), Path("/tmp/e.sock"))
    assert argv == [
        "/cache/bin/llama-server",
        "-lv",
        "4",
        "--model",
        "/b/model.gguf",
        "--host",
        "/tmp/e.sock",
        "--chat-template-file",
        "/b/template.jinja",
        "--alias",
        "ai/x:latest",
        "--ctx-size",
        "4096",
    ]


def test_offline_minimum_counts_model_changes() -> None:
    assert offline_minimum_loads([]) == 0
    assert offline_minimum_loads(["a"]) == 1
    assert offline_minimum_loads(["a", "a", "b", "a", "a", "c", "c"]) == 4


def test_request_plan_is_seeded_and_uses_every_model() -> None:
    models = ("a", "b", "c")
    plan = request_plan(300, models)
    assert plan == request_plan(300, models)
    assert set(plan) == set(models) and len(plan) == 300
    assert plan != request_plan(300, models, seed=1)


def test_memory_budget_fits_the_largest_model_but_never_two() -> None:
    estimates = [24 * MIB, 30 * MIB, 21 * MIB]
    budget = memory_budget(estimates)
    assert budget >= max(estimates)
    assert all(a + b > budget for i, a in enumerate(estimates) for b in estimates[i + 1 :])
    big = [4096 * MIB, 4096 * MIB]
    assert memory_budget(big) == 4096 * MIB + 128 * MIB  # slack is capped


def sse(events: list[object]) -> bytes:
    return b"".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode() for e in events)


def test_stream_timing_uses_token_events_only() -> None:
    role = {"choices": [{"delta": {"role": "assistant"}}]}
    events = [role] + [{"choices": [{"text": f"t{i}"}]} for i in range(4)] + ["[DONE]"]
    # Arrival stamps per event: role at 1.0, tokens at 1.1, 1.2, 1.2 (same read), 1.5, DONE at 1.5.
    response = Response(
        200,
        [],
        sse(events),
        sent_at=0.5,
        first_byte_at=0.9,
        done_at=1.6,
        event_times=[1.0, 1.1, 1.2, 1.2, 1.5, 1.5],
    )
    timing = stream_timing(response)
    assert timing.tokens == 4
    assert timing.first_byte == pytest.approx(0.4)
    assert timing.first_token == pytest.approx(0.6)
    assert timing.duration == pytest.approx(0.4)
    assert timing.mean_gap == pytest.approx(0.4 / 3)


def test_stream_timing_refuses_failed_or_empty_streams() -> None:
    with pytest.raises(ServiceError, match="answered 500"):
        stream_timing(Response(500, [], b"oops", 0, 0, 0))
    with pytest.raises(ServiceError, match="1 token events"):
        stream_timing(Response(200, [], sse([{"choices": [{"text": "x"}]}]), 0, 0, 0, [1.0]))
