"""Crash safety: processes killed with SIGKILL mid-pull or mid-update leave a readable, consistent
store, and the next pull resumes what was downloaded."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trio
from modelrunner.distribution import ModelStore, RegistryClient, package_gguf

from tests.distribution.helpers import write_gguf
from tests.fixtures.registry import Registry, TcpProxy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

PULL_SCRIPT = """
import sys, trio
from modelrunner.distribution import ModelStore, RegistryClient
async def main():
    async with RegistryClient.open() as client:
        await client.pull(sys.argv[2], ModelStore(sys.argv[1]))
trio.run(main)
"""

TAG_SCRIPT = """
import sys, itertools
from modelrunner.distribution import ModelNotFound, ModelStore
store = ModelStore(sys.argv[1])
print("ready", flush=True)
for i in itertools.count():
    store.tag(sys.argv[2], f"ai/churn:t{i % 7}")
    store.bundle(sys.argv[2])
    if i % 3 == 0:
        try:
            store.delete(f"ai/churn:t{(i + 3) % 7}")
        except ModelNotFound:
            pass  # the other writer deleted it first
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _assert_consistent(root: Path) -> ModelStore:
    json.loads((root / "index.json").read_text())  # always a whole file
    store = ModelStore(root)
    assert store.check(verify_digests=True) == []
    for model in store.list():
        for blob in model.manifest.blobs():
            assert store.has_blob(blob.digest)
    return store


async def test_killed_pull_leaves_a_consistent_store_and_resumes(registry: Registry, tmp_path: Path,
                                                                 tcp_proxy: Callable[..., TcpProxy]) -> None:
    source = ModelStore(tmp_path / "source")
    rng = np.random.default_rng(7)
    weights = write_gguf(tmp_path / "w.gguf", tensors={"blk.0.w": rng.random((2048, 1024), dtype=np.float32)},
                         file_type=0)
    model_id = package_gguf(source, weights, tags=["big"]).model_id
    layer = source.get("big").manifest.layers[0]
    async with RegistryClient.open() as client:
        await client.push(f"{registry.host}/ai/big:latest", source, source="big")
    slow = tcp_proxy(registry.host, rate=4 * 1024 * 1024)  # ~2 s for the 8 MiB layer
    root = tmp_path / "store"
    ModelStore(root)
    ref = f"{slow.host}/ai/big:latest"
    partial_sizes = []
    for kill_at in (0.15, 0.15, 0.15):
        proc = _spawn(PULL_SCRIPT, str(root), ref)
        deadline = time.monotonic() + 20
        store = ModelStore(root)
        start = store.incomplete_size(layer.digest)
        # Kill once the layer has grown by kill_at of its size in this run.
        while store.incomplete_size(layer.digest) < start + layer.size * kill_at:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            await trio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = _assert_consistent(root)
        assert store.list() == []  # nothing half-pulled is visible
        assert not store.has_blob(layer.digest)
        partial_sizes.append(store.incomplete_size(layer.digest))
    assert partial_sizes == sorted(partial_sizes) and partial_sizes[0] > 0  # each run resumed the last
    resumer = tcp_proxy(registry.host)
    proc = _spawn(PULL_SCRIPT, str(root), f"{resumer.host}/ai/big:latest")
    assert proc.wait(60) == 0, proc.stderr.read().decode() if proc.stderr else ""
    gets = [r for r in resumer.requests if f"/blobs/{layer.digest}" in r.split("\r\n")[0]]
    assert len(gets) == 1 and f"range: bytes={partial_sizes[-1]}-" in gets[0].lower()
    store = _assert_consistent(root)
    assert [m.id for m in store.list()] == [model_id]
    assert (store.bundle(model_id) / "model.gguf").read_bytes() == weights.read_bytes()


def test_killed_metadata_writers_leave_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = ModelStore(root)
    model_id = package_gguf(store, write_gguf(tmp_path / "w.gguf"), tags=["base"]).model_id
    rng = random.Random(1)
    for _ in range(4):
        procs = [_spawn(TAG_SCRIPT, str(root), model_id) for _ in range(2)]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.05 + rng.random() * 0.3)  # somewhere in the middle of the update loop
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        store = _assert_consistent(root)
        assert store.resolve("base") == model_id
        assert store.bundle("base").is_dir()
    tags = set(store.get(model_id).tags)
    assert "docker.io/ai/base:latest" in tags and len(tags) > 1  # the writers did make progress
