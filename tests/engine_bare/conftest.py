"""Fixtures for tests that run the real llama-server bare on the host against the generated models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.engine import EngineBuild


@pytest.fixture(scope="session")
def llama_server_binary(llamacpp_engine: EngineBuild) -> Path:
    binary = llamacpp_engine.binary
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary
