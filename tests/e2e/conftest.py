from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import testmodels

from tests.e2e.daemon import Daemon
from tests.fixtures.engine import EngineBuild


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, llamacpp_engine: EngineBuild) -> Iterator[Daemon]:
    # A short root: engine socket paths under the state dir must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="mr-e2e-", dir="/tmp"))
    running = Daemon(root=root, image_tar=llamacpp_engine.image_tar)
    running.start()
    try:
        yield running
    finally:
        rc = running.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert rc == 0, running.log_text()


@pytest.fixture(scope="module")
def packaged(daemon: Daemon, test_models: testmodels.TestModelSet) -> dict[str, str]:
    """The generated models packaged into the daemon's store through the CLI: name -> model ID."""
    cli = daemon.cli()
    assert cli("install-engine").returncode == 0
    names = {"ai/e2e-chat": test_models.chat, "ai/e2e-tool": test_models.chat_tool,
             "ai/e2e-embed": test_models.embed}
    ids = {}
    for name, path in names.items():
        result = cli("package", "--gguf", str(path), name)
        assert result.returncode == 0, result.stderr
        ids[name] = httpx.get(f"{daemon.url}/models/{name}").json()["id"]
    return ids
