"""Helpers shared by the scenarios that run against the daemon (proxy, stream, api, thrash):
packaging test models into its store, finding a runner's engine socket, reading its metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from modelrunner.distribution import ModelStore, package_gguf
from modelrunner.engines import Mode
from modelrunner.engines.environment import default_threads
from modelrunner.engines.gguf_facts import read_gguf_facts
from modelrunner.engines.llamacpp.argv import packaged_context_size, resolve_launch
from modelrunner.engines.llamacpp.memory import estimate_llamacpp
from prometheus_client.parser import text_string_to_metric_families

from bench.httpclient import Endpoint, HttpConnection, HttpError
from bench.services import Daemon, ServiceError

__all__ = [
    "JSON",
    "PackagedModel",
    "chat_body",
    "find_runner_sockets",
    "metric_total",
    "package_models",
    "request_ok",
]

JSON = (("Content-Type", "application/json"),)


@dataclass(frozen=True, slots=True)
class PackagedModel:
    name: str
    """What requests name in ``model`` (``ai/bench-chat``)."""
    model_id: str
    estimate_ram: int
    """engines/' RAM estimate for a completion runner of it (bytes), as the scheduler reserves."""


def estimate_ram(gguf: Path, name: str, context_size: int | None) -> int:
    """The RAM a completion runner of ``gguf`` is charged before it starts (engines/' estimate)."""
    facts = read_gguf_facts(gguf)
    config = {"context_size": context_size} if context_size else {}
    settings = resolve_launch(
        mode=Mode.COMPLETION,
        alias=name,
        context_size=None,
        packaged_context_size=packaged_context_size(config),
        trained_context=facts.n_ctx_train,
        parallel=None,
        runtime_flags=(),
        threads=default_threads(),
        gpu_available=False,
    )
    return estimate_llamacpp(facts, settings).to_estimate().ram


def package_models(models_path: Path, models: Sequence[tuple[str, Path, int | None]]) -> list[PackagedModel]:
    """Package ``(name, gguf, context_size)`` triples into the store at ``models_path``, tagged
    ``name:latest``; blocking."""
    store = ModelStore(models_path)
    packaged = []
    for name, gguf, context_size in models:
        result = package_gguf(store, gguf, context_size=context_size, tags=[f"{name}:latest"])
        packaged.append(PackagedModel(name, result.model_id, estimate_ram(gguf, name, context_size)))
    return packaged


def chat_body(model: str, *, stream: bool = False, max_tokens: int = 16) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


async def request_ok(endpoint: Endpoint, method: str, target: str, body: bytes = b"") -> bytes:
    """One request on a fresh connection; its body.

    Raises:
        ServiceError: the answer was not 2xx (the message has the status and body).
    """
    connection = HttpConnection(endpoint)
    try:
        response = await connection.request(method, target, body, headers=JSON if body else ())
    finally:
        await connection.aclose()
    if not 200 <= response.status < 300:
        raise ServiceError(
            f"{method} {target} on {endpoint} answered {response.status}: {response.body[:500]!r}"
        )
    return response.body


async def find_runner_sockets(daemon: Daemon) -> list[Path]:
    """The engine sockets under the daemon's state dir that answer ``/health`` 200.

    The daemon's API does not expose them (``/engines/ps`` names models, not sockets), but
    engines/ keeps each runner's socket at ``<state dir>/runners/<id>/engine/engine.sock``.
    """

    def candidates_now() -> list[Path]:
        found = sorted(daemon.state_dir.glob("runners/*/engine/engine.sock"))
        return found or sorted(
            p for p in daemon.state_dir.rglob("engine.sock") if "containerd" not in p.parts
        )

    candidates = await trio.to_thread.run_sync(candidates_now)
    alive = []
    for path in candidates:
        connection = HttpConnection(Endpoint.unix(str(path)))
        try:
            response = await connection.request("GET", "/health")
            if response.status == 200:
                alive.append(path)
        except (OSError, HttpError):
            pass
        finally:
            await connection.aclose()
    return alive


async def metric_total(endpoint: Endpoint, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` (``_total`` included for counters) matching ``labels``,
    read from ``GET /metrics``."""
    text = (await request_ok(endpoint, "GET", "/metrics")).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in (name, f"{name}_total"):
                continue
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total
