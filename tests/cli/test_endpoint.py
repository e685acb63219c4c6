"""Resolving the daemon's address, and reading daemon error bodies."""

from __future__ import annotations

import pytest
from modelrunner.cli._client import error_message_from_body, model_path
from modelrunner.cli._endpoint import DEFAULT_SOCKET, Endpoint, resolve_endpoint
from modelrunner.cli._errors import UsageError


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Endpoint("http://localhost", DEFAULT_SOCKET, "default")),
        (
            {"MODEL_RUNNER_SOCK": "/tmp/x.sock"},
            Endpoint("http://localhost", "/tmp/x.sock", "MODEL_RUNNER_SOCK"),
        ),
        (
            {"MODEL_RUNNER_HOST": "unix:///run/m.sock", "MODEL_RUNNER_SOCK": "/tmp/x.sock"},
            Endpoint("http://localhost", "/run/m.sock", "MODEL_RUNNER_HOST"),
        ),
        (
            {"MODEL_RUNNER_HOST": "http://127.0.0.1:12434/"},
            Endpoint("http://127.0.0.1:12434", None, "MODEL_RUNNER_HOST"),
        ),
        (
            {"MODEL_RUNNER_HOST": "127.0.0.1:12434"},
            Endpoint("http://127.0.0.1:12434", None, "MODEL_RUNNER_HOST"),
        ),
        (
            {"MODEL_RUNNER_HOST": " 'https://models.example:443' "},
            Endpoint("https://models.example:443", None, "MODEL_RUNNER_HOST"),
        ),
    ],
)
def test_resolve_endpoint(environ: dict[str, str], expected: Endpoint) -> None:
    assert resolve_endpoint(environ) == expected


@pytest.mark.parametrize(
    "host", ["unix://relative.sock", "ftp://host", "http://", "http://h:99999", "http://h/?q=1"]
)
def test_resolve_endpoint_rejects(host: str) -> None:
    with pytest.raises(UsageError, match="MODEL_RUNNER_HOST"):
        resolve_endpoint({"MODEL_RUNNER_HOST": host})


def test_endpoint_display_and_openai_url() -> None:
    assert Endpoint("http://localhost", "/run/m.sock").display == "unix:///run/m.sock"
    assert Endpoint("http://127.0.0.1:12434").openai_base_url == "http://127.0.0.1:12434/engines/v1/"


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/plain; charset=utf-8", b"model not found\n", "model not found"),
        (
            "text/plain",
            b"unable to load runner: boom\n\nVerbose output:\nline",
            "unable to load runner: boom",
        ),
        (
            "application/json",
            b'{"error":{"message":"model is required","type":"invalid_request_error"}}',
            "model is required",
        ),
        ("application/json", b'{"error":"Model not found: x"}', "Model not found: x"),
        ("application/json", b'{"message":"nope"}', "nope"),
        ("text/plain", b"", ""),
    ],
)
def test_error_message_from_body(content_type: str, body: bytes, expected: str) -> None:
    assert error_message_from_body(content_type, body)[0] == expected


def test_model_path_escapes_but_keeps_slashes() -> None:
    assert model_path("huggingface.co/org/m:Q4_K_M", "tag") == "/models/huggingface.co/org/m:Q4_K_M/tag"
    assert model_path("ai/m%2F") == "/models/ai/m%252F"
    for bad in ("", "a b", "m?x", "m#1"):
        with pytest.raises(UsageError):
            model_path(bad)
