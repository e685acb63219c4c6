"""The six scenarios, each a module with ``NAME`` and ``async def run(ctx) -> ScenarioReport``.

Modules are imported only when their scenario runs, so a scenario whose parts are missing does not
stop the others from running.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import cast

from bench.context import BenchContext
from bench.report import ScenarioReport

__all__ = ["RUN_ORDER", "SCENARIOS", "load"]

SCENARIOS: dict[str, str] = {
    "pull": "a ~200 MB model from a local registry: modelrunner vs skopeo copy",
    "coldstart": "request to first token, unloaded model: sandboxed containerd task vs bare llama-server",
    "proxy": "tiny chat through the daemon vs straight to llama-server: added latency, throughput",
    "stream": "256-token streamed completion: time to first byte and per-chunk gap, through vs direct",
    "api": "/v1/models and /models requests per second at 16 concurrent; daemon RSS over 10k requests",
    "thrash": "3 models, memory for 1, 300 requests from 8 clients: failures, loads, latency",
}
RUN_ORDER: tuple[str, ...] = ("pull", "coldstart", "proxy", "stream", "api", "thrash")

Scenario = Callable[[BenchContext], Awaitable[ScenarioReport]]


def load(name: str) -> Scenario:
    """The scenario's ``run`` function.

    Raises:
        KeyError: no such scenario.
    """
    if name not in SCENARIOS:
        raise KeyError(name)
    module = importlib.import_module(f"bench.scenarios.{name}")
    return cast(Scenario, module.run)
