"""`/models` routes over the real distribution store and registry client, against a real registry."""

from __future__ import annotations

import html
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from modelrunner.api import ApiConfig, ApiServices, DistributionModels, open_api_server
from modelrunner.distribution.packaging import package_gguf
from modelrunner.distribution.registry import RegistryClient, RegistryConfig
from modelrunner.distribution.store import ModelStore

from tests.api.conftest import FakeBackends, FakeScheduler

pytestmark = pytest.mark.integration


@dataclass
class RealModels:
    client: httpx.AsyncClient
    store: ModelStore
    registry_host: str
    model_id: str
    tag: str


@pytest.fixture
async def real_models(registry, test_models, tmp_path: Path) -> AsyncIterator[RealModels]:
    store = ModelStore(tmp_path / "store")
    tag = f"{registry.host}/ai/tiny-chat:v1"
    packaged = package_gguf(store, test_models.chat, tags=[tag])
    async with RegistryClient.open(RegistryConfig()) as registry_client:
        services = ApiServices(FakeScheduler(), FakeBackends(), DistributionModels(store, registry_client))  # type: ignore[arg-type]
        config = ApiConfig(tcp=("127.0.0.1", 0), unix_path=None)
        async with (
            open_api_server(services, config) as server,
            httpx.AsyncClient(base_url=server.base_url, timeout=60) as client,
        ):
            yield RealModels(client, store, registry.host, packaged.model_id, tag)


def _progress(text: str) -> list[dict[str, object]]:
    return [json.loads(html.unescape(line)) for line in text.splitlines() if line.strip()]


async def test_list_get_and_openai_shapes(real_models: RealModels) -> None:
    response = await real_models.client.get("/models")
    [model] = response.json()
    assert model["id"] == real_models.model_id
    assert model["tags"] == [real_models.tag]
    assert set(model) == {"id", "tags", "created", "config"}
    assert model["config"]["format"] == "gguf"
    response = await real_models.client.get(f"/models/{real_models.tag}")
    assert response.json() == model
    response = await real_models.client.get("/models/tiny-chat")  # partial name, as DMR
    assert response.json()["id"] == real_models.model_id
    response = await real_models.client.get(f"/models/{real_models.model_id[7:19]}")  # short ID
    assert response.json()["id"] == real_models.model_id
    response = await real_models.client.get("/v1/models")
    [entry] = response.json()["data"]
    assert entry["id"] == real_models.tag
    assert entry["owned_by"] == "docker"
    assert entry["dmr"]["architecture"] == "llama"
    assert entry["dmr"]["context_window"] > 0


async def test_push_delete_pull_roundtrip(real_models: RealModels) -> None:
    client = real_models.client
    response = await client.post(f"/models/{real_models.tag}/push")
    assert response.status_code == 200
    events = _progress(response.text)
    assert events[-1]["type"] == "success" and events[-1]["mode"] == "push"

    response = await client.get(f"/models/{real_models.tag}?remote=true")
    assert response.status_code == 200
    remote = response.json()
    assert remote["id"] == real_models.model_id
    assert "tags" not in remote

    response = await client.delete(f"/models/{real_models.tag}")
    assert response.json() == [{"Untagged": real_models.tag}, {"Deleted": real_models.model_id}]
    assert (await client.get("/models")).json() == []

    response = await client.post(
        "/models/create", json={"from": real_models.tag}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    events = [json.loads(line) for line in response.text.splitlines()]
    assert events[-1] == {
        "type": "success",
        "message": "Model pulled successfully",
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": "pull",
    }
    assert any(e["type"] == "progress" and e["layer"].get("id") for e in events)
    assert (await client.get(f"/models/{real_models.tag}")).json()["id"] == real_models.model_id

    response = await client.post("/models/create", json={"from": real_models.tag})
    assert _progress(response.text)[-1]["message"].startswith("Using cached model")


async def test_pull_unknown_is_404_before_any_progress(real_models: RealModels) -> None:
    response = await real_models.client.post(
        "/models/create", json={"from": f"{real_models.registry_host}/ai/nope:v1"}
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    response = await real_models.client.post("/models/create", json={"from": "Not A//Reference"})
    assert response.status_code == 400


async def test_tag_and_delete_semantics(real_models: RealModels) -> None:
    client = real_models.client
    response = await client.post(f"/models/{real_models.tag}/tag?repo=myorg/copy&tag=v2")
    assert response.status_code == 201
    assert response.json()["target"] == "myorg/copy:v2"
    tags = (await client.get(f"/models/{real_models.model_id}")).json()["tags"]
    assert sorted(tags) == sorted([real_models.tag, "docker.io/myorg/copy:v2"])

    response = await client.delete(f"/models/{real_models.model_id}")
    assert response.status_code == 409
    assert "must be forced" in response.text

    response = await client.delete("/models/myorg/copy:v2")  # one of two tags: untag only
    assert response.json() == [{"Untagged": "docker.io/myorg/copy:v2"}]
    assert (await client.get(f"/models/{real_models.tag}")).status_code == 200

    response = await client.post(f"/models/{real_models.tag}/tag?repo=myorg/copy&tag=v2")
    response = await client.delete(f"/models/{real_models.model_id}?force=true")
    assert response.status_code == 200
    assert response.json()[-1] == {"Deleted": real_models.model_id}
    assert (await client.get("/models")).json() == []


async def test_export_then_load_keeps_the_model_id(real_models: RealModels) -> None:
    client = real_models.client
    response = await client.get(f"/models/{real_models.tag}/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    archive = response.content
    await client.delete(f"/models/{real_models.tag}")
    response = await client.post("/models/load", content=archive)
    assert response.status_code == 200
    assert _progress(response.text)[-1]["message"] == "Model loaded successfully"
    models = (await client.get("/models")).json()
    assert [m["id"] for m in models] == [real_models.model_id]
    assert "tags" not in models[0]  # load applies no tag; the CLI tags afterwards


async def test_load_rejects_garbage(real_models: RealModels) -> None:
    response = await real_models.client.post("/models/load", content=b"this is not a tar archive" * 100)
    assert response.status_code == 400
    assert (await real_models.client.get("/models")).json()[0]["id"] == real_models.model_id


async def test_repackage_and_purge(real_models: RealModels) -> None:
    client = real_models.client
    response = await client.post(
        f"/models/{real_models.tag}/repackage", json={"target": "ai/tiny-chat:ctx1k", "context_size": 1024}
    )
    assert response.status_code == 201
    repackaged = (await client.get("/models/ai/tiny-chat:ctx1k")).json()
    assert repackaged["config"]["context_size"] == 1024
    assert repackaged["id"] != real_models.model_id
    response = await client.delete("/models/purge")
    assert response.status_code == 200
    assert (await client.get("/models")).json() == []
