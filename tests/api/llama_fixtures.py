"""Fixtures that serve the API over real llama-server runners (a pytest plugin, registered in
tests/conftest.py so that every module shares one session-wide `RunnerPool`).

`llama_api` is an API server whose scheduler is a `RunnerPool` of the project's tiny test models:
CHAT answers `testmodels.CHAT_REPLY` to anything, TOOL answers a `get_weather` call with
`{"city": "Paris"}` when offered the tool, EMBED embeds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from modelrunner.api import ApiConfig, ApiServer, ApiServices, open_api_server

from tests.api.conftest import FakeBackends, FakeModels, model_object
from tests.api.runners import RunnerPool

__all__ = ["CHAT", "EMBED", "TOOL", "WEATHER_TOOL", "LlamaApi", "llama_api", "runner_pool"]

CHAT = "ai/tiny-chat"
TOOL = "ai/tiny-tool"
EMBED = "ai/tiny-embed"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="session")
def runner_pool(llamacpp_engine, test_models) -> Iterator[RunnerPool]:
    pool = RunnerPool(
        llamacpp_engine.binary,
        {CHAT: test_models.chat, TOOL: test_models.chat_tool, EMBED: test_models.embed},
    )
    try:
        yield pool
    finally:
        pool.close()


@dataclass
class LlamaApi:
    server: ApiServer
    pool: RunnerPool
    sdk: openai.AsyncOpenAI
    http: httpx.AsyncClient
    models: FakeModels


@pytest.fixture
async def llama_api(runner_pool: RunnerPool, tmp_path: Path) -> AsyncIterator[LlamaApi]:
    models = FakeModels(
        models={
            name: model_object(entry.model_id, [f"docker.io/{name}:latest"])
            for name, entry in runner_pool.models.items()
        }
    )
    services = ApiServices(runner_pool, FakeBackends(), models)  # type: ignore[arg-type]
    config = ApiConfig(tcp=("127.0.0.1", 0), unix_path=tmp_path / "api.sock", version="test")
    async with open_api_server(services, config) as server:
        sdk = openai.AsyncOpenAI(
            base_url=server.base_url + "/engines/v1", api_key="unused", max_retries=0, timeout=30
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            yield LlamaApi(server, runner_pool, sdk, http, models)
        await sdk.close()
