"""`run_cli` with injected streams and environment (how embedders and quick tests drive the CLI)."""

from __future__ import annotations

import io

import pytest
from modelrunner.cli import ExitStatus, run_cli

from tests.cli.fake_daemon import FakeDaemon, Reply

pytestmark = pytest.mark.integration


def test_run_cli_uses_the_given_streams_and_environment(fake_daemon: FakeDaemon) -> None:
    fake_daemon.on(
        "GET", "/engines/df", Reply.json({"models_disk_usage": 2_000_000, "default_backend_disk_usage": 0})
    )
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["df"], environ=fake_daemon.tcp_env, stdout=out, stderr=err)
    assert status == ExitStatus.SUCCESS and err.getvalue() == ""
    assert out.getvalue().splitlines() == [
        "TYPE               SIZE",
        "Models             2MB",
        "Inference engine   0B",
    ]
    assert fake_daemon.requests_to("GET", "/engines/df")[0].transport == "tcp"


def test_run_cli_reports_errors_on_the_given_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(
        ["ps"], environ={"MODEL_RUNNER_SOCK": "/tmp/modelrunner-no-such.sock"}, stdout=out, stderr=err
    )
    assert status == ExitStatus.UNAVAILABLE
    assert out.getvalue() == ""
    assert err.getvalue().startswith("modelrunner: error: the daemon is not running (no socket at ")


def test_public_names_are_exported() -> None:
    import modelrunner.cli as package

    assert sorted(package.__all__) == sorted(set(package.__all__))
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.main.__module__ == "modelrunner.cli.main"
