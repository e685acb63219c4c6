"""embed.gguf (a tiny BERT) served by the real llama-server with ``--embeddings``."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import testmodels

from tests.engine_bare.llama_server import BareLlamaServer, running_llama_server

pytestmark = pytest.mark.integration

ALIAS = "tiny-embed"
TEXTS = [
    "a cat sits on the mat",
    "a kitten is on the rug",
    "stock markets fell sharply",
    "The weather in Paris is sunny, but rain is coming!",
    "Xylophones zigzag quietly.",  # words outside the vocabulary: built from single characters
]


@pytest.fixture(scope="module")
def server(llama_server_binary: Path, test_models: testmodels.TestModelSet) -> Iterator[BareLlamaServer]:
    with running_llama_server(
        llama_server_binary, test_models.embed, alias=ALIAS, extra_args=["--embeddings"]
    ) as srv:
        yield srv


def embed(server: BareLlamaServer, texts: Sequence[str]) -> tuple[npt.NDArray[np.float64], int]:
    response = server.client.post("/v1/embeddings", json={"input": list(texts), "model": ALIAS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    assert all(d["object"] == "embedding" for d in body["data"])
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64), body["usage"]["prompt_tokens"]


def cos(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_have_the_model_dimension_and_unit_length(server: BareLlamaServer) -> None:
    vectors, _ = embed(server, TEXTS)
    assert vectors.shape == (len(TEXTS), testmodels.EMBEDDING_DIM)
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len({v.tobytes() for v in vectors}) == len(TEXTS), "different texts must embed differently"


def test_usage_counts_wordpiece_tokens_with_cls_and_sep(server: BareLlamaServer) -> None:
    _, prompt_tokens = embed(server, TEXTS)
    assert prompt_tokens == sum(len(testmodels.embedding_tokens(t)) for t in TEXTS)
    response = server.client.post(
        "/tokenize", json={"content": TEXTS[3], "add_special": True, "with_pieces": True}
    )
    assert response.status_code == 200, response.text
    pieces = [t["piece"] for t in response.json()["tokens"]]
    # llama.cpp shows the word-start marker as a space
    assert pieces == [t.replace("\u2581", " ") for t in testmodels.embedding_tokens(TEXTS[3])]


def test_same_input_same_vectors(server: BareLlamaServer) -> None:
    first, _ = embed(server, TEXTS)
    second, _ = embed(server, TEXTS)
    assert np.array_equal(first, second)
    one_by_one = np.vstack([embed(server, [t])[0] for t in TEXTS])
    np.testing.assert_allclose(one_by_one, first, atol=1e-5)  # batching may reorder float sums


def test_base64_encoding_carries_the_same_float32_vector(server: BareLlamaServer) -> None:
    floats, _ = embed(server, TEXTS[:1])
    response = server.client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"})
    assert response.status_code == 200, response.text
    decoded = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats[0], atol=1e-7)


def test_texts_on_one_topic_are_closer_than_unrelated_texts(server: BareLlamaServer) -> None:
    cat, kitten, stocks, weather, _ = embed(server, TEXTS)[0]
    assert cos(cat, kitten) > 0.5
    assert cos(cat, kitten) > cos(cat, stocks) + 0.4
    assert cos(cat, kitten) > cos(kitten, weather)
    assert abs(cos(cat, stocks)) < 0.3


def test_same_vectors_across_server_restarts(
    server: BareLlamaServer, llama_server_binary: Path, test_models: testmodels.TestModelSet
) -> None:
    before, _ = embed(server, TEXTS)
    with running_llama_server(
        llama_server_binary, test_models.embed, alias=ALIAS, extra_args=["--embeddings"]
    ) as fresh:
        after, _ = embed(fresh, TEXTS)
    assert np.array_equal(before, after)


def test_regenerated_model_gives_the_same_vectors(
    server: BareLlamaServer, llama_server_binary: Path, tmp_path: Path
) -> None:
    before, _ = embed(server, TEXTS)
    model = testmodels.write_embedding_model(tmp_path / "embed.gguf")
    with running_llama_server(llama_server_binary, model, alias=ALIAS, extra_args=["--embeddings"]) as fresh:
        after, _ = embed(fresh, TEXTS)
    assert np.array_equal(before, after)
