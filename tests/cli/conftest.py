"""Fixtures for the CLI tests: a fake DMR-shaped daemon and the real CLI pointed at it.

For end-to-end tests against the real daemon, build ``CLI({"MODEL_RUNNER_HOST": <its address>})``
from ``tests.cli.cli_runner`` instead of using ``fake_daemon``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.cli_runner import CLI
from tests.cli.fake_daemon import FakeDaemon


@pytest.fixture
def fake_daemon() -> Iterator[FakeDaemon]:
    # A short directory: a Unix socket path must fit in 108 bytes, and pytest's tmp_path may not.
    workdir = Path(tempfile.mkdtemp(prefix="mr-cli-", dir="/tmp"))
    try:
        with FakeDaemon(workdir) as daemon:
            yield daemon
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cli(fake_daemon: FakeDaemon) -> CLI:
    """The real ``modelrunner`` command, talking to ``fake_daemon`` over its Unix socket."""
    return CLI(fake_daemon.unix_env)


@pytest.fixture
def tcp_cli(fake_daemon: FakeDaemon) -> CLI:
    """The real ``modelrunner`` command, talking to ``fake_daemon`` over TCP."""
    return CLI(fake_daemon.tcp_env)
